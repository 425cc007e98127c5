#!/bin/sh
# One-liners for tgbridge's Unix socket (docs/protocols.md: "Unix socket", "Line protocol").
#
#   sh examples/uds_oneliner.sh [SOCKET]
#
# runs each of them against SOCKET (default $TGBRIDGE_UNIX, else
# /run/tgbridge/tgbridge.sock), skipping the tools that are not installed:
# socat (apt-get install socat), OpenBSD netcat (apt-get install netcat-openbsd)
# and curl. Copy the line you need into your own script.
#
# The line protocol in one paragraph: write one JSON envelope per line,
#   {"id":"q1","service":"graph-rag","flow":"default","request":{...}}
# and read one JSON reply per line, each with your id:
#   {"id":"q1","response":{...},"complete":false}   ... then
#   {"id":"q1","response":{...},"complete":true}    or
#   {"id":"q1","error":{"type":"...","message":"..."},"complete":true}
# When a client shuts down its sending side (which is what socat and nc -N do at
# the end of their input), tgbridge still sends every reply and then closes the
# connection, so the commands below end as soon as the answer is complete.
set -eu

SOCK=${1:-${TGBRIDGE_UNIX:-/run/tgbridge/tgbridge.sock}}
have() { command -v "$1" >/dev/null 2>&1; }
say() { printf '# %s\n' "$*" >&2; }

if have socat; then
    # Is anyone there? -> {"type":"pong"}
    say "socat: ping"
    echo '{"type":"ping"}' | socat -t 30 - UNIX-CONNECT:"$SOCK"

    # One streaming request; prints each reply line as it arrives. -t is only an
    # upper bound on the wait after the input ends (tgbridge closes when done).
    say "socat: streaming text-completion"
    echo '{"id":"q1","service":"text-completion","flow":"default","request":{"system":"Be terse.","prompt":"Say hi","streaming":true}}' \
        | socat -t 600 - UNIX-CONNECT:"$SOCK"

    # Several requests on one connection: the replies interleave, told apart by id.
    say "socat: two requests at once"
    printf '%s\n' \
        '{"id":"a","service":"text-completion","flow":"default","request":{"system":"","prompt":"first","streaming":true}}' \
        '{"id":"b","service":"config","request":{"operation":"list","type":"prompt"}}' \
        | socat -t 600 - UNIX-CONNECT:"$SOCK"
else
    say "socat not installed: skipping the socat examples"
fi

if have nc && nc -h 2>&1 | grep -q -e '-U'; then
    # OpenBSD netcat: -U for a Unix socket, -N to shut down the sending side at
    # the end of the input (without -N, nc keeps the connection open).
    say "nc -U: graph-rag"
    echo '{"id":"n1","service":"graph-rag","flow":"default","request":{"query":"What is TrustGraph?"}}' \
        | nc -N -U "$SOCK"
else
    say "nc with -U (netcat-openbsd) not installed: skipping the nc example"
fi

if have curl; then
    # HTTP on the same socket: the REST routes, exactly as on the TCP port.
    say "curl: /readyz"
    curl -sS --unix-socket "$SOCK" http://localhost/readyz
    echo
    say "curl: streamed NDJSON"
    curl -sSN --unix-socket "$SOCK" http://localhost/api/v1/flow/default/service/text-completion \
        -H 'Accept: application/x-ndjson' \
        -d '{"system":"Be terse.","prompt":"Say hi","streaming":true}'
else
    say "curl not installed: skipping the HTTP examples"
fi
