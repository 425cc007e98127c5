"""Names as the gateway routes them (issue 16 item 9): a flow id or service name
(thru/ names included) is read like aiohttp reads it -- decoded, any character but a
slash, braces, NUL and other control characters -- and reaches the gateway decoded;
what tgbridge cannot carry gets 404 with a message naming the character.  On
/api/v1/{kind} (iam aside) a body without "workspace" gets the envelope's written
into it, as HEAD's registry_endpoint.py does."""

import json

from harness import check_status, eq, own_error, start_bridge, start_mock, tc, timeout

TOKEN = "tg_names16_51ad"


def last_envelope(m):
    return json.loads(m.stats()["last_envelopes"][-1])


@timeout(60)
def test_names_with_any_character_reach_the_gateway_decoded():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        for raw, flow, service in [
                ("/api/v1/flow/my%20flow/service/text-completion", "my flow", "text-completion"),
                ("/api/v1/flow/a:b@c+d/service/text-completion", "a:b@c+d", "text-completion"),
                ("/api/v1/flow/caf%C3%A9%25/service/text-completion", "caf\u00e9%", "text-completion"),
                ("/api/v1/flow/default/service/text%20completion", "default", "text completion"),
                ("/api/v1/flow/default/service/thru/my%20svc/x:y", "default", "thru/my svc/x:y"),
                ("/api/v1/flow/default/service/thru/a%2Fb", "default", "thru/a/b")]:
            r = b.post(raw, tc("x"))
            assert not (r.status == 404 and "no such route" in r.body.decode()), \
                "%s: tgbridge's own 404: %s" % (raw, r.body)
            env = last_envelope(m)
            eq((env.get("flow"), env.get("service")), (flow, service), "the envelope of " + raw)

        for raw, what in [("/api/v1/flow/a%2Fb/service/text-completion", "an encoded slash (%2F)"),
                          ("/api/v1/flow/ab%00cd/service/text-completion", "a NUL character (%00)"),
                          ("/api/v1/flow/ab%01/service/text-completion", "a control character (%01)"),
                          ("/api/v1/flow/ab%7B/service/text-completion", "the character '{'"),
                          ("/api/v1/flow/default/service/text%0Acompletion", "a control character (%0A)"),
                          ("/api/v1/flow/default/service/a%2Fb", "an encoded slash (%2F)"),
                          ("/api/v1/con%00fig", "a NUL character (%00)")]:
            r = b.post(raw, tc("x"))
            own_error(r, 404, "not-found")
            msg = r.json()["error"]["message"]
            assert what in msg, "%s: %r does not name %r" % (raw, msg, what)
        check_status(b.post("/api/v1/flow/default/service/text-completion", tc("ok")), 200, "the plain name")


@timeout(60)
def test_kind_bodies_get_the_envelopes_workspace():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--workspace", "ws-16")
    with m, b:
        b.wait_ready()
        b.post("/api/v1/config", {"operation": "get", "keys": []})
        env = last_envelope(m)
        eq(env.get("workspace"), "ws-16", "the envelope's workspace")
        eq(env["request"].get("workspace"), "ws-16", "written into the body")
        eq(env["request"].get("operation"), "get", "the rest of the body")
        b.post("/api/v1/librarian", {})
        eq(last_envelope(m)["request"], {"workspace": "ws-16"}, "an empty body")
        b.post("/api/v1/config", {"operation": "get", "workspace": "own"})
        env = last_envelope(m)
        eq((env.get("workspace"), env["request"].get("workspace")), ("own", "own"), "a body's own workspace")
        b.post("/api/v1/iam", {"operation": "whoami"})
        assert "workspace" not in last_envelope(m)["request"], "iam's body is left alone"
        b.post("/api/v1/flow/default/service/text-completion", tc("x"))
        assert "workspace" not in last_envelope(m)["request"], "flow services' bodies are left alone"
