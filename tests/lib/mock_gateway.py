#!/usr/bin/python3
"""Mock TrustGraph api-gateway: the ``/api/v1/socket`` multiplexed WebSocket
and the gateway's other ("passthrough") routes.

Test fixture for tgbridge.  It reproduces the gateway's WebSocket behaviour
as described in /work/shared/reference/trustgraph-gateway.md (section numbers
below refer to that document) and, where the reference is silent, in the
gateway source (trustgraph-ai/trustgraph: gateway/endpoint/socket.py
``SocketEndpoint``, gateway/dispatch/mux.py ``Mux``, gateway/dispatch/
manager.py, requestor.py, sender.py, registry.py).  Like the real gateway it
is an aiohttp server with ``web.WebSocketResponse(max_msg_size=52428800)``, so
transport details (close 1009 on oversize frames, autoping/autoclose, no
server pings, permessage-deflate, TCP back-pressure when the reader stalls)
are aiohttp's own and match the gateway exactly (§2.4).

Usage (Python 3.11 + Debian python3-aiohttp 3.8.4, stdlib otherwise):

    /usr/bin/python3 tests/lib/mock_gateway.py [--host 127.0.0.1] [--port 0]
        [--era v1a|v1b|v1c|v2a|v2b|v2c|v2d] [--secret S] [--token T]... [--echo-token]
        [--anonymous] [--flows default,...] [--workspaces default,...]
        [--exclude-kinds k,...] [--timeout SECONDS] [--auth-delay SECONDS]
        [--user NAME:PASSWORD]... [--bootstrap]
        [--tls-cert FILE --tls-key FILE] [--verbose]

With --tls-cert/--tls-key (PEM) the same routes are served over TLS
(https:// / wss://) through an ssl.SSLContext on aiohttp's TCPSite; the
certificate file may hold the chain.  Nothing else changes.

After binding it prints exactly one line ``PORT <n>`` on stdout (other
diagnostics go to stderr, only with --verbose; uncaught exceptions in a
connection are always logged).  SIGTERM/SIGINT: exit 0 at once; open sockets
are aborted without a close frame, as a gateway shutdown does (§2.4).

Eras (§1)
  v1a v1b v1c  With --secret, the upgrade needs ?token=<secret> (decoded,
               exact) else HTTP 401 "401: Unauthorized" text/plain; without
               it the socket is open.  Authorization header ignored.  No
               in-band auth: an auth frame is a "Bad message".
               v1a errors are bare strings without id (E1); v1b/v1c use the
               structured shapes (E2 with id / E3 without).  v1c (and V2)
               route on the envelope `workspace`; "Invalid flow" is
               "Invalid flow" in v1a/v1b and "Invalid flow <ws>/<flow>" from
               v1c (as in the code: the ws/flow text arrived in v2.4.0).
  v2a..v2d     Handshake always accepted, ?token= / Authorization ignored.
               {"type":"auth","token":T} -> auth-ok (`workspace` in v2a/v2b,
               `default_workspace` in v2c/v2d) if T is a --token (or, with
               no --token at all, any tg_... / a.b.c token); malformed or
               unknown -> auth-failed (socket stays open, identity kept);
               empty -> anonymous, only v2b+ with --anonymous.  HEAD
               validation (registry, workspace-not-found, §4.1) in all V2
               eras.  Idle-timeout message "" in v2d, "Timeout" before.

Test controls: ``request._mock`` (ignored by the real gateway)
  parts N          streamed parts, default 3 (streaming, or inherently
                   multi-frame ops: triples/sparql batches, get-kg-core ...)
  delay S          pause before every frame but the first
  first_delay S    pause before the first frame
  never true       never completes (after `after` partial frames); stays in
                   the window until the socket closes
  error {shape, type, message, after}
                   E1 {"error":msg}; E2 {"id","error":{message,type},
                   "complete":true}; E3 same without id; E4 policy error with
                   id (default type access-denied; with after == 0 it is
                   produced inline by the reader, like real policy errors,
                   and never enters the window); E5 (default) {"id",
                   "response":{"error":{type,message}},"complete":true};
                   E6 {"id","response":{"error":msg},"complete":true}.
                   Preceded by `after` partial frames (default 0).
  size N           the main text (text-completion `response`, prompt `text`,
                   agent answer, RAG answer) becomes N ASCII bytes
                   blob[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]
                   (streamed over the parts), and the final payload also
                   carries it as "blob"
  part_size N      text-completion streaming: each of the `parts` partial
                   frames carries N bytes of text (generated once, so a long
                   stream costs the mock no memory), and nothing else is big
  drop true        after `after` partial frames, abort the TCP connection
  after K          partial frames before drop / timeout / never
  echo true        single final frame {"echo": request, "envelope": frame,
                   "workspace": resolved, "flow", "service"} (request and
                   envelope re-parsed from the raw frame, before any
                   gateway rewriting)
  timeout true     E5 gateway-error (message "" in v2d, else "Timeout")
  bad_frame KIND   after `after` partial frames, one final frame for the request
                   that is not what the gateway would send: "utf8" (a text
                   frame whose bytes are not valid UTF-8), "json" (not JSON),
                   "nonobject" (a JSON array); the request then counts as
                   finished at the mock
  Missing required fields behave like the translators: E5 gateway-error
  "'<field>'" (text-completion needs system+prompt, agent question,
  graph-rag/document-rag query, embeddings texts, mcp-tool name, ...).

Introspection (same port)
  GET  /_mock/stats   counters (see GLOBAL_COUNTERS), last_query_token,
                      last_envelopes (last 50 raw frames, each <= 1 MiB),
                      frames_by_connection {id: frames in}, connections
                      [per-connection records incl. window, queue_depth,
                      reader_stalled, window_full, max_span, close_code,
                      recent_frames (its last 8 frames in, each <= 200
                      chars: which socket carried a request)]
  POST /_mock/reset   zero counters, forget closed connections
                      (?state=1 also restores flows/config/documents)
  POST /_mock/drop    abort every open socket (no close frame), bulk
                      import/export sockets and streamed bodies included
                      ("dropped" = all, "dropped_passthrough" = the latter)
  POST /_mock/close   close every open socket with close frame 1001 (bulk
                      sockets too: "closed", "closed_passthrough")
  GET  /_mock/passthrough   the passthrough control defaults (below)
  POST /_mock/passthrough   replace them: {"<route>"|"*": {control: value}};
                      an empty body or {} clears them; unknown route -> 400

Passthrough routes (§2.2 / §2.3 / §3 / §8.4, gateway source where silent)
  Route names (keys of stats "routes" and of the controls):
    auth/login auth/bootstrap auth/bootstrap-status auth/change-password
    i18n metrics document-stream export-core import-core import export
  Per era (a route an era lacks is not registered: aiohttp's own 404
  "404: Not Found", 405 for a wrong method; GET routes also answer HEAD):
    POST /api/v1/auth/{login,bootstrap,bootstrap-status,change-password}
                         V2 only
    GET  /api/v1/i18n/packs/{lang}   v1b, v1c, V2 (real: v2.3.9+, inside
                         V1b; the mock gives all of V1b the route)
    GET  /api/metrics/{path:.*}      all (bare /api/metrics: 404)
    GET  /api/v1/flow/{flow}/import/{kind}, .../export/{kind}  all
    POST /api/v1/import-core, GET /api/v1/export-core           all
    GET  /api/v1/document-stream     all (real: v2.1.7+, inside V1a)
  Auth
    V1  HTTP: `Authorization` split(" ", 2): absent -> token ""; first word
        not "Bearer" -> 401 even without --secret; token = second word.
        With --secret it must equal it.  401 = text/plain
        "401: Unauthorized".  Bulk sockets: ?token= (decoded) == --secret,
        checked before the upgrade; the header is ignored.
    V2  HTTP: "Bearer <t>" (stripped); no header / not "Bearer " / empty ->
        anonymous (v2b+ with --anonymous only); tg_... or a.b.c accepted if
        in --token (any well-formed one when there is no --token) or issued
        by this mock (login JWTs, bootstrap key); else 401
        application/json {"error":"auth failure"} (exact bytes).  i18n and
        login/bootstrap/bootstrap-status are PUBLIC (header never looked
        at).  metrics / document-stream / export-core / import-core need a
        credential; control `deny` -> 403 {"error":"access denied"}.
        Bulk sockets: kind not in the registry -> 404 {"error": "unknown
        kind"} (before auth); ?token= missing/empty -> 401 JSON even under
        --anonymous; then as above (query token as "Bearer <t>").
        --auth-delay applies to each credential check.  --echo-token:
        401 bodies quote the credential.
  Behaviour
    auth/login     {"username","password"[,"workspace"]} -> 200 {"jwt",
                   "jwt_expires" (ISO, +1 h), "bootstrap_available":false};
                   the JWT: {"alg":"EdDSA","kid","typ":"JWT"} . {"iss":
                   "trustgraph-iam","sub":NAME,"default_workspace","iat",
                   "exp"} . fake signature; accepted by this mock in-band
                   (auth-ok names its workspace) and on REST.  Unknown
                   user / bad password / workspace not in --workspaces ->
                   401 {"error": "auth failure"}; bad JSON -> 400
                   {"error": "invalid json"}; non-object -> aiohttp 500.
                   (The iam `login` op over the socket does the same.)
    auth/bootstrap --bootstrap: first call 200 {"bootstrap_admin_user_id":
                   "admin","bootstrap_admin_api_key":"tg_...",
                   "bootstrap_available":false} (the key then works), later
                   calls / without --bootstrap 401 {"error": "auth failure"}
    auth/bootstrap-status  200 {"bootstrap_available": bool}
    auth/change-password   Bearer of the user (login JWT) + {"current_
                   password","new_password"}: missing current -> 400
                   {"error": "password (current) required"}, missing new ->
                   400 {"error": "new_password required"}, wrong current /
                   identity not a --user -> 401 {"error": "auth failure"},
                   else 200 {"bootstrap_available": false}, password changed
    i18n           the mock's own flat pack {"mock.i18n.language",
                   "mock.i18n.hello","mock.i18n.items"} for en es sw pt tr
                   hi he ar zh-cn ru (normalised like trustgraph.i18n,
                   unknown -> en); "/" or ".." in lang -> 400 "400: Invalid
                   language code"
    metrics        200 text/plain (proxied body), JSON {"status":"success",
                   "data":{"resultType":"vector","result":[]},"mock":{path,
                   query_string (yarl-decoded, as forwarded), raw_query_
                   string, query {k: v}, upstream "/api/v1/<path>?<qs>"}};
                   control upstream_down -> 502 "Bad Gateway: metrics
                   upstream unreachable: ..." (v1c+) / 500 (v1a, v1b)
    document-stream ?document-id=&workspace=&chunk-size= (v1a/v1b: ?user=
                   required instead of workspace): 200 application/octet-
                   stream, chunked, one write per chunk-size piece (default
                   1 MiB, <= 0 -> default, writes capped at 16 MiB).
                   "size-N[k|m|g]" -> N generated bytes; a librarian
                   document (doc1) -> its content; unknown -> empty body.
                   No document-id -> 500 text "Missing required parameter:
                   document-id"; chunk-size not an int -> 200 {"error":
                   "invalid literal for int() ..."}
    export-core    ?id=&workspace= (v1a/v1b: &user=): missing -> 200
                   {"error": "'id'"} (or "'user'"); "size-N[k|m|g]" -> N
                   generated bytes written `chunk` (64 KiB) at a time;
                   "core1" -> msgpack ("t",{...})x3 + ("ge",{...}) as
                   core_export.py; else empty.  200 application/octet-
                   stream, chunked; each write awaits the transport (a slow
                   reader slows it), a client that goes away is recorded.
    import-core    ?id=&workspace= (v1a/v1b: &user=): the body (Content-
                   Length or chunked, Expect: 100-continue fine) is read
                   128 KiB at a time into sha256 + byte count, never held;
                   then 200 application/octet-stream, empty (chunked).  Not
                   parsed as msgpack.  Client gone mid-body -> recorded.
    import socket  frames (text or binary) are counted and decoded as the
                   dispatcher does (JSON + the fields it indexes); nothing
                   is ever sent; an undecodable frame -> server close 1000
                   (control lenient: never).  A client close is answered
                   with aiohttp's 1000.
    export socket  `frames` (default 3) text frames in the kind's
                   serialize.py shape, then close 1000 (the real one just
                   waits for more data: control hold); frames from the
                   client are read and ignored.
    both sockets   upgrade first, then: unknown flow -> close 1000 ("Invalid
                   flow <ws>/<flow>", "Invalid flow" in v1a/v1b); unknown
                   kind (V1) -> "Invalid kind", close 1000; <kind>-store
                   (entity-contexts-load) in --exclude-kinds -> "This kind
                   not supported by flow".  Workspace: ?workspace= (default
                   "default") from v2b; v1c/v2a ignore it (real: until
                   v2.5.8).  v1a import also accepts `objects`.
  Generated bodies: binary (default) byte i = i % 251; control pattern=
  alpha: byte i = "abcdefghijklmnopqrstuvwxyz0123456789"[i % 36].
  Controls (mock-only; from POST /_mock/passthrough "*" then "<route>",
  then the request's query `mock-<name>` (- or _), later winning; the
  real gateway ignores unknown query parameters):
    slow S         wait S seconds ("inf"/"never" = forever) before doing
                   anything (sockets: before the upgrade); a client that
                   gives up meanwhile counts as aborted
    once true      (in /_mock/passthrough) the route's entry is dropped
                   after one use
    delay S        pause between body writes / export frames
    fail_after N   downloads: abort TCP after N body bytes (0: right after
                   the headers); import-core: abort after receiving N
    truncate_after N  downloads: end the body cleanly after N bytes (as a
                   gateway error mid-stream does)
    cut_after N    downloads: after N body bytes, flush them and close the
                   connection (FIN) without the body's end: no last chunk
                   (chunked) or short of the Content-Length (length true)
    length true    downloads: a Content-Length (the whole size) instead of
                   chunked
    quote_credential true  V2, a route that checks a credential (metrics,
                   document-stream, export-core, ...): after it, answer
                   401 {"error": "auth failure (token <the Authorization
                   header as received>)"} with a WWW-Authenticate header
                   quoting it too, as a gateway that echoes the credential
                   back in a refusal would (whatever the credential)
    quote_pad N    quote_credential: N more bytes ("x") in the message
    quote S        quote_credential: quote S instead of the header
    status N       metrics: answer N with no body (204, 304, ...)
    stall_after N  downloads: stop after N bytes, keep the connection open;
                   import-core: stop reading after N bytes, never answer
    chunk N        export-core write size (default 65536)
    pattern alpha|binary
    deny true      V2: 403 {"error":"access denied"} after authentication
    upstream_down true  metrics: upstream unreachable
    frames N, frame_size N (exact frame bytes when >= the natural size),
    hold true, close_code N, close_reason S     export socket
    echo true      import/export socket: MOCK-ONLY echo (no such route
                   exists) -- each text/binary frame sent back as is; a
                   client close answered with the same code and reason
    close_after K  echo: server closes (close_code/close_reason) after K
    close_delay S  echo: answer a client's close only S seconds later
                   (close_answered: whether the connection was still there)
    drop_after K   sockets: abort TCP after K frames (import/echo: received,
                   export: sent; 0: right after the upgrade)
    lenient true   import: do not decode frames
  Stats: GET /_mock/stats "passthrough":
    routes {name: {count, in_progress, statuses {"200": n, "101": n, ...},
            last_status, last_authorization (header value or null),
            last_query (raw query string), last_path, last_method,
            bytes_in, bytes_out (bodies / frame payloads), aborted,
            mock_failures}}
    requests [last 100 requests to a passthrough route (bulk socket
             upgrades included), in order:
             {route, method, path (raw), query (raw), authorization (the
             Authorization header as received, or null)}]
    uploads [last 50 {route, id, workspace, content_length, chunked,
             expect, bytes, sha256, in_progress, complete, aborted,
             failed_by_mock, stalled}]
    downloads [last 50 {route, id, workspace, expected_bytes, bytes_sent,
               chunk, pattern, chunked, in_progress, complete, aborted,
               failed_by_mock, truncated, cut, stalled[, known]}]
    sockets [open + last 100 {id, route, flow, kind, token (decoded ?token=
             or null), authorization, query, workspace_param, workspace,
             identity, status (101/401/403/404), open, echo, frames_in,
             text_frames_in, binary_frames_in, bytes_in, frames_out,
             bytes_out, bad_frames, error, closed_by (client|server|drop|
             lost), client_close_code, client_close_reason,
             server_close_code, close_answered (echo: the client's close
             answered on a connection still open, false if it was dropped
             first)}]
    responses_aborted, uploads_aborted, mock_failures, http_401, http_403,
    logins_ok, logins_failed, password_changes, bootstraps, last_jwt,
    controls.  POST /_mock/reset zeroes all that (records still in progress
    and open sockets are kept); ?state=1 also restores --user passwords
    and --bootstrap, forgets issued credentials and clears the controls.
"""

import argparse
import asyncio
import base64
import collections
import datetime
import hashlib
import json
import logging
import math
import os
import re
import secrets
import signal
import ssl
import struct
import sys
import time
import uuid
from urllib.parse import quote

from aiohttp import WSMsgType, web

log = logging.getLogger("mock_gateway")

# --------------------------------------------------------------------------
# Constants from gw/dispatch/mux.py (unchanged since v0.18.8, §6.1) and
# gw/endpoint/socket.py (§2.4).
# --------------------------------------------------------------------------
MAX_OUTSTANDING_REQUESTS = 15
MAX_QUEUE_SIZE = 10
WORKER_CLOSE_WAIT = 0.01
START_REQUEST_WAIT = 0.1
MAX_MSG_SIZE = 52428800          # 50 MiB; larger inbound message -> close 1009

LAST_ENVELOPES = 50              # stats: raw frames kept
LAST_ENVELOPE_CHARS = 1048576    # stats: each kept frame truncated to this
KEEP_CLOSED_CONNECTIONS = 200    # stats: per-connection records kept
RECENT_FRAMES = 8                # stats: per connection, its last frames in
RECENT_FRAME_CHARS = 200         # ... each truncated to this

ERA_NAMES = ("v1a", "v1b", "v1c", "v2a", "v2b", "v2c", "v2d")


class Era:
    """Era-dependent behaviour (§1 era table)."""

    def __init__(self, name):
        self.name = name
        # V2 (v2.4.5+): IAM, in-band auth frame, registry, policy errors.
        self.v2 = name.startswith("v2")
        # v2.2.5+: structured error frames {"error":{message,type}} with id
        # (when known) and complete:true; V1a: bare string, no id (E1).
        self.structured = name != "v1a"
        # v2.4.0+: envelope `workspace`; flows are keyed (workspace, flow) and
        # "Invalid flow" names them.
        self.workspaces = name not in ("v1a", "v1b")
        # auth-ok field renamed in v2.6.2 (§3.2, Q10).
        self.auth_ok_field = (
            "default_workspace" if name in ("v2c", "v2d") else "workspace"
        )
        # Empty token = anonymous from v2.4.26 (§3.2).
        self.anonymous_possible = name in ("v2b", "v2c", "v2d")
        # Idle-timeout message: "" from v2.8.1 (§6.3); v2d is entirely
        # after that, earlier eras say "Timeout".
        self.timeout_message = "" if name == "v2d" else "Timeout"
        # text-load / document-load: V1 only (Q8: V2 -> unknown-service).
        self.loaders = not self.v2
        # GET /api/v1/i18n/packs/{lang}: v2.3.9+.  V1b (v2.2.5..v2.3.21)
        # straddles that tag; the mock gives V1b the route (its later
        # releases), V1a (<= v2.2.4) not.
        self.i18n = name != "v1a"
        # Metrics upstream unreachable: 502 "Bad Gateway: ..." from v2.4.3
        # (V1c and later), before that HTTPInternalServerError (500).
        self.metrics_502 = name not in ("v1a", "v1b")
        # Bulk import/export sockets read ?workspace= only from v2.5.8
        # (dispatcher params = query + match_info); before, match_info
        # only, so the workspace was always "default".  V2b (v2.4.26..
        # v2.6.1) straddles that tag; the mock honours it from V2b.
        self.bulk_workspace_query = name in ("v2b", "v2c", "v2d")


# --------------------------------------------------------------------------
# Service catalogue (§7.1)
# --------------------------------------------------------------------------

# Flow-scoped kinds the mock implements; HEAD registry `_FLOW_SERVICES`.
FLOW_SERVICES = (
    "agent", "text-completion", "prompt", "mcp-tool", "graph-rag",
    "document-rag", "embeddings", "graph-embeddings", "document-embeddings",
    "triples", "rows", "nlp-query", "structured-query", "structured-diag",
    "row-embeddings", "sparql", "reranker", "image-to-text",
)
LOADER_SERVICES = ("text-load", "document-load")     # V1 only, fire-and-forget

# Workspace-scoped kinds and their registered operations (HEAD registry,
# `_register_kind_op`).  V2 requires `request.operation` to be one of these
# (else unknown-service); V1 forwards anything to the "backend".
WORKSPACE_OPS = {
    "config": ("get", "list", "getvalues", "getvalues-all-ws", "config",
               "put", "delete"),
    "flow": ("list-blueprints", "get-blueprint", "list-flows", "get-flow",
             "put-blueprint", "delete-blueprint", "start-flow", "stop-flow"),
    "librarian": ("get-document-metadata", "get-document-content",
                  "stream-document", "list-documents", "list-processing",
                  "get-upload-status", "list-uploads", "add-document",
                  "remove-document", "update-document", "add-processing",
                  "remove-processing", "begin-upload", "upload-chunk",
                  "complete-upload", "abort-upload"),
    "knowledge": ("get-kg-core", "list-kg-cores", "put-kg-core",
                  "delete-kg-core", "load-kg-core", "unload-kg-core",
                  "get-de-core", "list-de-cores", "put-de-core",
                  "delete-de-core", "load-de-core"),
    "collection-management": ("list-collections", "update-collection",
                              "delete-collection"),
}

# `iam` (V2 only): registry keys are the bare operation names.
IAM_OPS = (
    "create-user", "list-users", "get-user", "update-user", "disable-user",
    "enable-user", "delete-user", "reset-password", "create-api-key",
    "list-api-keys", "revoke-api-key", "create-workspace",
    "list-my-workspaces", "list-workspaces", "get-workspace",
    "update-workspace", "disable-workspace", "rotate-signing-key", "login",
    "bootstrap", "bootstrap-status", "change-password", "whoami",
    "create-group", "get-group", "list-groups", "update-group",
    "delete-group", "add-group-member", "remove-group-member",
    "list-group-members", "add-group-grant", "remove-group-grant",
    "list-group-grants", "add-user-grant", "remove-user-grant",
    "list-user-grants", "resolve-effective-permissions",
)

# Default `type` of a backend (E5) error per service (§5.2 list).
SERVICE_ERROR_TYPE = {
    "agent": "agent-error", "text-completion": "llm-error",
    "prompt": "llm-error", "graph-rag": "graph-rag-error",
    "document-rag": "document-rag-error", "config": "config-error",
    "flow": "flow-error", "sparql": "sparql-query-error",
    "rows": "rows-query-error", "nlp-query": "nlp-query-error",
    "structured-query": "structured-query-error",
    "text-load": "load-error", "document-load": "load-error",
}

# Policy error messages (E4, §5.2).
POLICY_MESSAGES = {
    "auth-required": "auth failure",
    "access-denied": "access denied",
    "unknown-service": "unknown service",
    "workspace-not-found": "workspace not found",
}


# --------------------------------------------------------------------------
# Small helpers for realistic payloads (§7.2/§7.3)
# --------------------------------------------------------------------------

def iri(x):
    return {"t": "i", "i": x}


def lit(v):
    return {"t": "l", "v": v}


def vec(text, dim=8):
    """Deterministic pseudo-embedding of `text`."""
    h = hashlib.sha256(str(text).encode("utf-8")).digest()
    return [round((b - 128) / 128.0, 4) for b in h[:dim]]


def split_text(s, n):
    """Split s into n consecutive pieces (some may be empty); "".join == s."""
    n = max(1, int(n))
    k = len(s)
    return [s[i * k // n:(i + 1) * k // n] for i in range(n)]


def ntok(*texts):
    return sum(len(str(t).split()) for t in texts)


BLOB_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def make_blob(n):
    """n ASCII bytes: BLOB_ALPHABET repeated (blob[i] == ALPHABET[i % 36])."""
    reps = n // len(BLOB_ALPHABET) + 1
    return (BLOB_ALPHABET * reps)[:n]


class IdleTimeout(Exception):
    """The gateway's per-message idle timeout expired (§6.3)."""


class Drop(Exception):
    """_mock.drop: abort the whole WebSocket connection."""


# --------------------------------------------------------------------------
# Shared "backend" state: flows, config, documents, collections
# --------------------------------------------------------------------------

class State:

    def __init__(self, args, era):
        self.args = args
        self.era = era
        self.reset()

    def reset(self):
        a = self.args
        kinds = list(FLOW_SERVICES) + (
            list(LOADER_SERVICES) if self.era.loaders else [])
        self.kinds = [k for k in kinds if k not in a.exclude_kinds]
        # V1a/V1b have no workspaces: everything lives in "default".
        wss = a.workspaces if self.era.workspaces else ["default"]
        self.flows = {ws: {f: self.flow_def(f) for f in a.flows} for ws in wss}
        self.blueprints = {"document-rag+graph-rag": {
            "description": "Mock blueprint", "interfaces": self.kinds}}
        self.config_version = 1
        self.config = {ws: {"prompt": {"system": json.dumps(
            "You are a helpful assistant.")}} for ws in wss}
        self.documents = {ws: {"doc1": {
            "metadata": {
                "id": "doc1", "time": 1767225600, "kind": "text/plain",
                "title": "Mock document", "comments": "", "metadata": [],
                "tags": ["mock"], "parent-id": "", "document-type": "source",
            },
            "content": base64.b64encode(
                b"TrustGraph mock document.\n" * 64).decode("ascii"),
        }} for ws in wss}
        self.collections = {ws: {"default": {
            "collection": "default", "name": "Default",
            "description": "Default collection", "tags": []}} for ws in wss}

    def flow_def(self, flow_id, blueprint="document-rag+graph-rag",
                 description="Mock flow", parameters=None):
        interfaces = {}
        for k in self.kinds:
            if k in LOADER_SERVICES:
                interfaces[k] = {"flow": f"tg/flow/{k}:{flow_id}"}
            else:
                interfaces[k] = {
                    "request": f"tg/request/{k}:{flow_id}",
                    "response": f"tg/response/{k}:{flow_id}",
                }
        return {"blueprint-name": blueprint, "description": description,
                "parameters": parameters or {}, "interfaces": interfaces}

    def ws_key(self, ws):
        return ws if self.era.workspaces else "default"


# --------------------------------------------------------------------------
# Statistics (GET /_mock/stats)
# --------------------------------------------------------------------------

# connections_total/_open  successful upgrades / currently open sockets
# max_connections_open      the most sockets open at once (since the last reset)
# auth_ok, auth_failed      V2 auth replies sent
# http_401                  V1 upgrades refused (bad/missing ?token=)
# requests_received         frames having both `id` and `request`
# requests_queued           ... that passed validation and entered the queue
#                           (including one currently blocked in q.put)
# requests_rejected         ... answered inline with a policy error (E4)
# requests_started          tasks started by the worker loop
# requests_completed        final frame (complete:true / error) produced
# requests_abandoned        cut short by a socket close / drop
# frames_in/out, error_frames_sent (frames with a top-level "error" key)
# max_window                max len of the gateway's worker list (<= 16)
# reader_stalls             reader blocked on the full queue beyond the
#                           window (span > 16); 0 for a compliant client
# queue_full_waits          every blocking q.put, incl. harmless burst waits
# max_inflight_per_connection  max queued-or-running, unfinished requests
# max_span_per_connection   max (newest received - oldest unfinished + 1):
#                           the §6.2 quantity a bridge must keep <= 16
# max_queue_depth, oversize_closes (1009), query_tokens_seen /
# auth_headers_seen (upgrades with ?token= / Authorization), drops,
# server_closes
GLOBAL_COUNTERS = (
    "connections_total", "connections_open", "auth_ok", "auth_failed",
    "http_401", "requests_received", "requests_queued", "requests_rejected",
    "requests_started", "requests_completed", "requests_abandoned",
    "frames_in", "frames_out", "error_frames_sent", "max_window",
    "reader_stalls", "queue_full_waits", "max_inflight_per_connection",
    "max_span_per_connection", "max_queue_depth", "oversize_closes",
    "query_tokens_seen", "auth_headers_seen", "drops", "server_closes",
    "max_connections_open",
)


class Stats:

    def __init__(self):
        self.conns = collections.OrderedDict()     # id -> Connection
        self.next_conn_id = 1
        self.passthrough = PassStats()
        self.reset()

    def reset(self):
        for k in GLOBAL_COUNTERS:
            setattr(self, k, 0)
        self.last_query_token = None
        self.last_envelopes = collections.deque(maxlen=LAST_ENVELOPES)
        self.passthrough.reset()
        # Forget closed connections; zero the counters of open ones.
        for cid in [c for c, conn in self.conns.items() if not conn.open]:
            del self.conns[cid]
        self.connections_open = 0
        for conn in self.conns.values():
            conn.reset_counters()
            self.connections_open += 1
        self.max_connections_open = self.connections_open

    def add_conn(self, conn):
        self.conns[conn.cid] = conn
        closed = [c for c, x in self.conns.items() if not x.open]
        while len(self.conns) > KEEP_CLOSED_CONNECTIONS and closed:
            del self.conns[closed.pop(0)]

    def snapshot(self):
        d = {k: getattr(self, k) for k in GLOBAL_COUNTERS}
        d["last_query_token"] = self.last_query_token
        d["last_envelopes"] = list(self.last_envelopes)
        d["frames_by_connection"] = {
            str(c.cid): c.frames_in for c in self.conns.values()}
        d["connections"] = [c.snapshot() for c in self.conns.values()]
        return d


# --------------------------------------------------------------------------
# _mock controls
# --------------------------------------------------------------------------

class MockControls:
    """``request._mock`` (a key the real gateway's translators ignore).

    parts: int        streamed parts (default 3 when streaming / for
                      inherently multi-frame operations)
    delay: float      seconds between frames
    first_delay: float seconds before the first frame
    never: bool       never completes (emits `after` partial frames first)
    error: {shape: E1..E6, type, message, after}
    size: int         final payload gets "blob" of that many ASCII bytes
    drop: bool        abort the TCP connection after `after` partial frames
    after: int        partial frames before drop / timeout / never
    echo: bool        final = {"echo": request, "envelope": envelope, ...}
    timeout: bool     gateway idle-timeout error (E5 gateway-error)
    """

    def __init__(self, request):
        m = request.get("_mock") if isinstance(request, dict) else None
        m = m if isinstance(m, dict) else {}
        self.raw = m
        self.parts = self._int(m.get("parts"), None)
        self.delay = self._float(m.get("delay"), 0.0)
        self.first_delay = self._float(m.get("first_delay"), 0.0)
        self.never = bool(m.get("never"))
        self.drop = bool(m.get("drop"))
        self.timeout = bool(m.get("timeout"))
        self.echo = bool(m.get("echo"))
        self.size = self._int(m.get("size"), None)
        self.part_size = self._int(m.get("part_size"), None)
        bad = m.get("bad_frame")
        self.bad_frame = bad if bad in ("utf8", "json", "nonobject") else None
        self.after = max(0, self._int(m.get("after"), 0))
        err = m.get("error")
        if err is not None and not isinstance(err, dict):
            err = {}                      # "error": true -> defaults
        self.error = err
        if err is not None:
            self.error_after = max(0, self._int(err.get("after"), 0))
            self.error_shape = str(err.get("shape", "E5")).upper()

    @staticmethod
    def _int(v, default):
        try:
            return int(v) if v is not None else default
        except (TypeError, ValueError):
            return default

    @staticmethod
    def _float(v, default):
        try:
            return max(0.0, float(v)) if v is not None else default
        except (TypeError, ValueError):
            return default


# --------------------------------------------------------------------------
# Per-request record
# --------------------------------------------------------------------------

class Req:

    def __init__(self, id, workspace, flow, service, request, raw, seq):
        self.id = id
        self.workspace = workspace
        self.flow = flow
        self.service = service
        self.request = request
        self.raw = raw              # frame exactly as received (str/bytes)
        self.seq = seq
        self.finished = False


# --------------------------------------------------------------------------
# Service "backends": each returns the list of (payload, is_final) frames a
# successful call produces, in HEAD wire format (§7.3).  Exceptions raised
# here (e.g. KeyError for a missing required field, like the translators)
# become E5 gateway-error frames (§4.1 step 14).
# --------------------------------------------------------------------------

class Ctx:

    def __init__(self, conn, req, parts):
        self.conn = conn
        self.state = conn.state
        self.era = conn.era
        self.req = req.request
        self.workspace = req.workspace or "default"
        self.flow = req.flow
        self.service = req.service
        r = req.request if isinstance(req.request, dict) else {}
        self.streaming = bool(r.get("streaming"))
        self.parts = max(1, parts) if parts is not None else 3
        # _mock.size: the main generated text (text-completion `response`,
        # prompt `text`, agent answer, RAG answer) becomes a blob of that
        # many bytes, streamed across the parts like any other text.
        self.blob = None

    def text(self, default):
        return default if self.blob is None else self.blob


def svc_text_completion(c):
    system, prompt = c.req["system"], c.req["prompt"]
    text = c.text(prompt)
    usage = {"in_token": ntok(system, prompt), "out_token": ntok(prompt),
             "model": "mock"}
    if not c.streaming:
        return [({"response": text, **usage, "end_of_stream": True}, True)]
    frames = [({"response": p, "end_of_stream": False}, False)
              for p in split_text(text, c.parts)]
    frames.append(({"response": "", **usage, "end_of_stream": True}, True))
    return frames


def svc_prompt(c):
    pid = c.req.get("id")
    terms = dict(c.req.get("terms", {}))
    if "variables" in c.req:
        terms.update({k: json.dumps(v) for k, v in c.req["variables"].items()})
    text = c.text(
        f"Mock response to prompt {pid}: {json.dumps(terms, sort_keys=True)}")
    usage = {"in_token": ntok(text), "out_token": ntok(text), "model": "mock"}
    if not c.streaming:
        return [({"text": text, "end_of_stream": True, **usage}, True)]
    frames = [({"text": p, "end_of_stream": False}, False)
              for p in split_text(text, c.parts)]
    frames.append(({"text": "", "end_of_stream": True, **usage}, True))
    return frames


def _explain_triples(query):
    return [{"s": iri("urn:trustgraph:question:mock"),
             "p": iri("http://www.w3.org/2000/01/rdf-schema#label"),
             "o": lit(str(query))}]


def svc_agent(c):
    q = c.req["question"]
    answer = c.text(f"Mock answer to: {q}")
    usage = {"in_token": ntok(q), "out_token": ntok(answer), "model": "mock"}
    frames = [
        ({"message_type": "thought", "content": f"I should look up: {q}",
          "end_of_message": True, "end_of_dialog": False,
          "message_id": "m1"}, False),
        ({"message_type": "observation",
          "content": "Mock observation: 3 facts found.",
          "end_of_message": True, "end_of_dialog": False,
          "message_id": "m2"}, False),
        ({"message_type": "explain",
          "explain_id": f"urn:trustgraph:agent:{uuid.uuid4()}",
          "explain_graph": "urn:graph:retrieval",
          "explain_triples": _explain_triples(q),
          "end_of_message": False, "end_of_dialog": False}, False),
    ]
    if not c.streaming:
        frames.append(({"message_type": "answer", "content": answer,
                        "end_of_message": True, "end_of_dialog": True,
                        "message_id": "m3", **usage}, True))
        return frames
    for p in split_text(answer, c.parts):
        frames.append(({"message_type": "answer", "content": p,
                        "end_of_message": False, "end_of_dialog": False},
                       False))
        if not p:   # the translator omits empty content
            del frames[-1][0]["content"]
    frames.append(({"message_type": "answer", "end_of_message": True,
                    "end_of_dialog": True, "message_id": "m3", **usage},
                   True))
    return frames


def svc_rag(c):
    q = c.req["query"]
    kind = "graph" if c.service == "graph-rag" else "document"
    answer = c.text(f"Mock {kind} RAG answer to: {q}")
    usage = {"in_token": ntok(q) * 20, "out_token": ntok(answer),
             "model": "mock"}
    extra = {}
    if c.service == "graph-rag":
        extra["sources"] = [{"uri": "http://example.org/doc1",
                             "title": "Mock document"}]
    explain = ({"message_type": "explain", "response": "",
                "explain_id": f"urn:trustgraph:{kind}-rag:{uuid.uuid4()}",
                "explain_graph": "urn:graph:retrieval",
                "explain_triples": _explain_triples(q),
                "end_of_stream": False, "end_of_session": False}, False)
    if not c.streaming:
        # HEAD: explain frame(s) then one frame with both flags (Q15).
        return [explain,
                ({"message_type": "chunk", "response": answer,
                  "end_of_stream": True, "end_of_session": True,
                  **usage, **extra}, True)]
    frames = [explain]
    pieces = split_text(answer, c.parts)
    for i, p in enumerate(pieces):
        # end_of_stream:true on the last text chunk, which is NOT final
        # (TL;DR 1, §5.3).
        frames.append(({"message_type": "chunk", "response": p,
                        "end_of_stream": i == len(pieces) - 1,
                        "end_of_session": False}, False))
    frames.append(({"message_type": "chunk", "response": "",
                    "end_of_stream": False, "end_of_session": True,
                    **usage, **extra}, True))
    return frames


def svc_embeddings(c):
    if "texts" in c.req or "text" not in c.req:
        texts = c.req["texts"]
        texts = [texts] if isinstance(texts, str) else list(texts)
    else:                               # early v2.1 / V1 single `text`
        texts = [c.req["text"]]
    return [({"vectors": [vec(t) for t in texts]}, True)]


def _limit(c, default=3):
    try:
        return max(0, min(int(c.req.get("limit", default)), default))
    except (TypeError, ValueError):
        return default


def svc_graph_embeddings(c):
    n = _limit(c)
    return [({"entities": [{"entity": iri(f"http://example.org/entity/{i}"),
                            "score": round(0.9 - 0.1 * i, 3)}
                           for i in range(n)]}, True)]


def svc_document_embeddings(c):
    n = _limit(c)
    return [({"chunks": [{"chunk_id": f"doc1/c{i}",
                          "score": round(0.85 - 0.1 * i, 3)}
                         for i in range(n)]}, True)]


def svc_row_embeddings(c):
    c.req["schema_name"]
    n = _limit(c)
    return [({"matches": [{"index_name": c.req.get("index_name", "name"),
                           "index_value": [f"value{i}"], "text": f"row {i}",
                           "score": round(0.7 - 0.1 * i, 3)}
                          for i in range(n)]}, True)]


def _triples(c, start, n):
    s = c.req.get("s") or iri("http://example.org/subject")
    p = c.req.get("p")
    o = c.req.get("o")
    out = []
    for i in range(start, start + n):
        t = {"s": s,
             "p": p or iri(f"http://example.org/predicate/{i}"),
             "o": o or lit(f"value {i}")}
        out.append(t)
    return out


def svc_triples(c):
    try:
        batch = max(1, min(int(c.req.get("batch-size", 20)), 2))
    except (TypeError, ValueError):
        batch = 2
    if not c.streaming:
        return [({"response": _triples(c, 0, 3)}, True)]
    # Streaming: one frame per batch, no end flag in the payload; only
    # `complete` marks the last one (Q17).
    return [({"response": _triples(c, i * batch, batch)}, i == c.parts - 1)
            for i in range(c.parts)]


def svc_sparql(c):
    q = str(c.req["query"])
    head = q.strip().split(None, 1)[0].upper() if q.strip() else "SELECT"
    if head == "ASK":
        return [({"query-type": "ask", "ask-result": True}, True)]
    if head in ("CONSTRUCT", "DESCRIBE"):
        return [({"query-type": head.lower(),
                  "triples": _triples(c, 0, 2)}, True)]

    def bindings(start, n):
        return [{"values": [iri(f"http://example.org/s{i}"),
                            iri("http://example.org/p"),
                            lit(f"o{i}")]} for i in range(start, start + n)]
    if not c.streaming:
        return [({"query-type": "select", "variables": ["s", "p", "o"],
                  "bindings": bindings(0, 3)}, True)]
    return [({"query-type": "select", "variables": ["s", "p", "o"],
              "bindings": bindings(i * 2, 2)}, i == c.parts - 1)
            for i in range(c.parts)]


def svc_rows(c):
    c.req["query"]
    return [({"data": {"mock": [{"name": "Alice"}, {"name": "Bob"}]},
              "errors": [], "extensions": {}}, True)]


def svc_nlp_query(c):
    q = c.req["question"]
    return [({"graphql_query": "{ mock { name } }", "variables": {},
              "detected_schemas": ["mock"], "confidence": 0.9,
              "question": q}, True)]


def svc_structured_query(c):
    c.req["question"]
    return [({"data": {"mock": [{"name": "Alice"}]}, "errors": []}, True)]


def svc_structured_diag(c):
    op = c.req["operation"]
    return [({"operation": op, "detected-type": "csv", "confidence": 0.9},
             True)]


def svc_reranker(c):
    docs = c.req.get("documents", [])
    queries = c.req.get("queries", [{"query_id": "q"}])
    res = []
    for q in queries:
        for i, d in enumerate(docs):
            res.append({"document_id": d.get("document_id", str(i)),
                        "query_id": q.get("query_id", ""),
                        "score": round(0.9 - 0.05 * i, 3)})
    return [({"results": res[:_limit(c, 10)]}, True)]


def svc_image_to_text(c):
    c.req["image"]
    return [({"description": "A mock image.", "in_token": 100,
              "out_token": 4, "model": "mock"}, True)]


def svc_mcp_tool(c):
    name = c.req["name"]
    return [({"text": f"Mock result of tool {name}: "
                      f"{json.dumps(c.req.get('parameters', {}), sort_keys=True)}"},
             True)]


def svc_loader(c):
    # gw/dispatch/sender.py: publish, then {} with complete:true.
    return [({}, True)]


class BackendError(Exception):
    """A backend-reported error -> E5 with that type (§4.1 step 15)."""

    def __init__(self, type_, message):
        super().__init__(message)
        self.type = type_
        self.message = message


def _op(c):
    return c.req.get("operation", "")


def svc_config(c):
    st, op = c.state, _op(c)
    store = st.config.setdefault(st.ws_key(c.workspace), {})
    if op == "get":
        vals = []
        for k in c.req.get("keys", []):
            v = store.get(k.get("type"), {}).get(k.get("key"))
            if v is not None:
                vals.append({"type": k["type"], "key": k["key"], "value": v})
        return [({"version": st.config_version, "values": vals}, True)]
    if op == "list":
        return [({"directory": sorted(store.get(c.req.get("type"), {}))},
                 True)]
    if op == "getvalues":
        t = c.req.get("type")
        return [({"values": [{"type": t, "key": k, "value": v} for k, v in
                             sorted(store.get(t, {}).items())]}, True)]
    if op == "getvalues-all-ws":
        t = c.req.get("type")
        vals = []
        for ws, s in sorted(st.config.items()):
            vals += [{"workspace": ws, "type": t, "key": k, "value": v}
                     for k, v in sorted(s.get(t, {}).items())]
        return [({"values": vals}, True)]
    if op == "config":
        return [({"config": store, "version": st.config_version}, True)]
    if op == "put":
        for v in c.req.get("values", []):
            store.setdefault(v["type"], {})[v["key"]] = v.get("value")
        st.config_version += 1
        return [({}, True)]
    if op == "delete":
        for k in c.req.get("keys", []):
            store.get(k.get("type"), {}).pop(k.get("key"), None)
        st.config_version += 1
        return [({}, True)]
    raise BackendError("config-error", f"Bad operation: {op}")


def svc_flow(c):
    st, op = c.state, _op(c)
    flows = st.flows.setdefault(st.ws_key(c.workspace), {})
    # ≤ v1.8.12 used *-class names (§7.3); accept both spellings.
    op = {"list-classes": "list-blueprints", "get-class": "get-blueprint",
          "put-class": "put-blueprint", "delete-class": "delete-blueprint",
          }.get(op, op)
    bp_name = c.req.get("blueprint-name", c.req.get("class-name"))
    if op == "list-flows":
        return [({"flow-ids": sorted(flows)}, True)]
    if op == "get-flow":
        fid = c.req.get("flow-id")
        if fid not in flows:
            raise BackendError("flow-error", f"Flow {fid} not known")
        return [({"flow": json.dumps(flows[fid])}, True)]
    if op == "list-blueprints":
        return [({"blueprint-names": sorted(st.blueprints)}, True)]
    if op == "get-blueprint":
        if bp_name not in st.blueprints:
            raise BackendError("flow-error", f"Blueprint {bp_name} not known")
        return [({"blueprint-definition": json.dumps(st.blueprints[bp_name])},
                 True)]
    if op == "put-blueprint":
        d = c.req.get("blueprint-definition", c.req.get("class-definition"))
        st.blueprints[bp_name] = json.loads(d) if isinstance(d, str) else d
        return [({}, True)]
    if op == "delete-blueprint":
        st.blueprints.pop(bp_name, None)
        return [({}, True)]
    if op == "start-flow":
        fid = c.req.get("flow-id")
        if not fid:
            raise BackendError("flow-error", "Flow ID required")
        if fid in flows:
            raise BackendError("flow-error", "Flow already exists")
        flows[fid] = st.flow_def(fid, bp_name or "document-rag+graph-rag",
                                 c.req.get("description", ""),
                                 c.req.get("parameters"))
        return [({}, True)]
    if op == "stop-flow":
        fid = c.req.get("flow-id")
        if fid not in flows:
            raise BackendError("flow-error", "Flow not found")
        del flows[fid]
        return [({}, True)]
    raise BackendError("flow-error", f"Bad operation: {op}")


def svc_librarian(c):
    st, op = c.state, _op(c)
    docs = st.documents.setdefault(st.ws_key(c.workspace), {})

    def doc(field="document-id"):
        did = c.req.get(field)
        if did not in docs:
            raise BackendError("request-error", "Document not found")
        return docs[did]

    if op == "list-documents":
        return [({"document-metadatas": [d["metadata"] for d in
                                         docs.values()]}, True)]
    if op == "get-document-metadata":
        return [({"document-metadata": doc()["metadata"]}, True)]
    if op == "get-document-content":
        return [({"content": doc()["content"]}, True)]
    if op == "stream-document":
        data = base64.b64decode(doc()["content"])
        try:
            size = max(1, int(c.req.get("chunk-size", 0)))
        except (TypeError, ValueError):
            size = 0
        if not size or "chunk-size" not in c.req:
            size = max(1, math.ceil(len(data) / c.parts))
        chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        # base64 content chunks; no payload end flag, only `complete` (Q17).
        return [({"content": base64.b64encode(ch).decode("ascii")},
                 i == len(chunks) - 1) for i, ch in enumerate(chunks)]
    if op == "add-document":
        md = dict(c.req.get("document-metadata", {}))
        did = md.get("id") or f"doc-{uuid.uuid4()}"
        md["id"] = did
        docs[did] = {"metadata": md, "content": c.req.get("content", "")}
        return [({}, True)]
    if op == "update-document":
        md = c.req.get("document-metadata", {})
        if md.get("id") in docs:
            docs[md["id"]]["metadata"].update(md)
        return [({}, True)]
    if op == "remove-document":
        doc()
        del docs[c.req["document-id"]]
        return [({}, True)]
    if op == "list-processing":
        return [({"processing-metadatas": []}, True)]
    if op == "list-uploads":
        return [({"upload-sessions": []}, True)]
    if op == "begin-upload":
        return [({"upload-id": str(uuid.uuid4()), "chunk-size": 2097152,
                  "total-chunks": 1}, True)]
    return [({}, True)]


def svc_knowledge(c):
    op = _op(c)
    cid = c.req.get("id", "core1")
    meta = {"id": cid, "root": "", "collection": c.req.get("collection",
                                                           "default")}
    if op == "list-kg-cores":
        return [({"ids": ["core1"]}, True)]
    if op == "list-de-cores":
        return [({"ids": ["core1"]}, True)]
    if op == "get-kg-core":
        frames = [({"triples": {"metadata": meta, "triples":
                                _triples(c, i * 2, 2)}}, False)
                  for i in range(c.parts)]
        frames.append(({"graph-embeddings": {"metadata": meta, "entities": [
            {"entity": iri("http://example.org/entity/0"),
             "vectors": [vec("entity0")]}]}}, False))
        frames.append(({"eos": True}, True))
        return frames
    if op == "get-de-core":
        frames = [({"document-embeddings": {"metadata": meta, "chunks": [
            {"chunk_id": f"doc1/c{i}", "vectors": [vec(i)]}]}}, False)
            for i in range(c.parts)]
        frames.append(({"eos": True}, True))
        return frames
    if op in WORKSPACE_OPS["knowledge"] or not c.era.v2:
        return [({}, True)]
    raise BackendError("request-error", f"Bad operation: {op}")


def svc_collection_management(c):
    st, op = c.state, _op(c)
    cols = st.collections.setdefault(st.ws_key(c.workspace), {})
    if op == "list-collections":
        return [({"collections": list(cols.values())}, True)]
    if op == "update-collection":
        name = c.req["collection"]
        col = cols.setdefault(name, {"collection": name, "name": name,
                                     "description": "", "tags": []})
        for k in ("name", "description", "tags"):
            if k in c.req:
                col[k] = c.req[k]
        return [({"collections": [col]}, True)]
    if op == "delete-collection":
        cols.pop(c.req.get("collection"), None)
        return [({}, True)]
    raise BackendError("request-error", f"Bad operation: {op}")


def svc_iam(c):
    op = _op(c)
    ident = c.conn.identity or {}
    if op == "whoami":
        return [({"user": {"id": ident.get("handle"),
                           "username": ident.get("handle"),
                           "workspace": ident.get("default_workspace"),
                           "roles": ["admin"], "enabled": True}}, True)]
    if op in ("list-my-workspaces", "list-workspaces"):
        return [({"workspaces": [{"id": w, "name": w, "enabled": True}
                                 for w in c.state.args.workspaces]}, True)]
    pt = c.conn.server.passthrough
    if op == "bootstrap-status":
        return [({"bootstrap_available": pt.bootstrap_available}, True)]
    if op == "login":
        identity = pt.iam_login(c.req.get("username", ""),
                                c.req.get("password", ""),
                                c.req.get("workspace", ""))
        if identity is None:
            pt.stats.logins_failed += 1
            raise BackendError("auth-failed", "auth failure")
        token, expires = pt.issue_jwt(identity)
        pt.stats.logins_ok += 1
        pt.stats.last_jwt = token
        return [({"jwt": token, "jwt_expires": expires,
                  "bootstrap_available": False}, True)]
    return [({}, True)]


SERVICES = {
    "agent": svc_agent, "text-completion": svc_text_completion,
    "prompt": svc_prompt, "graph-rag": svc_rag, "document-rag": svc_rag,
    "embeddings": svc_embeddings, "graph-embeddings": svc_graph_embeddings,
    "document-embeddings": svc_document_embeddings,
    "row-embeddings": svc_row_embeddings, "triples": svc_triples,
    "sparql": svc_sparql, "rows": svc_rows, "nlp-query": svc_nlp_query,
    "structured-query": svc_structured_query,
    "structured-diag": svc_structured_diag, "reranker": svc_reranker,
    "image-to-text": svc_image_to_text, "mcp-tool": svc_mcp_tool,
    "text-load": svc_loader, "document-load": svc_loader,
    "config": svc_config, "flow": svc_flow, "librarian": svc_librarian,
    "knowledge": svc_knowledge,
    "collection-management": svc_collection_management, "iam": svc_iam,
}


# --------------------------------------------------------------------------
# One WebSocket connection = SocketEndpoint.listener + Mux (§2.4, §6.1)
# --------------------------------------------------------------------------

class Connection:

    def __init__(self, server, ws, transport, query_token, auth_header):
        self.server = server
        self.args = server.args
        self.era = server.era
        self.state = server.state
        self.stats = server.stats
        self.ws = ws
        self.transport = transport
        self.cid = self.stats.next_conn_id
        self.stats.next_conn_id += 1
        self.query_token = query_token
        self.auth_header = auth_header
        self.open = True
        self.close_code = None
        self.identity = None                 # V2: set by auth-ok (§3.2)
        self.last_token = None               # --echo-token quotes it back
        self.recent_frames = collections.deque(maxlen=RECENT_FRAMES)
        self.q = asyncio.Queue(maxsize=MAX_QUEUE_SIZE)
        self.running = True
        self.workers = []                    # Mux.run's worker list
        self.window_full = False             # worker waiting for capacity
        self.tasks = set()                   # all request tasks (refs)
        self.unfinished = {}                 # seq -> Req (for span)
        self.next_seq = 0
        self.listener_task = None
        self.worker_task = None
        self.closing_task = None
        self.oversize = False
        self.done = asyncio.Event()
        self.torn_down = False
        self.reset_counters()

    def reset_counters(self):
        self.frames_in = 0
        self.frames_out = 0
        self.requests_received = 0
        self.requests_queued = 0
        self.requests_rejected = 0
        self.requests_started = 0
        self.requests_completed = 0
        self.requests_abandoned = 0
        self.max_window = len(self.workers) if hasattr(self, "workers") else 0
        self.max_inflight = 0
        self.max_span = 0
        self.max_queue_depth = 0
        self.reader_stalls = 0
        self.queue_full_waits = 0
        self.reader_stalled = False

    def snapshot(self):
        return {
            "id": self.cid, "open": self.open, "era": self.era.name,
            "query_token": self.query_token, "auth_header": self.auth_header,
            "last_auth_token": getattr(self, "last_token", None),
            "authenticated": self.identity is not None,
            "identity": self.identity,
            "frames_in": self.frames_in, "frames_out": self.frames_out,
            "requests_received": self.requests_received,
            "requests_queued": self.requests_queued,
            "requests_rejected": self.requests_rejected,
            "requests_started": self.requests_started,
            "requests_completed": self.requests_completed,
            "requests_abandoned": self.requests_abandoned,
            "inflight": len(self.unfinished),
            "window": len(self.workers),
            "queue_depth": self.q.qsize(),
            "max_window": self.max_window,
            "max_inflight": self.max_inflight,
            "max_span": self.max_span,
            "max_queue_depth": self.max_queue_depth,
            "reader_stalls": self.reader_stalls,
            "queue_full_waits": self.queue_full_waits,
            "reader_stalled": self.reader_stalled,
            "window_full": self.window_full,
            "close_code": self.close_code,
            "recent_frames": list(self.recent_frames),
        }

    # ---- sending ---------------------------------------------------------

    async def send(self, obj):
        self.frames_out += 1
        self.stats.frames_out += 1
        if isinstance(obj, dict) and "error" in obj:
            self.stats.error_frames_sent += 1
        # aiohttp's default json.dumps, exactly like ws.send_json in the
        # gateway (same separators; key order as built by the caller).
        await self.ws.send_json(obj)

    def gateway_error(self, id, message, with_id=True):
        """Top-level error frame as Mux.request_task / Mux.receive build it:
        V1a bare string without id (E1); v2.2.5+ structured (E2 / E3)."""
        if not self.era.structured:
            return {"error": message}
        frame = {"error": {"message": message, "type": "error"},
                 "complete": True}
        if with_id:
            frame["id"] = id
        return frame

    # ---- lifecycle -------------------------------------------------------

    async def serve(self):
        self.worker_task = asyncio.create_task(self.guard(self.run(), "worker"))
        self.listener_task = asyncio.create_task(
            self.guard(self.listener(), "listener"))
        try:
            await self.done.wait()
            if self.closing_task is not None:
                # A server-initiated close is in progress: let it finish the
                # close handshake before the handler returns.
                await asyncio.shield(self.closing_task)
        finally:
            self.teardown()
            if not self.ws.closed:
                try:
                    await self.ws.close()
                except Exception:
                    pass

    async def guard(self, coro, what):
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %d: uncaught exception in %s",
                          self.cid, what)
        finally:
            self.done.set()

    def teardown(self):
        """Stop everything belonging to this connection.  The real gateway
        lets in-flight backend work run to completion and discards its
        output (Q23); cancelling is indistinguishable for the client."""
        if self.torn_down:
            return
        self.torn_down = True
        self.running = False
        me = asyncio.current_task()
        for t in [self.listener_task, self.worker_task, *self.tasks]:
            if t is not None and t is not me and not t.done():
                t.cancel()
        self.done.set()
        if self.open:
            self.open = False
            self.stats.connections_open -= 1
            # Our own close code if we closed first (e.g. 1009), else the
            # peer's.
            self.close_code = 1009 if self.oversize else self.ws.close_code
        self.server.conns.discard(self)

    def abort(self):
        """Abrupt transport close, no close frame (gateway crash, §2.4)."""
        self.stats.drops += 1
        if self.transport is not None:
            self.transport.abort()
        self.teardown()

    async def close_from_server(self, code):
        self.stats.server_closes += 1
        self.running = False
        try:
            await self.ws.close(code=code, message=b"going away")
        except Exception as e:
            log.info("connection %d: close failed: %r", self.cid, e)
        finally:
            self.done.set()

    # ---- reader: SocketEndpoint.listener ---------------------------------

    async def listener(self):
        # Frames are handled strictly one at a time; receive() may block on
        # the queue (reader stall, §6.1 / Q2), during which nothing at all
        # is read from the socket: no auth frames, no pings, no CLOSE.
        async for msg in self.ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):   # Q30
                await self.receive(msg)
            else:
                # WSMsgType.ERROR, e.g. an oversize message: aiohttp has
                # already sent close 1009 (§2.4, Q7).
                code = getattr(msg.data, "code", None)
                if code == 1009:
                    self.oversize = True
                    self.stats.oversize_closes += 1
                log.info("connection %d: %s (%r), closing", self.cid,
                         msg.type, msg.data)
                break

    def record_frame(self, msg):
        self.frames_in += 1
        self.stats.frames_in += 1
        raw = msg.data
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        self.recent_frames.append(raw[:RECENT_FRAME_CHARS])
        if len(raw) > LAST_ENVELOPE_CHARS:
            raw = raw[:LAST_ENVELOPE_CHARS]
        self.stats.last_envelopes.append(raw)

    async def receive(self, msg):
        self.record_frame(msg)
        if self.era.v2:
            await self.receive_v2(msg)
        else:
            await self.receive_v1(msg)

    def count_received(self):
        self.requests_received += 1
        self.stats.requests_received += 1

    def count_rejected(self):
        self.requests_rejected += 1
        self.stats.requests_rejected += 1

    async def receive_v1(self, msg):
        # Mux.receive @v1.9.4 (V1a) / @v2.2.5 (V1b) / @v2.4.0 (V1c).  The
        # statements mirror the original so that odd inputs (JSON arrays,
        # strings, numbers) fail with the same exception text (§4.1).
        request_id = None
        try:
            data = json.loads(msg.data)
            if self.era.structured:
                request_id = data.get("id")
            if "request" not in data:
                raise RuntimeError("Bad message")
            if "id" not in data:
                raise RuntimeError("Bad message")
            self.count_received()
            id = data["id"]
            workspace = (data.get("workspace", "default")
                         if self.era.workspaces else None)
            flow = data.get("flow")
            service = data["service"]     # KeyError -> "'service'"
            request = data["request"]
            await self.enqueue(Req(id, workspace, flow, service, request,
                                   msg.data, self.new_seq()))
        except Exception as e:
            log.info("connection %d: receive exception: %r", self.cid, e)
            await self.send(self.gateway_error(request_id, str(e),
                                               with_id=bool(request_id)))

    async def receive_v2(self, msg):
        # Mux.receive @HEAD (§3.2, §4.1 steps 1-11).
        request_id = None
        try:
            data = json.loads(msg.data)
            if isinstance(data, dict) and data.get("type") == "auth":
                await self.handle_auth(data)
                return
            request_id = data.get("id")
            if "request" not in data:
                raise RuntimeError("Bad message")
            if "id" not in data:
                raise RuntimeError("Bad message")
            self.count_received()

            if self.identity is None:
                self.count_rejected()
                await self.send(self.policy_error(request_id,
                                                  "auth-required"))
                return

            # Registry lookup (HEAD): flow present -> flow-service:<kind>;
            # iam -> bare op; otherwise <kind>:<operation>.
            service = data.get("service", "")
            inner = data.get("request") or {}
            inner_op = (inner.get("operation", "")
                        if isinstance(inner, dict) else "")
            if data.get("flow"):
                known = service in FLOW_SERVICES
            elif service == "iam":
                known = bool(inner_op) and inner_op in IAM_OPS
            else:
                known = (bool(inner_op) and
                         inner_op in WORKSPACE_OPS.get(service, ()))
            if not known:
                self.count_rejected()
                await self.send(self.policy_error(request_id,
                                                  "unknown-service"))
                return

            # enforce_workspace: default-fill from the identity, then it
            # must be a workspace the gateway knows (v2.4.11+).
            requested = data.get("workspace", "")
            target = requested or self.identity["default_workspace"]
            data["workspace"] = target
            if target not in self.args.workspaces:
                self.count_rejected()
                await self.send(self.policy_error(request_id,
                                                  "workspace-not-found"))
                return

            # Test control: an E4 with after == 0 is produced here, inline
            # in the reader, as the real policy errors are (IAM deny etc.);
            # it never enters the queue or the window.
            mc = MockControls(inner)
            if (mc.error is not None and mc.error_shape == "E4"
                    and mc.error_after == 0):
                self.count_rejected()
                if self.args.auth_delay:
                    await asyncio.sleep(self.args.auth_delay)
                await self.send(self.mock_error_frame(
                    request_id, service, mc.error))
                return

            # IAM authorise would run here, inline (Q29).
            if self.args.auth_delay:
                await asyncio.sleep(self.args.auth_delay)

            if service == "iam" and isinstance(data.get("request"), dict):
                data["request"]["actor"] = self.identity["handle"]

            await self.enqueue(Req(data["id"], target, data.get("flow"),
                                   data["service"], data["request"],
                                   msg.data, self.new_seq()))
        except Exception as e:
            log.info("connection %d: receive exception: %r", self.cid, e)
            await self.send(self.gateway_error(request_id, str(e),
                                               with_id=bool(request_id)))

    def policy_error(self, id, type_, message=None):
        # E4 key order as in Mux.receive: id, error, complete.
        if self.args.echo_token and self.last_token is not None:
            message = "%s (token %s)" % (
                message or POLICY_MESSAGES.get(type_, type_), self.last_token)
        return {"id": id,
                "error": {"message": message or POLICY_MESSAGES.get(
                    type_, type_), "type": type_},
                "complete": True}

    async def handle_auth(self, data):
        """Mux._handle_auth_frame + IamAuth.authenticate (§3.2)."""
        tok = data.get("token", "")
        token = f"{tok}".strip() if tok else ""
        self.last_token = token
        if self.args.auth_delay:
            await asyncio.sleep(self.args.auth_delay)   # IAM round trip
        if not token:
            # Anonymous: v2.4.26+, and only under the no-auth regime.
            identity = self.server.anonymous_identity()
        else:
            # API key / JWT shape: accepted if configured (--token), issued
            # by this mock (login / bootstrap), or, with no --token at all,
            # any well-formed one; malformed -> failure even under no-auth
            # (Q11).
            identity = self.server.resolve_credential(token)
        if identity is None:
            # Failure keeps the socket open and any previous identity (Q9).
            self.stats.auth_failed += 1
            error = "auth failure"
            if self.args.echo_token:
                error += " for token %s (%s)" % (token, quote(token, safe=""))
            await self.send({"type": "auth-failed", "error": error})
            return
        self.identity = identity
        self.stats.auth_ok += 1
        await self.send({"type": "auth-ok",
                         self.era.auth_ok_field: identity["default_workspace"]})

    def new_seq(self):
        self.next_seq += 1
        return self.next_seq

    async def enqueue(self, req):
        """`await self.q.put(...)` of Mux.receive, with bookkeeping."""
        self.unfinished[req.seq] = req
        inflight = len(self.unfinished)
        span = req.seq - min(self.unfinished) + 1
        self.max_inflight = max(self.max_inflight, inflight)
        self.max_span = max(self.max_span, span)
        st = self.stats
        st.max_inflight_per_connection = max(st.max_inflight_per_connection,
                                             inflight)
        st.max_span_per_connection = max(st.max_span_per_connection, span)
        self.requests_queued += 1
        st.requests_queued += 1
        if self.q.full():
            # The reader is about to block: nothing more is read from this
            # socket until the worker loop takes an item (§6.1, Q2).
            #
            # The real gateway also blocks here briefly for a client that
            # respects the window: a burst of more than 10 frames read in
            # one go, or a worker loop that has not yet pruned finished
            # tasks (it prunes lazily, at most one start per
            # WORKER_CLOSE_WAIT while the head runs).  Those waits are
            # counted in `queue_full_waits`.  `reader_stalls` counts only
            # the stalls of §6.1 "beyond the window": this frame lies more
            # than 16 requests after the oldest unfinished one (a real
            # window stall needs 16 started + 1 held + 10 queued + this
            # one = 28), so a client that keeps the span <= 16 never
            # causes one.
            self.queue_full_waits += 1
            st.queue_full_waits += 1
            if span > MAX_OUTSTANDING_REQUESTS + 1:
                self.reader_stalls += 1
                st.reader_stalls += 1
            self.reader_stalled = True
            log.info("connection %d: reader blocked, queue full (span %d)",
                     self.cid, span)
        try:
            await self.q.put(req)
        finally:
            self.reader_stalled = False
        depth = self.q.qsize()
        self.max_queue_depth = max(self.max_queue_depth, depth)
        st.max_queue_depth = max(st.max_queue_depth, depth)

    # ---- worker loop: Mux.run / maybe_tidy_workers / start_request_task --

    async def run(self):
        workers = self.workers
        while self.running:
            try:
                if len(workers) > 0:
                    await self.maybe_tidy_workers()
                item = await asyncio.wait_for(self.q.get(), 1)
            except TimeoutError:
                continue
            await self.start_request_task(item)

    async def maybe_tidy_workers(self):
        # Finished tasks are removed ONLY from the front of the list, so a
        # long-running head request pins the window (§6.1, Q1).  Each call
        # costs WORKER_CLOSE_WAIT while the head is running (Q3).
        workers = self.workers
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(workers[0]),
                                       WORKER_CLOSE_WAIT)
                workers.pop(0)
                if len(workers) == 0:
                    break
            except TimeoutError:
                break

    async def start_request_task(self, req):
        while len(self.workers) > MAX_OUTSTANDING_REQUESTS:
            self.window_full = True
            await asyncio.sleep(START_REQUEST_WAIT)
            await self.maybe_tidy_workers()
        self.window_full = False
        task = asyncio.create_task(self.request_task(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.workers.append(task)
        self.requests_started += 1
        self.stats.requests_started += 1
        n = len(self.workers)
        self.max_window = max(self.max_window, n)
        self.stats.max_window = max(self.stats.max_window, n)

    def mark_finished(self, req, abandoned=False):
        if req.finished:
            return
        req.finished = True
        self.unfinished.pop(req.seq, None)
        if abandoned:
            self.requests_abandoned += 1
            self.stats.requests_abandoned += 1
        else:
            self.requests_completed += 1
            self.stats.requests_completed += 1

    async def send_bad_frame(self, req, kind):
        """_mock.bad_frame: a final frame no real gateway sends (a text frame
        is written with raw bytes, so its UTF-8 is not checked on the way)."""
        ident = json.dumps(req.id)
        if kind == "utf8":
            data = (b'{"id":' + ident.encode() + b',"response":{"response":"'
                    + bytes([0xff, 0xfe]) + b' bad ' + bytes([0xc3])
                    + b'"},"complete":true}')
        elif kind == "json":
            data = ('{"id":%s,"response":{"response":[1}],"complete":true}'
                    % ident).encode()
        else:
            data = ('[{"id":%s,"response":{},"complete":true}]'
                    % ident).encode()
        self.mark_finished(req)
        self.frames_out += 1
        self.stats.frames_out += 1
        await self.ws._writer.send(data, binary=False)

    async def send_final(self, req, frame):
        # Count the request finished *before* the write: a client that reacts
        # to this frame must never see it still counted.
        self.mark_finished(req)
        await self.send(frame)

    # ---- one request: Mux.request_task + DispatcherManager + requestor ---

    async def request_task(self, req):
        try:
            await self.dispatch(req)
        except asyncio.CancelledError:
            self.mark_finished(req, abandoned=True)
            raise
        except Drop:
            self.mark_finished(req, abandoned=True)
            self.abort()
        except Exception as e:
            # Dispatch failures (Invalid flow, unknown kind, ...):
            # V1a E1 without id; v2.2.5+ E2 with the id (§4.1 12-13).
            try:
                frame = self.gateway_error(req.id, str(e))
                if self.era.structured:
                    frame = {"id": req.id, "error": frame["error"],
                             "complete": True}
                await self.send_final(req, frame)
            except Exception as e2:
                log.info("connection %d: cannot send: %r", self.cid, e2)
        finally:
            if not req.finished:
                self.mark_finished(req)

    async def dispatch(self, req):
        era, st, svc = self.era, self.state, req.service
        if req.flow:
            # DispatcherManager.invoke_flow_service
            if era.workspaces:
                ws = st.ws_key(req.workspace)
                if req.flow not in st.flows.get(ws, {}):
                    raise RuntimeError(f"Invalid flow {req.workspace}/{req.flow}")
            else:
                ws = "default"
                if req.flow not in st.flows.get(ws, {}):
                    raise RuntimeError("Invalid flow")
            if svc not in st.flows[ws][req.flow]["interfaces"]:
                raise RuntimeError("This kind not supported by flow")
        else:
            # invoke_global_service: global_dispatchers[kind] -> KeyError
            # text "'<kind>'" for anything else (V1; V2 registry already
            # filtered).
            kinds = list(WORKSPACE_OPS) + (["iam"] if era.v2 else [])
            if not isinstance(svc, str) or svc not in kinds:
                raise KeyError(svc)
        await self.requestor(req)

    async def idle_wait(self, seconds):
        """Wait for the 'backend' for `seconds`, subject to the gateway's
        per-message idle timeout (--timeout, §6.3)."""
        t = self.args.timeout
        if t and seconds > t:
            await asyncio.sleep(t)
            raise IdleTimeout()
        if math.isinf(seconds):
            await asyncio.Event().wait()
        elif seconds > 0:
            await asyncio.sleep(seconds)

    async def requestor(self, req):
        """ServiceRequestor.process / ServiceSender.process plus _mock."""
        mc = MockControls(req.request)
        loader = req.service in LOADER_SERVICES

        async def emit(payload, fin):
            frame = {"id": req.id, "response": payload, "complete": fin}
            if fin:
                await self.send_final(req, frame)
            else:
                await self.send(frame)

        try:
            await self.idle_wait(mc.first_delay)

            # How many partial frames precede a failure / drop / hang.
            k = None
            if mc.error is not None:
                k = mc.error_after
            elif mc.drop or mc.timeout or mc.never or mc.bad_frame:
                k = mc.after
            parts = mc.parts
            if k is not None and k > (parts or 3):
                parts = k

            if mc.echo:
                frames = [({
                    "echo": json.loads(req.raw).get("request"),
                    "envelope": json.loads(req.raw),
                    "workspace": req.workspace, "flow": req.flow,
                    "service": req.service}, True)]
            else:
                ctx = Ctx(self, req, parts)
                if mc.size is not None and mc.size >= 0:
                    ctx.blob = make_blob(mc.size)
                if mc.part_size and req.service == "text-completion":
                    part = make_blob(mc.part_size)
                    frames = [({"response": part, "end_of_stream": False}, False)
                              for _ in range(ctx.parts)]
                    frames.append(({"response": "", "end_of_stream": True}, True))
                else:
                    frames = SERVICES[req.service](ctx)
            if mc.size is not None and mc.size >= 0:
                # ...and the final payload always carries "blob" too.
                final = dict(frames[-1][0])
                final["blob"] = make_blob(mc.size)
                frames[-1] = (final, frames[-1][1])

            if k is None:
                for i, (payload, fin) in enumerate(frames):
                    if i:
                        await self.idle_wait(mc.delay)
                    await emit(payload, fin)
                    if fin:
                        return
                return

            # Partial frames, padded with the final payload (complete:false)
            # when the service has fewer natural partials than requested.
            partials = [p for p, fin in frames if not fin]
            filler = partials[-1] if partials else frames[-1][0]
            partials = (partials + [filler] * k)[:k]
            for i, payload in enumerate(partials):
                if i:
                    await self.idle_wait(mc.delay)
                await emit(payload, False)
            if k:
                await self.idle_wait(mc.delay)

            if mc.error is not None:
                await self.send_final(req, self.mock_error_frame(
                    req.id, req.service, mc.error))
            elif mc.bad_frame:
                await self.send_bad_frame(req, mc.bad_frame)
            elif mc.drop:
                raise Drop()
            elif mc.timeout:
                raise IdleTimeout()
            else:                                  # never
                await self.idle_wait(math.inf)

        except (asyncio.CancelledError, Drop):
            raise
        except BackendError as e:
            # Backend message with `error` set -> E5 with its type (§5.2).
            await emit({"error": {"type": e.type, "message": e.message}}, True)
        except Exception as e:
            if isinstance(e, IdleTimeout):
                message = self.era.timeout_message
            else:
                message = str(e)   # e.g. translator KeyError -> "'query'"
            if loader:
                # ServiceSender: bare string inside `response` (E6).
                await emit({"error": message}, True)
            else:
                # ServiceRequestor: any exception -> gateway-error (E5).
                await emit({"error": {"type": "gateway-error",
                                      "message": message}}, True)

    def mock_error_frame(self, id, service, spec):
        """The error frame requested by `_mock.error` (shapes of §5.2)."""
        shape = str(spec.get("shape", "E5")).upper()
        message = spec.get("message")
        type_ = spec.get("type")
        if shape == "E1":
            return {"error": message if message is not None else "mock error"}
        if shape in ("E2", "E3"):
            err = {"message": message if message is not None else "mock error",
                   "type": type_ or "error"}
            frame = {"error": err, "complete": True}
            if shape == "E2":
                frame = {"id": id, **frame}
            return frame
        if shape == "E4":
            type_ = type_ or "access-denied"
            return self.policy_error(id, type_, message)
        if shape == "E6":
            return {"id": id, "response": {
                "error": message if message is not None else "mock error"},
                "complete": True}
        # E5 (default)
        return {"id": id, "response": {"error": {
            "type": type_ or SERVICE_ERROR_TYPE.get(service, "request-error"),
            "message": message if message is not None else "mock error"}},
            "complete": True}


# --------------------------------------------------------------------------
# Non-envelope ("passthrough") routes: §2.2 / §2.3 / §3 / §8.4 and the
# gateway source (gw/endpoint/auth_endpoints.py, i18n.py, metrics.py,
# stream_endpoint.py, manager.py _RoutedSocketEndpoint, socket.py;
# gw/dispatch/core_export.py, core_import.py, document_stream.py,
# *_import.py, *_export.py; gw/auth.py IamAuth.authenticate).
# --------------------------------------------------------------------------

PUBLIC = "__public__"                # gw/capabilities.py sentinels
AUTHENTICATED = "__authenticated__"

# Route names used as keys of GET /_mock/stats "passthrough" "routes" and of
# the POST /_mock/passthrough controls.
PASS_ROUTES = (
    "auth/login", "auth/bootstrap", "auth/bootstrap-status",
    "auth/change-password", "i18n", "metrics", "document-stream",
    "export-core", "import-core", "import", "export",
)

# gw/dispatch/manager.py import_dispatchers / export_dispatchers (HEAD; the
# V2 registry `_FLOW_IMPORTS` / `_FLOW_EXPORTS` has the same kinds).  V1a
# also had `objects` (renamed `rows` in v2.0.11; V1a spans both).
IMPORT_KINDS = ("triples", "graph-embeddings", "document-embeddings",
                "entity-contexts", "rows")
EXPORT_KINDS = ("triples", "graph-embeddings", "document-embeddings",
                "entity-contexts")

KNOWLEDGE_CORES = ("core1",)          # what list-kg-cores reports
KEEP_PASS_RECORDS = 50                # stats: uploads / downloads kept
KEEP_PASS_SOCKETS = 100               # stats: closed bulk sockets kept
KEEP_PASS_REQUESTS = 100              # stats: HTTP passthrough requests kept
JWT_TTL_SECONDS = 3600                # iam/service/iam.py
JWT_ISSUER = "trustgraph-iam"
UPLOAD_READ = 128 * 1024              # core_import.py data.read(128*1024)
DOCUMENT_CHUNK = 1024 * 1024          # document_stream.py default chunk-size
DEFAULT_WRITE = 65536                 # export-core write size (mock choice)
MAX_WRITE = 16 * 1024 * 1024          # cap on one generated write
CLIENT_MAX_SIZE = 256 * 1024 * 1024   # gw/service.py client_max_size

# Generated bodies (size-N ids).  binary: byte i = i % 251 (every byte value
# but 251..255, NUL/CR/LF included, period prime so it never lines up with
# power-of-two chunk boundaries); alpha: byte i = BLOB_ALPHABET[i % 36].
PATTERNS = {"binary": bytes(range(251)),
            "alpha": BLOB_ALPHABET.encode("ascii")}
_SIZE_ID = re.compile(r"^size-(\d+)([kmg]?)$", re.IGNORECASE)

# trustgraph.i18n SUPPORTED_LANGUAGES / _LANGUAGE_ALIASES; the packs
# themselves are the mock's own (a few keys, flat str -> str like the
# real ones).
I18N_HELLO = {
    "en": "Hello", "es": "Hola", "sw": "Habari", "pt": "Olá",
    "tr": "Merhaba", "hi": "नमस्ते", "he": "שלום", "ar": "مرحبا",
    "zh-cn": "你好", "ru": "Привет",
}
I18N_ALIASES = {"zh": "zh-cn", "zh-hans": "zh-cn", "zh-hans-cn": "zh-cn",
                "zh-cn": "zh-cn", "zh_cn": "zh-cn"}


def size_from_id(s):
    """'size-1048576' / 'size-64M' / 'size-1g' -> bytes, else None."""
    m = _SIZE_ID.match(s or "")
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20,
                              "g": 1 << 30}[m.group(2).lower()]


def pattern_bytes(name, offset, n):
    """Bytes [offset, offset+n) of a generated body (for tests)."""
    base = PATTERNS[name]
    p = len(base)
    reps = (offset % p + n) // p + 1
    return (base * reps)[offset % p:offset % p + n]


class Pattern:
    """Deterministic body generator: zero-copy slices of one cached buffer."""
    _buffers = {}

    def __init__(self, name):
        self.name = name if name in PATTERNS else "binary"
        self.base = PATTERNS[self.name]
        self.period = len(self.base)

    def piece(self, offset, n):
        buf = self._buffers.get(self.name)
        if buf is None or len(buf) < n + self.period:
            buf = memoryview(self.base * ((n + self.period) // self.period + 1))
            self._buffers[self.name] = buf
        ph = offset % self.period
        return buf[ph:ph + n]

    def pieces(self, total, size):
        size = max(1, min(size, MAX_WRITE))
        off = 0
        while off < total:
            n = min(size, total - off)
            yield self.piece(off, n)
            off += n


def i18n_language(value):
    """trustgraph.i18n.normalize_language (unknown -> "en")."""
    if not value:
        return "en"
    token = value.split(",", 1)[0].strip()
    if not token:
        return "en"
    token = token.replace("_", "-").lower()
    token = I18N_ALIASES.get(token, token)
    if token.startswith("zh-"):
        token = "zh-cn"
    primary = token.split("-", 1)[0]
    if primary in I18N_HELLO:
        return primary
    return token if token in I18N_HELLO else "en"


def i18n_pack(lang):
    lang = i18n_language(lang)
    return {
        "mock.i18n.language": lang,
        "mock.i18n.hello": I18N_HELLO[lang],
        "mock.i18n.items": "{count} × " + I18N_HELLO[lang],
    }


def msgpack_pack(o):
    """Minimal msgpack encoder (msgpack.packb(o, use_bin_type=True) output
    for None/bool/int/float/str/bytes/list/tuple/dict), so the mock needs
    no third-party module for its knowledge-core stream."""
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 0x80:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack("b", o)
        if o >= 0:
            for tag, fmt, lim in ((0xcc, ">B", 1 << 8), (0xcd, ">H", 1 << 16),
                                  (0xce, ">I", 1 << 32), (0xcf, ">Q", 1 << 64)):
                if o < lim:
                    return bytes([tag]) + struct.pack(fmt, o)
        for tag, fmt, lim in ((0xd0, ">b", 1 << 7), (0xd1, ">h", 1 << 15),
                              (0xd2, ">i", 1 << 31), (0xd3, ">q", 1 << 63)):
            if -lim <= o:
                return bytes([tag]) + struct.pack(fmt, o)
        raise OverflowError(o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)

    def head(n, fix, fixlim, tags):
        if n < fixlim:
            return bytes([fix | n])
        for tag, fmt, lim in tags:
            if n < lim:
                return bytes([tag]) + struct.pack(fmt, n)
        raise OverflowError(n)
    if isinstance(o, str):
        b = o.encode("utf-8")
        return head(len(b), 0xa0, 32, ((0xd9, ">B", 1 << 8),
                                       (0xda, ">H", 1 << 16),
                                       (0xdb, ">I", 1 << 32))) + b
    if isinstance(o, (bytes, bytearray)):
        return head(len(o), 0, 0, ((0xc4, ">B", 1 << 8),
                                   (0xc5, ">H", 1 << 16),
                                   (0xc6, ">I", 1 << 32))) + bytes(o)
    if isinstance(o, (list, tuple)):
        return head(len(o), 0x90, 16, ((0xdc, ">H", 1 << 16),
                                       (0xdd, ">I", 1 << 32))) + b"".join(
            msgpack_pack(x) for x in o)
    if isinstance(o, dict):
        return head(len(o), 0x80, 16, ((0xde, ">H", 1 << 16),
                                       (0xdf, ">I", 1 << 32))) + b"".join(
            msgpack_pack(k) + msgpack_pack(v) for k, v in o.items())
    raise TypeError(type(o).__name__)


def core_messages(core_id):
    """The export-core stream of a named mock core: core_export.py's
    ("t", {...}) / ("ge", {...}) msgpack tuples, one per write."""
    m = {"i": core_id, "c": "default"}
    out = []
    for i in range(3):
        out.append(msgpack_pack(("t", {"m": m, "t": [
            {"s": iri(f"http://example.org/entity/{2 * i + j}"),
             "p": iri("http://www.w3.org/2000/01/rdf-schema#label"),
             "o": lit(f"Entity {2 * i + j}")} for j in range(2)]})))
    out.append(msgpack_pack(("ge", {"m": m, "e": [
        {"e": iri(f"http://example.org/entity/{i}"), "v": vec(f"entity{i}")}
        for i in range(2)]})))
    return out


def bulk_frame(kind, i, size=None):
    """Frame i of an export socket, in the serialize.py shape of `kind`;
    with `size`, padded (ASCII) to exactly that many bytes when possible."""
    md = {"id": f"urn:mock:export:{i}", "root": "", "collection": "default"}

    def build(pad):
        if kind == "triples":
            return {"metadata": md, "triples": [
                {"s": iri(f"http://example.org/entity/{i}"),
                 "p": iri("http://www.w3.org/2000/01/rdf-schema#label"),
                 "o": lit(f"Entity {i}{pad}")}]}
        if kind == "graph-embeddings":
            return {"metadata": md, "entities": [
                {"vector": vec(f"entity{i}"),
                 "entity": iri(f"http://example.org/entity/{i}{pad}")}]}
        if kind == "document-embeddings":
            return {"metadata": md, "chunks": [
                {"vector": vec(f"chunk{i}"), "chunk_id": f"doc1/c{i}{pad}"}]}
        return {"metadata": md, "entities": [            # entity-contexts
            {"context": f"Mock context {i}{pad}",
             "entity": iri(f"http://example.org/entity/{i}")}]}
    text = json.dumps(build(""))
    if size and size > len(text):
        text = json.dumps(build(make_blob(size - len(text))))
    return text


def validate_import(kind, raw):
    """What the import dispatcher's receive() does with a frame (msg.json()
    then the schema fields it indexes); an exception closes the socket."""
    data = json.loads(raw)
    if kind == "document-embeddings":
        # DocumentEmbeddingsTranslator.decode: .get() with defaults
        data.get("metadata", {}).get("id")
        for ch in data.get("chunks", []):
            ch["chunk_id"], ch["vector"]
        return
    md = data["metadata"]
    md["id"], md["collection"]
    if kind == "triples":
        for t in data["triples"]:
            t["s"], t["p"], t["o"]
    elif kind == "graph-embeddings":
        for ent in data["entities"]:
            ent["entity"], ent["vector"]
    elif kind == "entity-contexts":
        for ent in data["entities"]:
            ent["entity"], ent["context"]
    else:                                   # rows / objects
        data["values"], data["schema_name"]


def _pbool(v):
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _pint(v, default=None):
    try:
        return int(v) if v is not None and v != "" else default
    except (TypeError, ValueError):
        return default


def _psecs(v):
    """Seconds; "inf"/"never"/true = forever; absent/false/bad = 0."""
    if v is None or v is False:
        return 0.0
    if v is True:
        return math.inf
    if isinstance(v, str) and v.strip().lower() in ("inf", "never",
                                                     "forever", "true"):
        return math.inf
    try:
        return max(0.0, float(v))
    except (TypeError, ValueError):
        return 0.0


class MockInternalError(Exception):
    """Raised where the real handler raises an uncaught exception (aiohttp
    answers 500 itself); its traceback is not logged."""


class _QuietMockInternal(logging.Filter):
    def filter(self, record):
        ei = record.exc_info
        return not (ei and isinstance(ei[1], MockInternalError))


class PassControls:
    """Mock-only controls of the passthrough routes.  Sources, later ones
    winning: POST /_mock/passthrough defaults for "*", then for the route,
    then the request's own `mock-<name>` query parameters (`-` or `_`; the
    real gateway ignores unknown query parameters)."""

    def __init__(self, d):
        self.raw = dict(d)
        g = d.get
        self.slow = _psecs(g("slow"))             # before anything
        self.delay = _psecs(g("delay"))           # between writes / frames
        self.fail_after = _pint(g("fail_after"))
        self.truncate_after = _pint(g("truncate_after"))
        self.cut_after = _pint(g("cut_after"))
        self.length = _pbool(g("length"))
        self.quote_credential = _pbool(g("quote_credential"))
        self.quote_pad = max(0, _pint(g("quote_pad"), 0))
        self.quote = g("quote")
        self.status = _pint(g("status"))
        self.stall_after = _pint(g("stall_after"))
        self.chunk = max(1, _pint(g("chunk"), DEFAULT_WRITE))
        self.pattern = "alpha" if g("pattern") in ("alpha", "text") \
            else "binary"
        self.deny = _pbool(g("deny"))
        self.upstream_down = _pbool(g("upstream_down"))
        self.frames = max(0, _pint(g("frames"), 3))
        self.frame_size = _pint(g("frame_size"))
        self.hold = _pbool(g("hold"))
        self.echo = _pbool(g("echo"))
        self.lenient = _pbool(g("lenient"))
        self.close_code = _pint(g("close_code"), 1000)
        self.close_reason = str(g("close_reason") or "")
        self.close_after = _pint(g("close_after"))
        self.close_delay = _psecs(g("close_delay"))
        self.drop_after = _pint(g("drop_after"))


async def wait_or_gone(request, seconds):
    """Sleep `seconds` (inf: forever); False as soon as the client is gone
    (aiohttp 3.8 does not cancel a handler whose client disconnects)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        tr = request.transport
        if tr is None or tr.is_closing():
            return False
        left = end - loop.time()
        if left <= 0:
            return True
        await asyncio.sleep(min(0.05, left))


class PassStats:
    """GET /_mock/stats "passthrough"."""

    COUNTERS = ("responses_aborted", "uploads_aborted", "mock_failures",
                "http_401", "http_403", "logins_ok", "logins_failed",
                "password_changes", "bootstraps")

    def __init__(self):
        self.sockets = []
        self.uploads = collections.deque(maxlen=KEEP_PASS_RECORDS)
        self.downloads = collections.deque(maxlen=KEEP_PASS_RECORDS)
        self.requests = collections.deque(maxlen=KEEP_PASS_REQUESTS)
        self.next_socket_id = 1
        self.reset()

    @staticmethod
    def new_route():
        return {"count": 0, "in_progress": 0, "statuses": {},
                "last_status": None, "last_authorization": None,
                "last_query": None, "last_path": None, "last_method": None,
                "bytes_in": 0, "bytes_out": 0, "aborted": 0,
                "mock_failures": 0}

    def reset(self):
        for k in self.COUNTERS:
            setattr(self, k, 0)
        self.last_jwt = None
        self.routes = {r: self.new_route() for r in PASS_ROUTES}
        # Records still being written to survive a reset.
        self.uploads = collections.deque(
            [r for r in self.uploads if r["in_progress"]],
            maxlen=KEEP_PASS_RECORDS)
        self.downloads = collections.deque(
            [r for r in self.downloads if r["in_progress"]],
            maxlen=KEEP_PASS_RECORDS)
        self.sockets = [s for s in self.sockets if s["open"]]
        self.requests.clear()

    def add_socket(self, rec):
        rec["id"] = self.next_socket_id
        self.next_socket_id += 1
        self.sockets.append(rec)
        closed = [s for s in self.sockets if not s["open"]]
        while len(self.sockets) > KEEP_PASS_SOCKETS and closed:
            self.sockets.remove(closed.pop(0))

    def snapshot(self, controls):
        d = {k: getattr(self, k) for k in self.COUNTERS}
        d["last_jwt"] = self.last_jwt
        d["routes"] = {k: dict(v, statuses=dict(v["statuses"]))
                       for k, v in self.routes.items()}
        d["uploads"] = [dict(r) for r in self.uploads]
        d["downloads"] = [dict(r) for r in self.downloads]
        d["requests"] = [dict(r) for r in self.requests]
        d["sockets"] = [dict(r) for r in self.sockets]
        d["controls"] = controls
        return d


class PassCall:
    """Bookkeeping of one request to a passthrough route."""

    def __init__(self, pt, route, request):
        self.pt = pt
        self.route = route
        self.st = st = pt.stats.routes[route]
        st["count"] += 1
        st["in_progress"] += 1
        st["last_authorization"] = request.headers.get("Authorization")
        st["last_query"] = request.rel_url.raw_query_string
        st["last_path"] = request.rel_url.raw_path
        st["last_method"] = request.method
        pt.stats.requests.append({
            "route": route, "method": request.method,
            "path": request.rel_url.raw_path,
            "query": request.rel_url.raw_query_string,
            "authorization": request.headers.get("Authorization")})
        self.ctl = pt.controls_for(route, request)
        self.finished = False
        self.no_status = False      # nothing (valid) was answered

    def bytes_in(self, n):
        self.st["bytes_in"] += n

    def bytes_out(self, n):
        self.st["bytes_out"] += n

    def aborted(self):
        self.st["aborted"] += 1

    def mock_failure(self):
        self.st["mock_failures"] += 1
        self.pt.stats.mock_failures += 1

    def finish(self, status):
        if self.finished:
            return
        self.finished = True
        st = self.st
        st["in_progress"] -= 1
        if status is not None:
            k = str(status)
            st["statuses"][k] = st["statuses"].get(k, 0) + 1
            st["last_status"] = status
            if status == 401:
                self.pt.stats.http_401 += 1
            elif status == 403:
                self.pt.stats.http_403 += 1


class PassSocket:
    def __init__(self, ws, transport, rec):
        self.ws = ws
        self.transport = transport
        self.rec = rec
        self.closing = None         # /_mock/close in progress


class Passthrough:
    """The gateway's routes other than /api/v1/socket, per era."""

    def __init__(self, server):
        self.server = server
        self.args = server.args
        self.era = server.era
        self.state = server.state
        self.stats = server.stats.passthrough
        self.sockets = set()        # open bulk sockets (PassSocket)
        self.streams = set()        # transports of bodies being streamed
        self.kid = uuid.uuid4().hex[:16]
        self.reset_state()

    def reset_state(self):
        wss = self.args.workspaces
        ws = "default" if "default" in wss or not wss else wss[0]
        self.users = {n: {"password": p, "workspace": ws}
                      for n, p in self.args.user}
        self.bootstrap_available = bool(self.args.bootstrap)
        self.controls = {}

    # ---- routes ----------------------------------------------------------

    def routes(self):
        """Registration order of gw/endpoint/manager.py; routes an era does
        not have are simply absent (aiohttp 404 / 405)."""
        e, w = self.era, self.wrap
        r = []
        if e.v2:
            r += [
                web.post("/api/v1/auth/login", w("auth/login", self.h_login)),
                web.post("/api/v1/auth/bootstrap",
                         w("auth/bootstrap", self.h_bootstrap)),
                web.post("/api/v1/auth/bootstrap-status",
                         w("auth/bootstrap-status", self.h_bootstrap_status)),
                web.post("/api/v1/auth/change-password",
                         w("auth/change-password", self.h_change_password)),
            ]
        if e.i18n:
            r.append(web.get("/api/v1/i18n/packs/{lang}",
                             w("i18n", self.h_i18n)))
        r += [
            web.get("/api/metrics/{path:.*}", w("metrics", self.h_metrics)),
            web.get("/api/v1/flow/{flow}/import/{kind}",
                    w("import", self.h_import_socket)),
            web.get("/api/v1/flow/{flow}/export/{kind}",
                    w("export", self.h_export_socket)),
            web.post("/api/v1/import-core",
                     w("import-core", self.h_import_core)),
            web.get("/api/v1/export-core",
                    w("export-core", self.h_export_core)),
            web.get("/api/v1/document-stream",
                    w("document-stream", self.h_document_stream)),
        ]
        return r

    def wrap(self, route, fn):
        async def handler(request):
            call = PassCall(self, route, request)
            status = None
            try:
                if call.ctl.slow:
                    log.info("passthrough %s: slow %s", route, call.ctl.slow)
                    if not await wait_or_gone(request, call.ctl.slow):
                        call.aborted()
                        self.stats.responses_aborted += 1
                        return web.Response(status=204)   # nobody reads it
                resp = await fn(request, call)
                status = None if call.no_status else resp.status
                # (a StreamResponse counted its own bytes as it wrote them)
                if isinstance(resp, web.Response) and isinstance(
                        resp.body, (bytes, bytearray)):
                    call.bytes_out(len(resp.body))
                return resp
            except web.HTTPException as e:
                status = e.status
                raise
            except asyncio.CancelledError:
                raise
            except MockInternalError:
                status = 500
                raise
            except Exception:
                status = 500
                log.exception("passthrough %s: handler failed", route)
                raise
            finally:
                call.finish(status)
        return handler

    def controls_for(self, route, request):
        d = {}
        for key in ("*", route):
            c = self.controls.get(key)
            if isinstance(c, dict):
                d.update(c)
                if _pbool(c.get("once")):
                    del self.controls[key]
        for k, v in request.query.items():
            if k.startswith("mock-"):
                d[k[5:].replace("-", "_")] = v
        return PassControls(d)

    # ---- auth (§3.1 / §3.2) ----------------------------------------------

    def refuse_401(self, token=None):
        if not self.era.v2:
            # aiohttp HTTPUnauthorized(): text/plain "401: Unauthorized"
            text = "401: Unauthorized"
            if self.args.echo_token and token is not None:
                text += " (token %s)" % token
            return web.Response(status=401, text=text)
        # capabilities.auth_failure(): exact bytes, no space
        text = '{"error":"auth failure"}'
        if self.args.echo_token and token is not None:
            text = json.dumps({"error": "auth failure (token %s)" % token})
        return web.Response(status=401, text=text,
                            content_type="application/json")

    def refuse_403(self):
        return web.Response(status=403, text='{"error":"access denied"}',
                            content_type="application/json")

    async def v2_identity(self, header):
        """IamAuth.authenticate on an Authorization header value."""
        if self.args.auth_delay:
            await asyncio.sleep(self.args.auth_delay)      # IAM round trip
        if not header.startswith("Bearer "):
            return self.server.anonymous_identity()
        token = header[len("Bearer "):].strip()
        if not token:
            return self.server.anonymous_identity()
        return self.server.resolve_credential(token)

    async def authorize(self, request, call, capability):
        """V1: VariableEndpoint-style header parsing, token == --secret.
        V2: enforce(request, auth, capability).  Returns (identity, None)
        or (None, refusal)."""
        hdr = request.headers.get("Authorization")
        if not self.era.v2:
            token = ""
            if hdr is not None:
                parts = hdr.split(" ", 2)
                if parts[0] != "Bearer":
                    return None, self.refuse_401(hdr)   # even when open
                token = parts[1] if len(parts) > 1 else ""
            if self.args.secret and token != self.args.secret:
                return None, self.refuse_401(token)
            return {"handle": "gateway-secret", "source": "secret",
                    "default_workspace": "default"}, None
        if capability == PUBLIC:
            return None, None
        identity = await self.v2_identity(hdr or "")
        if identity is None:
            return None, self.refuse_401(hdr)
        if capability != AUTHENTICATED and call.ctl.deny:
            return None, self.refuse_403()       # IamAuth.authorise deny
        if call.ctl.quote_credential:
            quoted = hdr if call.ctl.quote is None else str(call.ctl.quote)
            return None, self.refuse_quoting(quoted, call.ctl.quote_pad)
        return identity, None

    def refuse_quoting(self, hdr, pad):
        """Mock-only: a refusal that quotes the credential it was given,
        in the body and in a header."""
        quoted = hdr or ""
        text = json.dumps({"error": "auth failure (token %s)%s"
                           % (quoted, "x" * pad)})
        return web.Response(
            status=401, text=text, content_type="application/json",
            headers={"WWW-Authenticate":
                     'Bearer error="invalid_token", token="%s"' % quoted})

    async def read_json(self, request, call):
        """request.json(); (data, None) or (None, 400 invalid json)."""
        body = await request.read()
        call.bytes_in(len(body))
        try:
            return json.loads(body.decode(request.charset or "utf-8")), None
        except Exception:
            return None, web.json_response({"error": "invalid json"},
                                           status=400)

    # ---- /api/v1/auth/* (V2, auth_endpoints.py) ---------------------------

    def iam_login(self, username, password, workspace=""):
        """IamService.handle_login: identity or None (auth-failed)."""
        if not username or not password:
            return None
        u = self.users.get(str(username))
        if u is None or u["password"] != str(password):
            return None
        ws = str(workspace or u["workspace"])
        if ws not in self.args.workspaces:
            return None                           # "workspace disabled"
        return {"handle": str(username), "source": "jwt",
                "default_workspace": ws}

    def issue_jwt(self, identity):
        """An EdDSA-JWT-shaped token (real header/claims, fake signature)
        that this mock then accepts as a credential everywhere."""
        def enc(b):
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")

        def part(o):
            return enc(json.dumps(o, separators=(",", ":"),
                                  sort_keys=True).encode("utf-8"))
        now = int(time.time())
        exp = now + JWT_TTL_SECONDS
        signing = "%s.%s" % (
            part({"alg": "EdDSA", "typ": "JWT", "kid": self.kid}),
            part({"iss": JWT_ISSUER, "sub": identity["handle"],
                  "default_workspace": identity["default_workspace"],
                  "iat": now, "exp": exp}))
        sig = enc(hashlib.sha512((self.kid + signing).encode()).digest())
        token = signing + "." + sig
        self.server.issued[token] = dict(identity)
        expires = datetime.datetime.fromtimestamp(
            exp, tz=datetime.timezone.utc).isoformat()
        return token, expires

    async def h_login(self, request, call):
        data, err = await self.read_json(request, call)
        if err is not None:
            return err
        if not isinstance(data, dict):
            raise MockInternalError(
                "'%s' object has no attribute 'get'" % type(data).__name__)
        if self.args.auth_delay:
            await asyncio.sleep(self.args.auth_delay)
        identity = self.iam_login(data.get("username", ""),
                                  data.get("password", ""),
                                  data.get("workspace", ""))
        if identity is None:
            self.stats.logins_failed += 1
            return web.json_response({"error": "auth failure"}, status=401)
        token, expires = self.issue_jwt(identity)
        self.stats.logins_ok += 1
        self.stats.last_jwt = token
        # IamResponseTranslator.encode: jwt, jwt_expires, bootstrap_available
        return web.json_response({"jwt": token, "jwt_expires": expires,
                                  "bootstrap_available": False})

    async def h_bootstrap(self, request, call):
        call.bytes_in(len(await request.read()))    # body is not used
        if self.args.auth_delay:
            await asyncio.sleep(self.args.auth_delay)
        if not self.bootstrap_available:
            return web.json_response({"error": "auth failure"}, status=401)
        self.bootstrap_available = False
        key = "tg_" + secrets.token_urlsafe(24)
        self.server.issued[key] = {"handle": "admin", "source": "api-key",
                                   "default_workspace": "default"}
        self.stats.bootstraps += 1
        return web.json_response({"bootstrap_admin_user_id": "admin",
                                  "bootstrap_admin_api_key": key,
                                  "bootstrap_available": False})

    async def h_bootstrap_status(self, request, call):
        call.bytes_in(len(await request.read()))
        return web.json_response(
            {"bootstrap_available": self.bootstrap_available})

    async def h_change_password(self, request, call):
        identity, err = await self.authorize(request, call, AUTHENTICATED)
        if err is not None:
            return err
        data, err = await self.read_json(request, call)
        if err is not None:
            return err
        if not isinstance(data, dict):
            raise MockInternalError(
                "'%s' object has no attribute 'get'" % type(data).__name__)
        current = data.get("current_password", "")
        new = data.get("new_password", "")
        if self.args.auth_delay:
            await asyncio.sleep(self.args.auth_delay)
        # IamService.handle_change_password; invalid-argument -> 400
        # {"error": message}, auth-failed -> 401.
        if not current:
            return web.json_response(
                {"error": "password (current) required"}, status=400)
        if not new:
            return web.json_response({"error": "new_password required"},
                                     status=400)
        u = self.users.get(identity["handle"])
        if u is None or u["password"] != str(current):
            return web.json_response({"error": "auth failure"}, status=401)
        u["password"] = str(new)
        self.stats.password_changes += 1
        return web.json_response({"bootstrap_available": False})

    # ---- i18n, metrics -----------------------------------------------------

    async def h_i18n(self, request, call):
        _, err = await self.authorize(request, call, PUBLIC)
        if err is not None:
            return err
        lang = request.match_info.get("lang") or "en"
        if "/" in lang or ".." in lang:
            # web.HTTPBadRequest(reason="Invalid language code")
            return web.Response(status=400, reason="Invalid language code",
                                text="400: Invalid language code")
        return web.json_response(i18n_pack(lang))

    async def h_metrics(self, request, call):
        _, err = await self.authorize(request, call, "metrics:read")
        if err is not None:
            return err
        path = request.match_info["path"]
        if call.ctl.status:
            return web.Response(status=call.ctl.status)
        # The gateway forwards yarl's (partly decoded) query_string.
        upstream = "/api/v1/" + path + "?" + request.query_string
        if call.ctl.upstream_down:
            if self.era.metrics_502:
                return web.Response(
                    status=502, text="Bad Gateway: metrics upstream "
                    "unreachable: Cannot connect to host prometheus:9090 "
                    "ssl:default [Connect call failed ('127.0.0.1', 9090)]")
            return web.Response(status=500,
                                text="500: Internal Server Error")
        body = {"status": "success",
                "data": {"resultType": "vector", "result": []},
                "mock": {"path": path,
                         "query_string": request.query_string,
                         "raw_query_string":
                             request.rel_url.raw_query_string,
                         "query": {k: request.query.get(k)
                                   for k in request.query},
                         "upstream": upstream}}
        # Proxied upstream body: web.Response(text=...) -> text/plain.
        return web.Response(status=200, text=json.dumps(body))

    # ---- streamed bodies -----------------------------------------------

    def stop_point(self, ctl, modes):
        stop, mode = None, None
        for m in modes:
            v = getattr(ctl, m + "_after")
            if v is not None and v >= 0 and (stop is None or v < stop):
                stop, mode = v, m
        return stop, mode

    async def stream_body(self, request, call, rec, pieces):
        """StreamEndpoint ok() + one resp.write per piece + write_eof, with
        back-pressure (write drains) and the mock's failure controls."""
        ctl = call.ctl
        resp = web.StreamResponse(
            status=200, reason="OK",
            headers={"Content-Type": "application/octet-stream"})
        if ctl.length:
            resp.content_length = rec["expected_bytes"]
        await resp.prepare(request)
        rec["chunked"] = request.version >= (1, 1) and not ctl.length
        stop, mode = self.stop_point(ctl, ("fail", "truncate", "stall",
                                           "cut"))
        tr = request.transport
        if tr is not None:
            self.streams.add(tr)
        sent, first = 0, True
        try:
            for piece in pieces:
                if stop is not None and sent >= stop:
                    break
                if stop is not None and sent + len(piece) > stop:
                    piece = piece[:stop - sent]
                if not piece:
                    continue
                if not first and ctl.delay:
                    if not await wait_or_gone(request, ctl.delay):
                        raise ConnectionResetError("client gone")
                first = False
                await resp.write(piece)
                sent += len(piece)
                rec["bytes_sent"] = sent
                call.bytes_out(len(piece))
            if stop is not None and sent >= stop:
                if mode == "fail":
                    rec["failed_by_mock"] = True
                    call.mock_failure()
                    log.info("passthrough %s: abort after %d bytes",
                             call.route, sent)
                    if tr is not None:
                        tr.abort()
                    return resp
                if mode == "cut":
                    rec["cut"] = True
                    call.mock_failure()
                    log.info("passthrough %s: close after %d bytes, no end",
                             call.route, sent)
                    if tr is not None:
                        tr.close()            # flushes what was written
                    return resp
                if mode == "stall":
                    rec["stalled"] = True
                    await wait_or_gone(request, math.inf)
                    raise ConnectionResetError("client gone")
                rec["truncated"] = True
            await resp.write_eof()
            rec["complete"] = True
        except (OSError, asyncio.CancelledError) as e:
            rec["aborted"] = True
            self.stats.responses_aborted += 1
            call.aborted()
            log.info("passthrough %s: client went away after %d bytes "
                     "(%r)", call.route, sent, e)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            rec["in_progress"] = False
            self.streams.discard(tr)
        return resp

    def download_record(self, call, **kw):
        rec = {"route": call.route, "bytes_sent": 0, "in_progress": True,
               "complete": False, "aborted": False, "failed_by_mock": False,
               "truncated": False, "cut": False, "stalled": False,
               "chunked": None}
        rec.update(kw)
        self.stats.downloads.append(rec)
        return rec

    async def h_document_stream(self, request, call):
        _, err = await self.authorize(request, call, "documents:read")
        if err is not None:
            return err
        q = request.query
        if self.era.workspaces:              # v2.4.0+
            workspace = q.get("workspace", "default")
            document_id = q.get("document-id")
            missing = not document_id
            message = "Missing required parameter: document-id"
        else:                                # v2.1.7 .. v2.3.x: ?user=
            workspace = "default"
            document_id = q.get("document-id")
            missing = not q.get("user") or not document_id
            message = "Missing required parameters: user, document-id"
        try:
            chunk_size = int(q.get("chunk-size", DOCUMENT_CHUNK))
        except Exception as e:
            return web.json_response({"error": str(e)})
        if missing:
            # error() -> web.HTTPInternalServerError(text=err), returned
            return web.Response(status=500, reason="Internal Server Error",
                                text=message)
        if chunk_size <= 0:                  # librarian: <= 0 -> default
            chunk_size = DOCUMENT_CHUNK
        size = size_from_id(document_id)
        if size is not None:
            pat = Pattern(call.ctl.pattern)
            pieces = pat.pieces(size, chunk_size)
            rec = self.download_record(call, id=document_id,
                                       workspace=workspace,
                                       expected_bytes=size,
                                       chunk=min(chunk_size, MAX_WRITE),
                                       pattern=pat.name)
        else:
            doc = self.state.documents.get(
                self.state.ws_key(workspace), {}).get(document_id)
            data = base64.b64decode(doc["content"]) if doc else b""
            pieces = [data[i:i + chunk_size]
                      for i in range(0, len(data), chunk_size)]
            # An unknown document: the librarian's error is dropped by the
            # responder, the body is just empty.
            rec = self.download_record(call, id=document_id,
                                       workspace=workspace,
                                       expected_bytes=len(data),
                                       chunk=chunk_size, pattern=None,
                                       known=doc is not None)
        return await self.stream_body(request, call, rec, pieces)

    async def h_export_core(self, request, call):
        _, err = await self.authorize(request, call, "users:admin")
        if err is not None:
            return err
        try:
            cid = request.query["id"]
            if self.era.workspaces:
                workspace = request.query.get("workspace", "default")
            else:
                workspace = request.query["user"]
        except KeyError as e:
            # raised before ok(): StreamEndpoint -> 200 {"error": "'id'"}
            return web.json_response({"error": str(e)})
        size = size_from_id(cid)
        if size is not None:
            pat = Pattern(call.ctl.pattern)
            pieces = pat.pieces(size, call.ctl.chunk)
            rec = self.download_record(call, id=cid, workspace=workspace,
                                       expected_bytes=size,
                                       chunk=min(call.ctl.chunk, MAX_WRITE),
                                       pattern=pat.name)
        else:
            pieces = core_messages(cid) if cid in KNOWLEDGE_CORES else []
            rec = self.download_record(call, id=cid, workspace=workspace,
                                       expected_bytes=sum(map(len, pieces)),
                                       chunk=None, pattern="msgpack")
        return await self.stream_body(request, call, rec, pieces)

    async def h_import_core(self, request, call):
        _, err = await self.authorize(request, call, "users:admin")
        if err is not None:
            return err
        try:
            cid = request.query["id"]
            if self.era.workspaces:
                workspace = request.query.get("workspace", "default")
            else:
                workspace = request.query["user"]
        except KeyError as e:
            return web.json_response({"error": str(e)})
        ctl = call.ctl
        te = request.headers.get("Transfer-Encoding", "")
        rec = {"route": "import-core", "id": cid, "workspace": workspace,
               "content_length": request.content_length,
               "chunked": "chunked" in te.lower(),
               "expect": request.headers.get("Expect"),
               "bytes": 0, "sha256": None, "in_progress": True,
               "complete": False, "aborted": False,
               "failed_by_mock": False, "stalled": False}
        self.stats.uploads.append(rec)
        stop, mode = self.stop_point(ctl, ("fail", "stall"))
        h = hashlib.sha256()
        n = 0
        tr = request.transport
        if tr is not None:
            self.streams.add(tr)
        try:
            while stop is None or n < stop:
                want = UPLOAD_READ if stop is None else min(UPLOAD_READ,
                                                            stop - n)
                buf = await request.content.read(want)
                if not buf:
                    break
                h.update(buf)
                n += len(buf)
                rec["bytes"] = n
                call.bytes_in(len(buf))
            if stop is not None and n >= stop:
                if mode == "fail":
                    rec["failed_by_mock"] = True
                    call.mock_failure()
                    log.info("passthrough import-core: abort after %d "
                             "bytes", n)
                    if tr is not None:
                        tr.abort()
                    call.no_status = True
                    return web.Response(status=204)
                rec["stalled"] = True
                await wait_or_gone(request, math.inf)
                raise ConnectionResetError("client gone")
            rec["complete"] = True
        except (Exception, asyncio.CancelledError) as e:
            # Connection lost mid-body (ConnectionResetError set on the
            # payload), bad chunked framing, ...
            rec["aborted"] = True
            self.stats.uploads_aborted += 1
            call.aborted()
            log.info("passthrough import-core: upload aborted after %d "
                     "bytes (%r)", n, e)
            if isinstance(e, asyncio.CancelledError):
                raise
            call.no_status = True
            return web.Response(status=204)
        finally:
            rec["sha256"] = h.hexdigest()
            rec["in_progress"] = False
            self.streams.discard(tr)
        resp = web.StreamResponse(
            status=200, reason="OK",
            headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        await resp.write_eof()
        return resp

    # ---- bulk import / export sockets --------------------------------------

    def era_kinds(self, direction):
        if direction == "export":
            return EXPORT_KINDS
        return IMPORT_KINDS + (("objects",) if self.era.name == "v1a" else ())

    async def h_import_socket(self, request, call):
        return await self.bulk_socket(request, call, "import")

    async def h_export_socket(self, request, call):
        return await self.bulk_socket(request, call, "export")

    async def bulk_socket(self, request, call, direction):
        era, ctl, q = self.era, call.ctl, request.query
        flow = request.match_info["flow"]
        kind = request.match_info["kind"]
        kinds = self.era_kinds(direction)
        token = q.get("token")
        rec = {"route": direction, "flow": flow, "kind": kind,
               "token": token, "authorization":
                   request.headers.get("Authorization"),
               "query": request.rel_url.raw_query_string,
               "workspace_param": q.get("workspace"), "workspace": None,
               "identity": None, "status": None, "open": False,
               "echo": ctl.echo, "close_delay": ctl.close_delay,
               "close_answered": None, "frames_in": 0, "text_frames_in": 0,
               "binary_frames_in": 0, "bytes_in": 0, "frames_out": 0,
               "bytes_out": 0, "bad_frames": 0, "error": None,
               "closed_by": None, "client_close_code": None,
               "client_close_reason": None, "server_close_code": None}
        self.stats.add_socket(rec)
        if era.v2:
            # _RoutedSocketEndpoint.handle: registry, token, authorise.
            if kind not in kinds:
                rec["status"] = 404
                return web.json_response({"error": "unknown kind"},
                                         status=404)
            if not token:               # even under the no-auth regime
                rec["status"] = 401
                return self.refuse_401("")
            identity = await self.v2_identity("Bearer " + token)
            if identity is None:
                rec["status"] = 401
                return self.refuse_401(token)
            if ctl.deny:
                rec["status"] = 403
                return self.refuse_403()
            rec["identity"] = identity
        elif self.args.secret and (token or "") != self.args.secret:
            rec["status"] = 401          # SocketEndpoint.handle @V1
            return self.refuse_401(token or "")

        ws = web.WebSocketResponse(max_msg_size=MAX_MSG_SIZE,
                                   autoclose=not ctl.echo)
        await ws.prepare(request)
        rec["status"] = 101
        rec["open"] = True
        ps = PassSocket(ws, request.transport, rec)
        self.sockets.add(ps)
        try:
            # params = query + match_info from v2.5.8; match_info only
            # before (so ?workspace= was ignored, always "default").
            workspace = (q.get("workspace", "default")
                         if era.bulk_workspace_query else "default")
            rec["workspace"] = workspace
            err = self.bulk_dispatch_error(workspace, flow, kind, kinds)
            if err:
                # The dispatcher raises inside the TaskGroup; the handler's
                # finally closes the open socket (1000).
                rec["error"] = err
                await self.server_close(ws, rec, 1000)
            elif ctl.drop_after == 0:
                self.abort_socket(rec, request.transport)
            elif ctl.echo:
                await self.bulk_echo(ws, rec, ctl)
            elif direction == "import":
                await self.bulk_import(ws, rec, ctl, kind)
            else:
                await self.bulk_export(ws, rec, ctl, kind)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("passthrough %s socket failed", direction)
        finally:
            if ps.closing is not None:
                # /_mock/close: let its close handshake finish first.
                try:
                    await asyncio.wait_for(asyncio.shield(ps.closing), 3.0)
                except Exception:
                    pass
            if not ws.closed:
                try:
                    if rec["closed_by"] is None:
                        await self.server_close(ws, rec, 1000)
                    else:
                        await ws.close()      # after a drop: nothing sent
                except Exception:
                    pass
            if rec["closed_by"] is None:
                rec["closed_by"] = "lost"
            rec["open"] = False
            self.sockets.discard(ps)
        return ws

    def bulk_dispatch_error(self, workspace, flow, kind, kinds):
        """DispatcherManager.process_flow_import/export checks."""
        st = self.state
        if self.era.workspaces:
            if flow not in st.flows.get(st.ws_key(workspace), {}):
                return f"Invalid flow {workspace}/{flow}"
        elif flow not in st.flows.get("default", {}):
            return "Invalid flow"
        if kind not in kinds:
            return "Invalid kind"
        int_kind = kind + ("-load" if kind == "entity-contexts" else "-store")
        if int_kind in self.args.exclude_kinds:
            return "This kind not supported by flow"
        return None

    async def server_close(self, ws, rec, code, reason=""):
        if rec["closed_by"] is None:
            rec["closed_by"] = "server"
        rec["server_close_code"] = code
        await ws.close(code=code, message=reason.encode("utf-8"))
        if rec["client_close_code"] is None and ws.close_code != 1006:
            rec["client_close_code"] = ws.close_code     # the peer's reply

    def transport_of(self, ws):
        return next((ps.transport for ps in self.sockets if ps.ws is ws),
                    None)

    def abort_socket(self, rec, transport):
        """Abrupt TCP close, no close frame."""
        if rec["closed_by"] is None:
            rec["closed_by"] = "drop"
        if transport is not None:
            transport.abort()

    def count_in(self, rec, msg):
        n = len(msg.data) if isinstance(msg.data, bytes) else \
            len(msg.data.encode("utf-8"))
        rec["frames_in"] += 1
        rec["bytes_in"] += n
        if msg.type == WSMsgType.TEXT:
            rec["text_frames_in"] += 1
        else:
            rec["binary_frames_in"] += 1
        self.stats.routes[rec["route"]]["bytes_in"] += n

    def count_out(self, rec, n):
        rec["frames_out"] += 1
        rec["bytes_out"] += n
        self.stats.routes[rec["route"]]["bytes_out"] += n

    async def bulk_read(self, ws, rec, on_frame):
        """The listener loop: frames to on_frame (True = stop); records how
        the socket ended."""
        while True:
            msg = await ws.receive()
            t = msg.type
            if t in (WSMsgType.TEXT, WSMsgType.BINARY):
                self.count_in(rec, msg)
                if await on_frame(msg):
                    return
            elif t == WSMsgType.CLOSE:
                rec["client_close_code"] = msg.data
                rec["client_close_reason"] = msg.extra
                if rec["closed_by"] is None:
                    rec["closed_by"] = "client"
                if rec["echo"]:
                    # mock-only: answer with the client's own code/reason
                    code = msg.data or 1000
                    if rec.get("close_delay"):
                        await asyncio.sleep(rec["close_delay"])
                    tr = self.transport_of(ws)
                    rec["close_answered"] = tr is not None and \
                        not tr.is_closing()
                    rec["server_close_code"] = code
                    await ws.close(code=code,
                                   message=(msg.extra or "").encode("utf-8"))
                elif rec["server_close_code"] is None:
                    rec["server_close_code"] = 1000   # aiohttp autoclose
                return
            elif t == WSMsgType.CLOSING:
                return                  # our own close(), from another task
            elif t == WSMsgType.CLOSED:
                if rec["closed_by"] is None:
                    rec["closed_by"] = "lost"
                return
            else:                       # ERROR, e.g. 1009 oversize
                rec["error"] = repr(msg.data)
                code = getattr(msg.data, "code", None)
                if code is not None and rec["server_close_code"] is None:
                    rec["server_close_code"] = code
                if rec["closed_by"] is None:
                    rec["closed_by"] = "server"
                return

    async def bulk_import(self, ws, rec, ctl, kind):
        """*Import.receive: parse, publish, never reply; a frame it cannot
        decode ends the listener and the socket is closed (1000)."""
        transport = self.transport_of(ws)

        async def on_frame(msg):
            if ctl.drop_after is not None and rec["frames_in"] >= \
                    ctl.drop_after:
                self.abort_socket(rec, transport)
                return True
            if not ctl.lenient:
                try:
                    validate_import(kind, msg.data)
                except Exception as e:
                    rec["bad_frames"] += 1
                    rec["error"] = "%s: %s" % (type(e).__name__, e)
                    await self.server_close(ws, rec, 1000)
                    return True
            return False
        await self.bulk_read(ws, rec, on_frame)

    async def bulk_export(self, ws, rec, ctl, kind):
        """*Export.run: JSON text frames as data arrives (the real socket
        then waits for more; the mock closes after `frames` unless `hold`);
        frames from the client are read and ignored."""
        transport = self.transport_of(ws)

        async def ignore(msg):
            return False
        reader = asyncio.create_task(
            self.bulk_read(ws, rec, ignore))
        try:
            for i in range(ctl.frames):
                if ws.closed or reader.done():
                    break
                if i and ctl.delay:
                    await asyncio.sleep(ctl.delay)
                text = bulk_frame(kind, i, ctl.frame_size)
                await ws.send_str(text)
                self.count_out(rec, len(text))
                if ctl.drop_after is not None and rec["frames_out"] >= \
                        ctl.drop_after:
                    self.abort_socket(rec, transport)
                    break
            if not ws.closed and not reader.done() and rec["closed_by"] \
                    is None:
                if ctl.hold:
                    await reader
                else:
                    await self.server_close(ws, rec, ctl.close_code,
                                            ctl.close_reason)
        except (ConnectionError, RuntimeError) as e:
            log.info("passthrough export: send failed: %r", e)
        finally:
            if not reader.done():
                try:
                    await asyncio.wait_for(asyncio.shield(reader), 1.0)
                except (asyncio.TimeoutError, Exception):
                    reader.cancel()

    async def bulk_echo(self, ws, rec, ctl):
        """Mock-only: every text/binary frame is sent back as it came; a
        client close is answered with the same code and reason."""
        transport = self.transport_of(ws)

        async def echo(msg):
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
                self.count_out(rec, len(msg.data.encode("utf-8")))
            else:
                await ws.send_bytes(msg.data)
                self.count_out(rec, len(msg.data))
            if ctl.drop_after is not None and rec["frames_in"] >= \
                    ctl.drop_after:
                self.abort_socket(rec, transport)
                return True
            if ctl.close_after is not None and rec["frames_out"] >= \
                    ctl.close_after:
                await self.server_close(ws, rec, ctl.close_code,
                                        ctl.close_reason)
                return True
            return False
        await self.bulk_read(ws, rec, echo)

    # ---- /_mock/drop, /_mock/close, shutdown --------------------------------

    def drop_all(self):
        n = 0
        for ps in list(self.sockets):
            self.abort_socket(ps.rec, ps.transport)
            n += 1
        for tr in list(self.streams):
            if tr is not None:
                tr.abort()
                n += 1
        self.streams.clear()
        return n

    async def close_all(self, code):
        socks = list(self.sockets)
        for ps in socks:
            if ps.rec["closed_by"] is None:
                ps.rec["closed_by"] = "server"
            ps.rec["server_close_code"] = code
        tasks = []
        for ps in socks:
            ps.closing = asyncio.create_task(ps.ws.close(
                code=code, message=b"going away"))
            tasks.append(ps.closing)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        return len(socks)


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------

class Server:

    def __init__(self, args):
        self.args = args
        self.era = Era(args.era)
        self.state = State(args, self.era)
        self.stats = Stats()
        self.conns = set()
        self.issued = {}        # credentials issued by login / bootstrap
        self.passthrough = Passthrough(self)

    def make_app(self):
        app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        app.add_routes([
            web.get("/api/v1/socket", self.handle_socket),
            web.get("/_mock/stats", self.handle_stats),
            web.post("/_mock/reset", self.handle_reset),
            web.post("/_mock/drop", self.handle_drop),
            web.post("/_mock/close", self.handle_close),
            web.get("/_mock/passthrough", self.handle_pt_controls),
            web.post("/_mock/passthrough", self.handle_pt_controls),
        ])
        app.add_routes(self.passthrough.routes())
        return app

    # ---- credentials (gw/auth.py IamAuth.authenticate) --------------------

    def resolve_credential(self, token):
        """A non-empty V2 bearer token -> identity, or None.  tg_... = API
        key, else exactly two dots = JWT, else malformed (refused even by
        the no-auth regime)."""
        identity = self.issued.get(token)
        if identity is not None:
            return dict(identity)
        if not (token.startswith("tg_") or token.count(".") == 2):
            return None
        if self.args.token and token not in self.args.token:
            return None
        return {"handle": "mock-user",
                "source": "api-key" if token.startswith("tg_") else "jwt",
                "default_workspace": "default"}

    def anonymous_identity(self):
        """Empty / missing credential: v2.4.26+ no-auth regime only."""
        if self.era.anonymous_possible and self.args.anonymous:
            return {"handle": "anonymous", "source": "anonymous",
                    "default_workspace": "default"}
        return None

    async def handle_socket(self, request):
        st = self.stats
        # yarl decodes the query (`+` -> space, %XX), as in the gateway (Q20).
        query_token = request.query.get("token")    # the value, or None
        auth_header = "Authorization" in request.headers
        if query_token is not None:
            st.query_tokens_seen += 1
            st.last_query_token = request.query.get("token")
        if auth_header:
            st.auth_headers_seen += 1

        if not self.era.v2 and self.args.secret:
            # V1 SocketEndpoint.handle: ?token= must equal GATEWAY_SECRET,
            # checked before the upgrade; the Authorization header is
            # ignored.  aiohttp's HTTPUnauthorized body: "401: Unauthorized".
            if request.query.get("token", "") != self.args.secret:
                st.http_401 += 1
                if self.args.echo_token:
                    return web.HTTPUnauthorized(
                        text="401: Unauthorized (token %s)"
                        % request.query.get("token", ""))
                return web.HTTPUnauthorized()
        # V2: the handshake is always accepted; auth is in-band (§3.2).

        ws = web.WebSocketResponse(max_msg_size=MAX_MSG_SIZE)
        await ws.prepare(request)
        conn = Connection(self, ws, request.transport, query_token,
                          auth_header)
        self.conns.add(conn)
        st.add_conn(conn)
        st.connections_total += 1
        st.connections_open += 1
        st.max_connections_open = max(st.max_connections_open, st.connections_open)
        log.info("connection %d opened", conn.cid)
        try:
            await conn.serve()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %d: handler failed", conn.cid)
        finally:
            conn.teardown()
            log.info("connection %d closed (code %s)", conn.cid,
                     conn.close_code)
        return ws

    async def handle_stats(self, request):
        d = self.stats.snapshot()
        d["passthrough"] = self.stats.passthrough.snapshot(
            self.passthrough.controls)
        return web.json_response(d)

    async def handle_reset(self, request):
        self.stats.reset()
        if request.query.get("state") in ("1", "true", "yes"):
            self.state.reset()
            self.passthrough.reset_state()
            self.issued.clear()
        return web.json_response({"ok": True})

    async def handle_pt_controls(self, request):
        """GET: the passthrough control defaults.  POST {route|"*": {...}}:
        replace them (empty body or {} clears)."""
        if request.method == "POST":
            body = await request.read()
            try:
                new = json.loads(body) if body.strip() else {}
            except ValueError:
                return web.json_response({"ok": False,
                                          "error": "invalid json"},
                                         status=400)
            if not isinstance(new, dict) or not all(
                    isinstance(v, dict) for v in new.values()):
                return web.json_response(
                    {"ok": False, "error": "want {route: {control: value}}"},
                    status=400)
            unknown = [k for k in new if k != "*" and k not in PASS_ROUTES]
            if unknown:
                return web.json_response(
                    {"ok": False, "error": "unknown route(s) %s" % unknown,
                     "routes": list(PASS_ROUTES)}, status=400)
            self.passthrough.controls = new
        return web.json_response({"ok": True,
                                  "controls": self.passthrough.controls})

    async def handle_drop(self, request):
        conns = list(self.conns)
        for c in conns:
            c.abort()
        n = self.passthrough.drop_all()
        return web.json_response({"ok": True, "dropped": len(conns) + n,
                                  "dropped_passthrough": n})

    async def handle_close(self, request):
        conns = list(self.conns)
        tasks = []
        for c in conns:
            c.closing_task = asyncio.create_task(c.close_from_server(1001))
            tasks.append(c.closing_task)
        if tasks:
            # The close frames are written at once; wait (bounded) for the
            # peers' replies so the reply to this POST follows the closes.
            await asyncio.wait(tasks, timeout=2.0)
        n = await self.passthrough.close_all(1001)
        return web.json_response({"ok": True, "closed": len(conns) + n,
                                  "closed_passthrough": n})

    def abort_all(self):
        for c in list(self.conns):
            try:
                if c.transport is not None:
                    c.transport.abort()
                c.teardown()
            except Exception:
                log.exception("abort failed")
        try:
            self.passthrough.drop_all()
        except Exception:
            log.exception("abort failed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Mock TrustGraph api-gateway")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--era", choices=ERA_NAMES, default="v2d")
    p.add_argument("--secret", default=None,
                   help="V1 GATEWAY_SECRET: required ?token= on the socket")
    p.add_argument("--token", action="append", default=[],
                   help="V2 accepted credential (repeatable); without any, "
                        "every well-formed tg_.../JWT-shaped token is accepted")
    p.add_argument("--anonymous", action="store_true",
                   help="V2b+: accept an empty token (no-auth regime)")
    p.add_argument("--flows", default="default",
                   help="comma list of known flow ids")
    p.add_argument("--workspaces", default="default",
                   help="comma list of known workspaces")
    p.add_argument("--exclude-kinds", default="",
                   help="comma list of kinds missing from the flows' "
                        "interfaces (-> 'This kind not supported by flow')")
    p.add_argument("--timeout", type=float, default=0.0,
                   help="gateway idle timeout in seconds (0 = none)")
    p.add_argument("--auth-delay", type=float, default=0.0,
                   help="simulated inline IAM latency per auth/request frame")
    p.add_argument("--tls-cert", default=None,
                   help="serve TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", default=None,
                   help="PEM private key for --tls-cert")
    p.add_argument("--user", action="append", default=[],
                   metavar="NAME:PASSWORD",
                   help="V2 IAM user for POST /api/v1/auth/login "
                        "(repeatable; default none)")
    p.add_argument("--bootstrap", action="store_true",
                   help="V2 IAM in bootstrap mode with empty tables: "
                        "bootstrap-status true until POST "
                        "/api/v1/auth/bootstrap consumes it")
    p.add_argument("--echo-token", action="store_true",
                   help="hostile: every refusal quotes the credential it got "
                        "(auth-failed, policy errors, the V1 401 body)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")

    def csv(s):
        return [x.strip() for x in s.split(",") if x.strip()]
    users = []
    for u in a.user:
        name, sep, pw = u.partition(":")
        if not sep or not name:
            p.error("--user wants NAME:PASSWORD, got %r" % u)
        users.append((name, pw))
    a.user = users
    a.flows = csv(a.flows)
    a.workspaces = csv(a.workspaces)
    a.exclude_kinds = csv(a.exclude_kinds)
    return a


async def amain(args):
    server = Server(args)
    app = server.make_app()
    runner = web.AppRunner(
        app, access_log=logging.getLogger("aiohttp.access")
        if args.verbose else None, handle_signals=False)
    await runner.setup()
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    site = web.TCPSite(runner, args.host, args.port, shutdown_timeout=0.5,
                       ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    log.info("mock gateway (era %s) listening on %s:%d", args.era,
             args.host, port)

    loop = asyncio.get_running_loop()

    def on_loop_exception(loop, context):
        log.error("unhandled: %s", context.get("message"),
                  exc_info=context.get("exception"))
    loop.set_exception_handler(on_loop_exception)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Gateway shutdown: no close frames, sockets just go away (§2.4).
    server.abort_all()
    try:
        await asyncio.wait_for(runner.cleanup(), 2.0)
    except Exception:
        pass


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s mock_gateway %(levelname)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_QuietMockInternal())
    try:
        asyncio.run(amain(args))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    # Never hang on stray tasks at interpreter exit.
    os._exit(0)


if __name__ == "__main__":
    main()
