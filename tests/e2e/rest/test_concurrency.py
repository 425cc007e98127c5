"""Many callers on one upstream socket: isolation of interleaved replies,
the gateway's 16-request window, large replies, idle CPU."""

import threading
import time
import uuid

from harness import (FLOW_TC, T, WRAPPER, check_status, eq, flow_path,
                     own_error, sse_payloads, start_bridge, start_mock,
                     stream, tc, timeout)

TOKEN = "tg_conc_token_8b21"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def bridge_on(*args, era="v2d"):
    """One socket (--max-connections 1): these tests are about its window; the pool of
    overflow connections has its own tests (test_connections.py)."""
    m = start_mock(era, tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-connections", "1", *args)
    return m, b


def run_threads(n, fn):
    """Run fn(i) in n threads started together; returns {i: result or
    exception}."""
    out = {}
    barrier = threading.Barrier(n)

    def wrap(i):
        try:
            barrier.wait(T(10))
            out[i] = fn(i)
        except BaseException as e:  # noqa: B902
            out[i] = e
    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + T(60)
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))
    for i in range(n):
        out.setdefault(i, AssertionError("caller still waiting after 60s"))
    return out


def failures(results):
    bad = {i: r for i, r in results.items() if isinstance(r, BaseException)}
    if bad:
        i, e = sorted(bad.items())[0]
        raise AssertionError("%d of %d callers failed; caller %d: %s: %s" % (
            len(bad), len(results), i, type(e).__name__, e))


def check_window(st):
    """The gateway's window (§6.1) was respected: from the oldest unfinished
    request through the newest one, never more than 16, and the mock's
    reader never had to stall."""
    assert st["max_window"] <= 16, "gateway window reached %d" % \
        st["max_window"]
    assert st["max_span_per_connection"] <= 16, \
        "requests from the oldest unfinished to the newest spanned %d" % \
        st["max_span_per_connection"]
    eq(st["reader_stalls"], 0, "mock reader stalls")


@timeout(120)
def test_100_concurrent_interleaved_callers_get_their_own_replies():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        nonce = uuid.uuid4().hex[:8]

        def caller(i):
            # the mock splits the prompt into the streamed chunks, so the
            # chunks a caller receives must concatenate to its own prompt
            mine = " ".join("c%03d-%s-w%d" % (i, nonce, w) for w in range(6))
            mode = ("ndjson", "sse", "plain")[i % 3]
            body = tc(mine, streaming=mode != "plain", parts=3, delay=0.03)
            if mode == "ndjson":
                with stream(b.port, FLOW_TC, body, NDJSON, timeout=60) as s:
                    check_status(s, 200, "NDJSON caller %d" % i)
                    items = list(s.ndjson())
                eq(len(items), 4, "caller %d lines" % i)
            elif mode == "sse":
                with stream(b.port, FLOW_TC, body, SSE, timeout=60) as s:
                    check_status(s, 200, "SSE caller %d" % i)
                    items = [p for _, p in sse_payloads(s.events())]
                eq(len(items), 4, "caller %d events" % i)
            else:
                r = b.post(FLOW_TC, body, timeout=60)
                check_status(r, 200, "caller %d" % i)
                items = [r.json()]
            text = "".join(it.get("response", "") for it in items)
            eq(text, mine, "caller %d text" % i)
            eq(items[-1].get("end_of_stream"), True, "caller %d final" % i)
            return len(items)

        results = run_threads(100, caller)
        failures(results)
        st = m.stats()
        eq(st["connections_total"], 1, "upstream connections")
        eq(st["requests_received"], 100, "requests upstream")
        check_window(st)


@timeout(120)
def test_mixed_envelope_sizes_sent_together_arrive_intact():
    """Small envelopes leave in bursts framed by tgbridge, large ones alone
    and fragmented; with both kinds in flight at once, every request must
    reach the gateway intact and every caller get its own reply."""
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        nonce = uuid.uuid4().hex[:8]
        # around the 126 / 65536 length encodings, the 16 KiB burst limit,
        # the 60 KiB burst size and the 64 KiB fragment size
        sizes = [10, 125, 126, 127, 16000, 16400, 30000, 61000, 65535,
                 65536, 140000]

        def caller(i):
            n = sizes[i % len(sizes)]
            head = "c%03d-%s-" % (i, nonce)
            mine = head + "x" * max(0, n - len(head))
            r = b.post(FLOW_TC, tc(mine), timeout=60)
            check_status(r, 200, "caller %d (%d bytes)" % (i, n))
            eq(r.json().get("response"), mine, "caller %d's own reply" % i)
            return n
        failures(run_threads(66, caller))
        st = m.stats()
        check_window(st)
        eq(st["requests_received"], 66, "requests the gateway parsed")


def test_window_never_exceeds_16_with_40_at_once():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()

        def caller(i):
            r = b.post(FLOW_TC, tc(str(i), first_delay=0.3), timeout=60)
            check_status(r, 200, "caller %d" % i)
            return r.status

        t0 = time.monotonic()
        results = run_threads(40, caller)
        elapsed = time.monotonic() - t0
        failures(results)
        st = m.stats()
        eq(st["requests_received"], 40, "requests upstream")
        check_window(st)
        assert st["max_inflight_per_connection"] >= 8, \
            "requests were not multiplexed (at most %d in flight)" % \
            st["max_inflight_per_connection"]
        eq(st["connections_total"], 1, "upstream connections")
        # 40 x 0.3 s serialised would be 12 s, 3 windows about 1 s
        assert elapsed < T(5), "40 requests took %.1fs" % elapsed


def test_max_inflight_flag_limits_window():
    m, b = bridge_on("--max-inflight", "4")
    with m, b:
        b.wait_ready()

        def caller(i):
            r = b.post(FLOW_TC, tc(str(i), first_delay=0.1), timeout=60)
            check_status(r, 200, "caller %d" % i)
        failures(run_threads(20, caller))
        st = m.stats()
        eq(st["requests_received"], 20, "requests upstream")
        assert st["max_span_per_connection"] <= 4, \
            "--max-inflight 4 but %d requests in the window" % \
            st["max_span_per_connection"]
        assert st["max_inflight_per_connection"] >= 2, \
            "no concurrency at all (%d)" % st["max_inflight_per_connection"]


def test_window_anchored_at_oldest_unfinished_request():
    # One request never finishes; the gateway keeps counting it, so only
    # 15 further requests fit in the window however fast they complete.
    m, b = bridge_on("--queue-timeout", "1.5", "--request-timeout", "60")
    with m, b:
        b.wait_ready()
        hold = stream(b.port, FLOW_TC, tc("slow", streaming=True, never=True),
                      NDJSON, wait=False)
        try:
            m.wait_stats(lambda s: s["requests_received"] >= 1,
                         what="slow request upstream")

            def caller(i):
                return b.post(FLOW_TC, tc(str(i)), timeout=30)
            results = run_threads(20, caller)
            failures(results)
            codes = sorted(r.status for r in results.values())
            ok = codes.count(200)
            busy = [r for r in results.values() if r.status == 503]
            eq(ok + len(busy), 20, "statuses %r" % codes)
            assert 10 <= ok <= 15, "%d fast requests succeeded %r" % (ok,
                                                                      codes)
            assert busy, "no 503 although the window was full"
            own_error(busy[0], 503, "gateway-unavailable")
            check_window(m.stats())
        finally:
            hold.close()


BLOB_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def blob(n):
    """What the mock puts in the final payload's "blob" for _mock.size=n."""
    return (BLOB_ALPHABET * (n // len(BLOB_ALPHABET) + 1))[:n]


def check_blob(obj, n):
    got = obj.get("blob")
    assert isinstance(got, str), "no blob in the final payload"
    if got != blob(n):
        where = next((i for i, (x, y) in enumerate(zip(got, blob(n)))
                      if x != y), min(len(got), n))
        raise AssertionError("blob of %d chars differs from the %d sent, "
                             "first at offset %d" % (len(got), n, where))


def test_8mb_reply_arrives_intact():
    # _mock.size: the reply text becomes an 8 MiB pattern, and the final
    # payload carries it once more as "blob" (a 16 MiB frame)
    size = 8 * 1024 * 1024
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        r = b.post(FLOW_TC, tc("big", size=size), timeout=60)
        check_status(r, 200, "8 MB reply")
        obj = r.json()
        check_blob(obj, size)
        assert obj.get("response") == obj["blob"], "response text damaged"


def test_8mb_reply_streamed_intact():
    size = 8 * 1024 * 1024
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tc("big stream", streaming=True, parts=2,
                                  size=size), NDJSON, timeout=60) as s:
            check_status(s, 200, "streamed 8 MB reply")
            items = list(s.ndjson())
        eq(len(items), 3, "lines")
        text = "".join(i.get("response", "") for i in items)
        assert text == blob(size), "streamed text (%d chars) damaged" % \
            len(text)
        check_blob(items[-1], size)


def test_8mb_replies_to_concurrent_callers():
    size = 8 * 1024 * 1024
    m, b = bridge_on()
    with m, b:
        b.wait_ready()

        def caller(i):
            r = b.post(FLOW_TC, tc("big %d" % i, size=size + i), timeout=60)
            check_status(r, 200, "caller %d" % i)
            check_blob(r.json(), size + i)   # each caller its own length
        failures(run_threads(3, caller))


def test_4mb_request_forwarded_intact():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        pad = "".join("%07d," % i for i in range(512 * 1024))   # 4 MiB
        body = tc("x", echo=True)
        body["pad"] = pad
        r = b.post(FLOW_TC, body, timeout=60)
        check_status(r, 200, "4 MB request")
        assert pad.encode() in r.body, "echoed request lost the 4 MB pad"


def test_idle_cpu_with_open_streams():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        streams = []
        try:
            for i in range(5):
                streams.append(stream(
                    b.port, FLOW_TC, tc(str(i), streaming=True, never=True),
                    NDJSON if i < 3 else SSE, wait=False))
            m.wait_stats(lambda s: s["requests_received"] >= 5,
                         what="5 idle streams upstream")
            time.sleep(0.3)      # let start-up work settle
            before = b.cpu_ticks()
            time.sleep(2.0)      # the measurement window
            used = b.cpu_ticks() - before
            limit = 2 if not WRAPPER else 20
            assert used <= limit, \
                "tgbridge used %d clock ticks in 2 s while idle" % used
            assert b.running()
        finally:
            for s in streams:
                s.close()


def test_many_sequential_requests_one_connection():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        for i in range(50):
            path = flow_path("embeddings") if i % 2 else "/api/v1/config"
            body = {"texts": ["t%d" % i]} if i % 2 else {"operation": "list",
                                                         "type": "prompt"}
            check_status(b.post(path, body), 200, "request %d" % i)
        st = m.stats()
        eq(st["connections_total"], 1, "upstream connections")
        eq(st["requests_completed"], 50, "requests completed")
