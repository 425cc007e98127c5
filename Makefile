# tgbridge — see README.md.  `make` builds ./tgbridge; `make test` runs every test.
PKGS      := libmicrohttpd libwebsockets libcjson libcrypto
DEB_PKGS  := build-essential pkg-config libmicrohttpd-dev libwebsockets-dev libcjson-dev libssl-dev \
             python3 python3-aiohttp curl openssl socat netcat-openbsd
CC        ?= cc
OPT       ?= -O2 -g
SAN       ?=
ALL_CFLAGS = $(OPT) $(SAN) -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
LDLIBS    += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread
BUILD     ?= build
PYTHON    := /usr/bin/python3
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

SRCS      := $(wildcard src/*.c)
OBJS      := $(patsubst src/%.c,$(BUILD)/%.o,$(SRCS))
LIB_OBJS  := $(filter-out $(BUILD)/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/*.c)

.PHONY: all deps test unit asan soak valgrind demo bench clean

all: deps tgbridge

# Installs missing Debian packages when run as root; otherwise names the command.
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:" $$missing; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y $$missing"; exit 1; \
	  fi; \
	fi

tgbridge: $(BUILD)/tgbridge
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/tgbridge: $(OBJS)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: src/%.c | $(BUILD)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD):
	mkdir -p $@

$(BUILD)/unit_tests: $(UNIT_SRCS) $(LIB_OBJS)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Test fixture: an LD_PRELOAD resolver that takes its time (tests/test_dns.py).  Never
# sanitized: it is loaded into the daemon under test, whatever that was built with.
TEST_FIXTURES := build/slowdns.so
build/slowdns.so: tests/slowdns.c
	@mkdir -p build
	$(CC) -O2 -g -std=c11 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -ldl

unit: deps $(BUILD)/unit_tests
	./$(BUILD)/unit_tests

test: deps tgbridge $(BUILD)/unit_tests $(TEST_FIXTURES)
	UNIT_TESTS=$(BUILD)/unit_tests $(PYTHON) tests/run.py $(TESTFLAGS)

# Same tests against an AddressSanitizer+UBSan build.
asan:
	$(MAKE) deps $(TEST_FIXTURES)
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="$(ASAN_FLAGS)" build-asan/tgbridge build-asan/unit_tests
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  TGBRIDGE_BIN=build-asan/tgbridge UNIT_TESTS=build-asan/unit_tests $(PYTHON) tests/run.py $(TESTFLAGS)

# The soak test for SOAK_SECONDS (default 300) against the ASan+UBSan build.
SOAK_SECONDS ?= 300
soak:
	$(MAKE) deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="$(ASAN_FLAGS)" build-asan/tgbridge
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  TGBRIDGE_BIN=build-asan/tgbridge TGBRIDGE_SOAK_SECONDS=$(SOAK_SECONDS) \
	  $(PYTHON) tests/run.py -k test_soak

valgrind: deps tgbridge $(BUILD)/unit_tests $(TEST_FIXTURES)
	valgrind -q --error-exitcode=99 --leak-check=full ./$(BUILD)/unit_tests
	TGBRIDGE_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full --suppressions=$(CURDIR)/tests/valgrind.supp" \
	  UNIT_TESTS=$(BUILD)/unit_tests $(PYTHON) tests/run.py $(TESTFLAGS)

demo: deps tgbridge
	$(PYTHON) examples/demo.py

bench: deps tgbridge
	$(PYTHON) bench/run.py

clean:
	rm -rf build build-asan tgbridge

-include $(wildcard $(BUILD)/*.d)
