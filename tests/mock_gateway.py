#!/usr/bin/python3
"""Mock TrustGraph api-gateway: the ``/api/v1/socket`` multiplexed WebSocket.

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

    /usr/bin/python3 tests/mock_gateway.py [--host 127.0.0.1] [--port 0]
        [--era v1a|v1b|v1c|v2a|v2b|v2c|v2d] [--secret S] [--token T]... [--echo-token]
        [--anonymous] [--flows default,...] [--workspaces default,...]
        [--exclude-kinds k,...] [--timeout SECONDS] [--auth-delay SECONDS]
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
                      reader_stalled, window_full, max_span, close_code]
  POST /_mock/reset   zero counters, forget closed connections
                      (?state=1 also restores flows/config/documents)
  POST /_mock/drop    abort every open socket (no close frame)
  POST /_mock/close   close every open socket with close frame 1001
"""

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import logging
import math
import os
import signal
import ssl
import sys
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
)


class Stats:

    def __init__(self):
        self.conns = collections.OrderedDict()     # id -> Connection
        self.next_conn_id = 1
        self.reset()

    def reset(self):
        for k in GLOBAL_COUNTERS:
            setattr(self, k, 0)
        self.last_query_token = None
        self.last_envelopes = collections.deque(maxlen=LAST_ENVELOPES)
        # Forget closed connections; zero the counters of open ones.
        for cid in [c for c, conn in self.conns.items() if not conn.open]:
            del self.conns[cid]
        self.connections_open = 0
        for conn in self.conns.values():
            conn.reset_counters()
            self.connections_open += 1

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
    if op == "bootstrap-status":
        return [({"bootstrap_available": False}, True)]
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
        identity = None
        if not token:
            # Anonymous: v2.4.26+, and only under the no-auth regime.
            if self.era.anonymous_possible and self.args.anonymous:
                identity = {"handle": "anonymous", "source": "anonymous",
                            "default_workspace": "default"}
        elif token.startswith("tg_") or token.count(".") == 2:
            # API key / JWT shape.  Accepted if configured (--token); with
            # no --token at all any well-formed credential is accepted.
            if not self.args.token or token in self.args.token:
                identity = {
                    "handle": "mock-user",
                    "source": "api-key" if token.startswith("tg_") else "jwt",
                    "default_workspace": "default"}
        # else: malformed credential -> failure even under no-auth (Q11).
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
# HTTP server
# --------------------------------------------------------------------------

class Server:

    def __init__(self, args):
        self.args = args
        self.era = Era(args.era)
        self.state = State(args, self.era)
        self.stats = Stats()
        self.conns = set()

    def make_app(self):
        app = web.Application()
        app.add_routes([
            web.get("/api/v1/socket", self.handle_socket),
            web.get("/_mock/stats", self.handle_stats),
            web.post("/_mock/reset", self.handle_reset),
            web.post("/_mock/drop", self.handle_drop),
            web.post("/_mock/close", self.handle_close),
        ])
        return app

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
        return web.json_response(self.stats.snapshot())

    async def handle_reset(self, request):
        self.stats.reset()
        if request.query.get("state") in ("1", "true", "yes"):
            self.state.reset()
        return web.json_response({"ok": True})

    async def handle_drop(self, request):
        conns = list(self.conns)
        for c in conns:
            c.abort()
        return web.json_response({"ok": True, "dropped": len(conns)})

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
        return web.json_response({"ok": True, "closed": len(conns)})

    def abort_all(self):
        for c in list(self.conns):
            try:
                if c.transport is not None:
                    c.transport.abort()
                c.teardown()
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
    p.add_argument("--echo-token", action="store_true",
                   help="hostile: every refusal quotes the credential it got "
                        "(auth-failed, policy errors, the V1 401 body)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")

    def csv(s):
        return [x.strip() for x in s.split(",") if x.strip()]
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
