# tgbridge — see README.md.  `make` builds ./tgbridge; `make test` runs every test;
# `make install` installs it (PREFIX, DESTDIR).
PKGS      := libmicrohttpd libwebsockets libcjson libssl libcrypto
# What building needs (`make` only checks for these and names what is missing) ...
BUILD_DEB_PKGS := build-essential pkg-config libmicrohttpd-dev libwebsockets-dev libcjson-dev libssl-dev
# ... and what the tests need besides (`make test` installs these when run as root).
TEST_DEB_PKGS  := iproute2 python3 python3-aiohttp python3-websockets python3-yaml curl openssl socat netcat-openbsd \
                  groff-base man-db systemd python3-pytest python3-pytest-xdist python3-pytest-timeout \
                  libcmocka-dev
DEB_PKGS  := $(BUILD_DEB_PKGS) $(TEST_DEB_PKGS)
CC        ?= cc
OPT       ?= -O2 -g
SAN       ?=
ALL_CFLAGS = $(OPT) $(SAN) -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude \
             $(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(CFLAGS)
LDLIBS    += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread
BUILD     ?= build
PYTHON    := /usr/bin/python3
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

# src/<room>/*.c: the folders are the architecture (docs/design.md).
SRCS      := $(wildcard src/*.c src/*/*.c src/*/*/*.c)
OBJS      := $(patsubst src/%.c,$(BUILD)/%.o,$(SRCS))
LIB_OBJS  := $(filter-out $(BUILD)/main.o,$(OBJS))

.PHONY: all build-deps deps test unit unit-bins asan soak valgrind demo bench clean install uninstall

all: build-deps tgbridge

# Building needs only the libraries: say exactly which Debian packages are missing
# (never install anything for a plain `make`).
build-deps:
	@missing=$$(for p in $(BUILD_DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	  | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ] && ! pkg-config --exists $(PKGS) 2>/dev/null; then \
	  echo "missing Debian packages to build tgbridge; run: sudo apt-get install -y $$missing"; exit 1; \
	fi

# The tests' packages too: installed when run as root; otherwise names the command.
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
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD):
	mkdir -p $@

# C unit tests (tests/unit/): one cmocka binary per module, $(BUILD)/unit/test_<m>, linked
# from tests/unit/test_<m>.c, the objects it tests (UNIT_OBJS_<m>: $(BUILD)/<these>.o) and
# link-time stubs for whatever lies beyond them (UNIT_STUBS_<m>: tests/unit/stubs_*.c,
# stubs.h) -- never libwebsockets or libmicrohttpd.  Every binary runs all its tests with
# no argument, names them with --list and runs one with NAME (tests/unit/unit_main.h).
# A new module: its name in UNIT_MODULES and its two lists.
UNIT_MODULES     := buf util json envelope wsframe wsread lineframe redact config access guard health reqtable mux session \
                    passpath pool_policy logqueue policy discover
UNIT_OBJS_buf       := base/buf
UNIT_OBJS_logqueue  := base/logqueue base/buf
UNIT_OBJS_util      := base/util
UNIT_OBJS_json      := wire/json
UNIT_OBJS_envelope  := wire/envelope wire/json base/buf
UNIT_OBJS_wsframe   := wire/wsframe base/buf
UNIT_OBJS_wsread    := wire/wsread
UNIT_OBJS_lineframe := wire/lineframe base/buf
UNIT_OBJS_passpath  := wire/passpath base/util
UNIT_OBJS_redact    := base/redact base/util base/buf
UNIT_OBJS_config    := $(patsubst src/%.c,%,$(wildcard src/config/*.c)) base/log base/logqueue base/redact base/util \
                       base/buf base/clock
UNIT_STUBS_config   := tests/unit/unit_config.c
UNIT_OBJS_access    := core/access $(UNIT_OBJS_config) wire/httphead
UNIT_STUBS_access   := tests/unit/unit_config.c
UNIT_OBJS_guard     := core/guard base/stats
UNIT_STUBS_guard    := tests/unit/stubs_loop.c
UNIT_OBJS_health    := obs/health base/status base/buf base/redact base/util base/clock
UNIT_OBJS_reqtable  := core/reqtable base/buf
UNIT_OBJS_mux       := core/mux core/mux_status base/status core/reqtable wire/envelope wire/json base/buf
UNIT_STUBS_mux      := tests/unit/stubs_loop.c tests/unit/stubs_log.c tests/unit/stubs_upstream.c tests/unit/stubs_policy.c
UNIT_OBJS_session   := core/session core/mux core/mux_status base/status core/reqtable wire/envelope wire/json base/buf base/redact \
                       base/util
UNIT_STUBS_session  := $(UNIT_STUBS_mux) tests/unit/stubs_callrec.c
UNIT_OBJS_pool_policy := upstream/pool_policy
UNIT_OBJS_policy    := core/policy
UNIT_OBJS_discover  := upstream/discover
UNIT_BINS        := $(patsubst %,$(BUILD)/unit/test_%,$(UNIT_MODULES))
UNIT_CFLAGS       = $(OPT) $(SAN) -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude \
                    $(shell pkg-config --cflags libcjson cmocka 2>/dev/null) $(CFLAGS)
UNIT_LIBS         = $(shell pkg-config --libs libcjson cmocka 2>/dev/null) -lm
UNIT_HDRS        := tests/unit/unit_main.h tests/unit/stubs.h tests/unit/unit_config.h tests/lib/utf8_valid.h
# The core and the pool's policy compile without libwebsockets and libmicrohttpd: headers
# of their names that stop the compiler come first on the include path (tests/unit/poison/).
UNIT_LWS_FREE    := src/core/mux.c src/core/reqtable.c src/core/session.c src/upstream/pool_policy.c src/upstream/discover.c

define UNIT_RULES
$$(BUILD)/unit/test_$(1): tests/unit/test_$(1).c tests/unit/unit_main.c $$(UNIT_STUBS_$(1)) \
    $$(patsubst %,$$(BUILD)/%.o,$$(UNIT_OBJS_$(1))) $$(UNIT_HDRS) $$(BUILD)/unit/lws-free.stamp
	@mkdir -p $$(@D)
	$$(CC) $$(UNIT_CFLAGS) $$(LDFLAGS) -o $$@ $$(filter %.c %.o,$$^) $$(UNIT_LIBS)
endef
$(foreach m,$(UNIT_MODULES),$(eval $(call UNIT_RULES,$(m))))

$(BUILD)/unit/lws-free.stamp: $(UNIT_LWS_FREE) $(wildcard include/*.h tests/unit/poison/*.h)
	@mkdir -p $(@D)
	$(CC) -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -Itests/unit/poison -Iinclude \
	  $(shell pkg-config --cflags libcjson 2>/dev/null) -fsyntax-only $(UNIT_LWS_FREE)
	touch $@

unit-bins: $(UNIT_BINS)

# Test fixture: an LD_PRELOAD resolver that takes its time (tests/e2e/dns/).  Never
# sanitized: it is loaded into the daemon under test, whatever that was built with.
TEST_FIXTURES := build/slowdns.so
build/slowdns.so: tests/lib/slowdns.c
	@mkdir -p build
	$(CC) -O2 -g -std=c11 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -ldl

unit: deps $(UNIT_BINS)
	$(TEST_ENV) $(PYTEST) tests/unit

# pytest (Debian's python3-pytest, -xdist, -timeout) runs everything under tests/: the
# C unit tests (tests/unit/test_c_units.py collects each test of each $(BUILD)/unit/test_*
# binary) and the end-to-end, packaging and fuzz-corpus tests; tests/conftest.py prints
# the last line, `N passed, N failed`.  Select with TESTFLAGS (pytest's arguments),
# e.g. TESTFLAGS="-k unix" or TESTFLAGS=tests/e2e/rest (docs/testing.md).
# Only the plugins named here (none a developer happens to have installed).
PYTEST    = PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 $(PYTHON) -m pytest -p xdist.plugin -p pytest_timeout -n 2
TESTFLAGS ?=
TEST_ENV  = BUILD_DIR=$(BUILD) UNIT_DIR=$(BUILD)/unit

test: deps tgbridge $(UNIT_BINS) $(TEST_FIXTURES) fuzz-replay-bins
	$(TEST_ENV) $(PYTEST) $(TESTFLAGS)

# Same tests against an AddressSanitizer+UBSan build.
asan:
	$(MAKE) deps $(TEST_FIXTURES)
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="$(ASAN_FLAGS)" build-asan/tgbridge unit-bins
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  TGBRIDGE_BIN=build-asan/tgbridge BUILD_DIR=build-asan UNIT_DIR=build-asan/unit \
	  $(PYTEST) $(TESTFLAGS)

# The soak test for SOAK_SECONDS (default 300) against the ASan+UBSan build.
SOAK_SECONDS ?= 300
soak:
	$(MAKE) deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="$(ASAN_FLAGS)" build-asan/tgbridge
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  TGBRIDGE_BIN=build-asan/tgbridge TGBRIDGE_SOAK_SECONDS=$(SOAK_SECONDS) \
	  $(PYTEST) tests/e2e/soak

# Every test under valgrind: the daemon (TGBRIDGE_WRAPPER; waits scaled by 10) and the
# C unit tests (UNIT_WRAPPER).
VALGRIND = valgrind -q --error-exitcode=99 --leak-check=full
valgrind: deps tgbridge $(UNIT_BINS) $(TEST_FIXTURES)
	TGBRIDGE_WRAPPER="$(VALGRIND) --suppressions=$(CURDIR)/tests/valgrind.supp" \
	  UNIT_WRAPPER="$(VALGRIND)" $(TEST_ENV) $(PYTEST) $(TESTFLAGS)

demo: deps tgbridge
	$(PYTHON) examples/demo.py

bench: deps tgbridge $(BUILD)/unit/test_policy
	$(PYTHON) bench/run.py
	./$(BUILD)/unit/test_policy test_policy_cost_with_50_rules

clean:
	rm -rf build build-asan tgbridge

# ---------------------------------------------------------------------------------------
# Installation: PREFIX (default /usr/local) and DESTDIR as usual; the unit files'
# ExecStart follows PREFIX.  `make uninstall` (same PREFIX and DESTDIR) removes exactly
# what `make install` put there.
PREFIX        ?= /usr/local
BINDIR        ?= $(PREFIX)/bin
MANDIR        ?= $(PREFIX)/share/man
DOCDIR        ?= $(PREFIX)/share/doc/tgbridge
SYSTEMDDIR    ?= $(PREFIX)/lib/systemd/system
# docs/*.md go to $(DOCDIR)/docs, beside the README, so the README's links work there.
DOCS          := $(wildcard docs/*.md)
INSTALLED     := $(BINDIR)/tgbridge $(MANDIR)/man8/tgbridge.8 $(SYSTEMDDIR)/tgbridge.service \
                 $(SYSTEMDDIR)/tgbridge.socket $(SYSTEMDDIR)/tgbridge-unix.socket \
                 $(DOCDIR)/README.md $(DOCDIR)/tgbridge.conf.example $(addprefix $(DOCDIR)/,$(DOCS))

install: build-deps tgbridge
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(DOCDIR)/docs
	install -m 0755 tgbridge $(DESTDIR)$(BINDIR)/tgbridge
	install -m 0644 man/tgbridge.8 $(DESTDIR)$(MANDIR)/man8/tgbridge.8
	for u in tgbridge.service tgbridge.socket tgbridge-unix.socket; do \
	  sed 's|@BINDIR@|$(BINDIR)|g; s|@DOCDIR@|$(DOCDIR)|g' systemd/$$u > $(DESTDIR)$(SYSTEMDDIR)/$$u.tmp && \
	  chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/$$u.tmp && mv -f $(DESTDIR)$(SYSTEMDDIR)/$$u.tmp $(DESTDIR)$(SYSTEMDDIR)/$$u; \
	done
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 examples/tgbridge.conf $(DESTDIR)$(DOCDIR)/tgbridge.conf.example
	install -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/docs/

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(DOCDIR)/docs $(DESTDIR)$(DOCDIR) 2>/dev/null

# ---------------------------------------------------------------------------------------
# Fuzzing (tests/fuzz/): a libFuzzer target per parser of outside bytes, each with a seed
# corpus in tests/fuzz/corpus/<target>/.
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS=...] [FUZZ_ARGS=<libFuzzer flags>]
#       clang + libFuzzer + ASan/UBSan builds in build-fuzz/, each run FUZZ_SECONDS on
#       build-fuzz/corpus/<target> (seeded from the checked-in corpus, which runs never
#       grow); a crash is saved in build-fuzz/crashes/<target>/ and its path printed
#   make fuzz-replay   the targets built with $(CC) and tests/fuzz/replay.c, run over the
#       checked-in corpora; `make test` builds these too (tests/fuzz/test_fuzz_corpus.py runs
#       them) and `make asan` builds them sanitized in build-asan.
FUZZ_TARGETS     := body line frame json config url lineframe redact httphead wsframe wsread bulkpath passpath restname \
                    policy
FUZZ_DEB_PKGS    := clang libclang-rt-14-dev
FUZZ_SECONDS     ?= 60
FUZZ_ARGS        ?=
FUZZ_CC          ?= clang
FUZZ_CFLAGS       = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -g -O1 \
                    -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -Iinclude \
                    $(shell pkg-config --cflags libcjson 2>/dev/null)
FUZZ_LIBS         = $(shell pkg-config --libs libcjson 2>/dev/null) -lm
# The few src/ files each target needs (none pulls in lws, MHD or libcrypto).
FUZZ_SRCS_body      := src/wire/json.c src/wire/envelope.c src/base/buf.c
FUZZ_SRCS_line      := src/wire/json.c src/wire/envelope.c src/base/buf.c
FUZZ_SRCS_frame     := src/wire/json.c src/wire/envelope.c src/base/buf.c
FUZZ_SRCS_json      := src/wire/json.c
FUZZ_SRCS_config    := $(wildcard src/config/*.c) src/base/log.c src/base/logqueue.c src/base/redact.c src/base/util.c src/base/buf.c src/base/clock.c
FUZZ_SRCS_url       := src/config/url.c src/config/proxy.c src/base/log.c src/base/logqueue.c src/base/redact.c src/base/util.c src/base/buf.c src/base/clock.c
FUZZ_SRCS_lineframe := src/wire/lineframe.c src/base/buf.c
FUZZ_SRCS_redact    := src/base/redact.c src/base/util.c src/base/buf.c
FUZZ_SRCS_httphead  := src/wire/httphead.c
FUZZ_SRCS_wsframe   := src/wire/wsframe.c src/base/buf.c
FUZZ_SRCS_wsread    := src/wire/wsread.c
FUZZ_SRCS_bulkpath  := src/wire/bulkpath.c src/base/buf.c src/base/util.c src/base/log.c src/base/logqueue.c src/base/redact.c src/base/clock.c
FUZZ_SRCS_passpath  := src/wire/passpath.c src/base/util.c src/base/buf.c src/base/log.c src/base/logqueue.c src/base/redact.c src/base/clock.c
FUZZ_SRCS_restname  := src/wire/restname.c
FUZZ_SRCS_policy    := src/core/policy.c
FUZZ_HDRS         := tests/fuzz/fuzz_common.h tests/fuzz/fuzz_url_checks.h tests/lib/utf8_valid.h \
                     $(wildcard include/*.h)
FUZZ_BINS         := $(patsubst %,build-fuzz/fuzz_%,$(FUZZ_TARGETS))
FUZZ_REPLAY_BINS  := $(patsubst %,$(BUILD)/fuzz_replay_%,$(FUZZ_TARGETS))

.PHONY: fuzz fuzz-deps fuzz-replay fuzz-replay-bins fuzz-replay-asan fuzz-clean

# Installs missing Debian packages for `make fuzz` when run as root, like `deps`.
fuzz-deps: deps
	@missing=$$(for p in $(FUZZ_DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
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

# fuzz_<t>: with libFuzzer.  fuzz_replay_<t>: the same target with replay.c's main(),
# linked with the objects the daemon is built from ($(BUILD)/*.o, same flags).
define FUZZ_TARGET_RULES
build-fuzz/fuzz_$(1): tests/fuzz/fuzz_$(1).c $$(FUZZ_SRCS_$(1)) $$(FUZZ_HDRS)
	@mkdir -p build-fuzz
	$$(FUZZ_CC) $$(FUZZ_CFLAGS) -o $$@ tests/fuzz/fuzz_$(1).c $$(FUZZ_SRCS_$(1)) $$(FUZZ_LIBS)

$$(BUILD)/fuzz_replay_$(1): tests/fuzz/fuzz_$(1).c tests/fuzz/replay.c \
    $$(patsubst src/%.c,$$(BUILD)/%.o,$$(FUZZ_SRCS_$(1))) $$(FUZZ_HDRS) | $$(BUILD)
	$$(CC) $$(ALL_CFLAGS) $$(LDFLAGS) -o $$@ tests/fuzz/fuzz_$(1).c tests/fuzz/replay.c \
	  $$(patsubst src/%.c,$$(BUILD)/%.o,$$(FUZZ_SRCS_$(1))) $$(FUZZ_LIBS)
endef
$(foreach t,$(FUZZ_TARGETS),$(eval $(call FUZZ_TARGET_RULES,$(t))))

fuzz: fuzz-deps
	$(MAKE) $(FUZZ_BINS)
	@fail=0; for t in $(FUZZ_TARGETS); do \
	  mkdir -p build-fuzz/corpus/$$t build-fuzz/crashes/$$t; \
	  touch build-fuzz/crashes/$$t/.run; \
	  cp -n tests/fuzz/corpus/$$t/* build-fuzz/corpus/$$t/; \
	  echo "fuzz_$$t: $(FUZZ_SECONDS) s (log: build-fuzz/fuzz_$$t.log)"; \
	  if ./build-fuzz/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 \
	       -print_final_stats=1 -artifact_prefix=build-fuzz/crashes/$$t/ $(FUZZ_ARGS) \
	       build-fuzz/corpus/$$t >build-fuzz/fuzz_$$t.log 2>&1; then \
	    grep -aE '^#[0-9]+[[:space:]]+DONE' build-fuzz/fuzz_$$t.log | tail -n 1 | sed 's/^/  /'; \
	  else \
	    fail=1; echo "FAIL fuzz_$$t:"; \
	    grep -aE -m1 -A24 'property violated|ERROR: |runtime error' build-fuzz/fuzz_$$t.log | sed 's/^/  | /'; \
	    for c in $$(find build-fuzz/crashes/$$t -type f ! -name .run -newer build-fuzz/crashes/$$t/.run); do \
	      echo "  input: $$c (rerun: ./build-fuzz/fuzz_$$t $$c)"; done; \
	  fi; \
	done; exit $$fail

fuzz-replay-bins: $(FUZZ_REPLAY_BINS)

fuzz-replay: fuzz-replay-bins
	@for t in $(FUZZ_TARGETS); do ./$(BUILD)/fuzz_replay_$$t tests/fuzz/corpus/$$t || exit 1; done

# `make asan` runs tests/fuzz/test_fuzz_corpus.py too: it finds the replay binaries in
# $BUILD_DIR (build-asan), built here with the same sanitizers.
asan: fuzz-replay-asan
fuzz-replay-asan: deps
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN="$(ASAN_FLAGS)" fuzz-replay-bins

fuzz-clean:
	rm -rf build-fuzz

-include $(wildcard $(BUILD)/*.d $(BUILD)/*/*.d $(BUILD)/*/*/*.d)
