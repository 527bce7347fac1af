"""Fakes for tests, shipped with the package (fakes over mocks).

- Event builders (``post``, ``like``, ``repost``, ``follow``, ``block``, ``identity``) that
  produce the same ``Event`` a Jetstream line would, with real-looking TIDs and CIDs.
- ``ListSource``: a finite Source over a list of events.
- ``FakeClock``: an injectable ``clock`` (and ``sleep``) whose time moves only when told.
- ``FakeModel``: a Model with scripted answers that records every prompt.
- ``RecordingPoster``: a Poster that records replies and can be told to fail.
- ``FakeVendorServer``: a loopback HTTP server answering OpenAI ``/v1/chat/completions`` and
  Anthropic ``/v1/messages`` (and both vendors' ``GET /v1/models``) with the vendors' real JSON
  shapes, for end-to-end runs of the ``botsky`` command in a subprocess (where an in-process
  ``MockTransport`` cannot reach).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botsky.errors import PostError, PostRateLimited
from botsky.events import BLOCK, FOLLOW, LIKE, POST, PROFILE, REPOST, Event, at_uri
from botsky.ids import synthetic_cid, tid
from botsky.llm.base import Completion, Usage
from botsky.posting import Posted, ReplyPost
from botsky.sources.base import SourceStats

__all__ = [
    "FakeClock",
    "FakeModel",
    "FakeVendorServer",
    "ListSource",
    "RecordingPoster",
    "block",
    "fake_cid",
    "follow",
    "handles_offered",
    "identity",
    "like",
    "post",
    "profile",
    "repost",
    "tid",
]

# The production encoders, under the names tests know: a TID record key for a time, and a
# deterministic CID-shaped string (not a real hash).
fake_cid = synthetic_cid


class FakeClock:
    """A clock for the ``clock=``/``sleep=`` parameters: time moves only when told.

    Call it for the time, in whatever unit the component counts (monotonic seconds, or stream
    microseconds); set ``now`` or ``advance`` to move it. ``await sleep(s)`` records ``s`` in
    ``slept`` and moves the clock by it at once, as if the wait had passed.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> Any:
        # Any: a stream clock wants the int it was started with (``FakeClock(T0)``) back.
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _commit(
    did: str, time_us: int, collection: str, record: dict[str, Any], rkey: str = ""
) -> Event:
    rkey = rkey or tid(time_us)
    return Event(
        did=did,
        time_us=time_us,
        kind="commit",
        cursor=time_us,
        operation="create",
        collection=collection,
        rkey=rkey,
        cid=fake_cid(f"{did}/{collection}/{rkey}"),
        record=record,
        rev=tid(time_us, 1),
    )


def _created_at(time_us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time_us / 1e6)) + ".000Z"


def post(
    did: str,
    time_us: int,
    text: str,
    *,
    langs: Sequence[str] = ("en",),
    reply_to: Event | None = None,
    root: Event | None = None,
    mentions: Iterable[tuple[str, str]] = (),
    quote: Event | None = None,
    rkey: str = "",
) -> Event:
    """A new post; ``reply_to`` makes it a reply (root defaults to the parent's root)."""
    record: dict[str, Any] = {"$type": POST, "text": text, "createdAt": _created_at(time_us)}
    if langs:
        record["langs"] = list(langs)
    if reply_to is not None:
        parent_ref = {"uri": reply_to.uri, "cid": reply_to.cid}
        parent_reply = (reply_to.record or {}).get("reply")
        root_ref = (
            {"uri": root.uri, "cid": root.cid}
            if root is not None
            else parent_reply["root"]
            if isinstance(parent_reply, dict)
            else parent_ref
        )
        record["reply"] = {"root": root_ref, "parent": parent_ref}
    facets = []
    for mdid, handle in mentions:
        start = text.encode().find(f"@{handle}".encode())
        if start >= 0:
            facets.append(
                {
                    "$type": "app.bsky.richtext.facet",
                    "index": {"byteStart": start, "byteEnd": start + len(handle.encode()) + 1},
                    "features": [{"$type": "app.bsky.richtext.facet#mention", "did": mdid}],
                }
            )
    if facets:
        record["facets"] = facets
    if quote is not None:
        record["embed"] = {
            "$type": "app.bsky.embed.record",
            "record": {"uri": quote.uri, "cid": quote.cid},
        }
    return _commit(did, time_us, POST, record, rkey)


def _subject_ref(uri: str, cid: str) -> dict[str, str]:
    return {"uri": uri, "cid": cid}


def like(did: str, time_us: int, subject_uri: str, subject_cid: str = "") -> Event:
    record = {
        "$type": LIKE,
        "subject": _subject_ref(subject_uri, subject_cid or fake_cid(subject_uri)),
        "createdAt": _created_at(time_us),
    }
    return _commit(did, time_us, LIKE, record)


def repost(did: str, time_us: int, subject_uri: str, subject_cid: str = "") -> Event:
    record = {
        "$type": REPOST,
        "subject": _subject_ref(subject_uri, subject_cid or fake_cid(subject_uri)),
        "createdAt": _created_at(time_us),
    }
    return _commit(did, time_us, REPOST, record)


def follow(did: str, time_us: int, subject_did: str) -> Event:
    record = {"$type": FOLLOW, "subject": subject_did, "createdAt": _created_at(time_us)}
    return _commit(did, time_us, FOLLOW, record)


def block(did: str, time_us: int, subject_did: str) -> Event:
    record = {"$type": BLOCK, "subject": subject_did, "createdAt": _created_at(time_us)}
    return _commit(did, time_us, BLOCK, record)


def profile(did: str, time_us: int, description: str) -> Event:
    """A profile record (``self``) with this description, as created."""
    record = {"$type": PROFILE, "description": description}
    return _commit(did, time_us, PROFILE, record, rkey="self")


def identity(did: str, time_us: int, handle: str) -> Event:
    return Event(did=did, time_us=time_us, kind="identity", cursor=time_us, handle=handle)


class ListSource:
    """A finite Source over a list of events (ends when the list does)."""

    def __init__(self, events: Iterable[Event], name: str = "list") -> None:
        self.name = name
        self.stats = SourceStats()
        self._events = list(events)

    async def __aiter__(self) -> AsyncIterator[Event]:
        for event in self._events:
            self.stats.events += 1
            yield event

    async def aclose(self) -> None:
        return None


# The reply prompt lists candidates one per line starting with "@handle"; the fakes read them
# back so a scripted model can "choose" like a real one would.
_CANDIDATE_LINE = re.compile(r"^\s*(?:[-*]\s*|\d+[.)]\s*)?@([a-z0-9][a-z0-9.-]*[a-z0-9])\b", re.M)


def handles_offered(user_prompt: str) -> list[str]:
    """The candidate handles listed in a reply prompt's <candidates> block, in order."""
    start = user_prompt.rfind("<candidates>")
    end = user_prompt.rfind("</candidates>")
    block = user_prompt[start:end] if 0 <= start < end else ""
    return list(dict.fromkeys(_CANDIDATE_LINE.findall(block)))


def _default_answer(system: str, user: str) -> dict[str, Any]:
    handles = handles_offered(user)
    chosen = handles[0] if handles else "nobody.invalid"
    return {"reply": f"Good point! @{chosen} knows a lot about this.", "mention": chosen}


Answer = dict[str, Any] | Exception | Callable[[str, str], "dict[str, Any] | Exception"]


@dataclass
class FakeModel:
    """A scripted Model: each call takes the next answer (a dict, an exception, or a function
    of the prompts); when the script runs out it mentions the first candidate offered."""

    provider: str = "fake"
    model: str = "fake-1"
    answers: deque[Answer] = field(default_factory=deque)
    calls: list[tuple[str, str]] = field(default_factory=list)
    prompt_tokens: int = 100
    completion_tokens: int = 20
    cost_usd: float = 0.001

    def script(self, *answers: Answer) -> FakeModel:
        self.answers.extend(answers)
        return self

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        self.calls.append((system, user))
        answer: Any = self.answers.popleft() if self.answers else _default_answer
        if callable(answer) and not isinstance(answer, Exception):
            answer = answer(system, user)
        if isinstance(answer, Exception):
            raise answer
        usage = Usage(self.prompt_tokens, self.completion_tokens, self.cost_usd, 1.0)
        return Completion(data=dict(answer), usage=usage, raw=json.dumps(answer))

    async def aclose(self) -> None:
        return None


@dataclass
class RecordingPoster:
    """Records every reply; ``fail_with`` exceptions are raised by the next calls, in order."""

    posted: list[ReplyPost] = field(default_factory=list)
    fail_with: deque[Exception] = field(default_factory=deque)

    async def reply(self, p: ReplyPost) -> Posted:
        if self.fail_with:
            raise self.fail_with.popleft()
        rkey = p.rkey or tid(int(time.time() * 1e6), len(self.posted))
        uri = at_uri(p.bot_did, POST, rkey)
        self.posted.append(p)
        return Posted(uri=uri, cid=fake_cid(uri))

    async def lookup(self, bot_did: str, rkey: str, parent_uri: str) -> Posted | None:
        for p in self.posted:
            if p.bot_did == bot_did and p.rkey == rkey and p.parent.uri == parent_uri:
                uri = at_uri(bot_did, POST, rkey)
                return Posted(uri=uri, cid=fake_cid(uri))
        return None

    async def aclose(self) -> None:
        return None


__all__ += ["PostError", "PostRateLimited"]  # re-exported for scripting poster failures


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout under test) leaves a broken pipe: not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeVendorServer:
    """OpenAI- and Anthropic-shaped model API on 127.0.0.1, in a thread.

    ``choose(system, user)`` returns the answer object (default: mention the first candidate).
    ``fail_next`` holds ``(status, headers, body)`` tuples answered before normal replies (the
    models list included); ``delay`` makes every answer slow. ``port`` binds a given port (a
    server that comes back where a client expects it). Every completion request is kept in
    ``requests`` (``path``, ``body``), every models listing (a health check) in ``checks``.
    """

    def __init__(
        self,
        choose: Callable[[str, str], dict[str, Any]] = _default_answer,
        delay: float = 0.0,
        port: int = 0,
    ) -> None:
        self.choose = choose
        self.delay = delay  # seconds before each answer: a slow model
        # Drawn for each completion (not the models listing): a model of varying latency.
        self.answer_delay: Callable[[], float] | None = None
        self.in_flight = 0  # completions being answered right now
        self._lock = threading.Lock()
        self.fail_next: deque[tuple[int, dict[str, str], dict[str, Any]]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.checks: list[str] = []
        self._server = _QuietServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True  # a client that hangs up must not block shutdown
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeVendorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _list_models(self, path: str, anthropic: bool) -> tuple[int, dict[str, str], Any]:
        self.checks.append(path)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_next:
            return self.fail_next.popleft()
        if not path.split("?")[0].endswith("/models"):
            return 404, {}, {"error": {"message": "not found", "type": "invalid_request_error"}}
        return 200, {}, _anthropic_models() if anthropic else _openai_models()

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        self.requests.append({"path": path, "body": body})
        with self._lock:
            self.in_flight += 1
        try:
            if self.delay:
                time.sleep(self.delay)
            if self.answer_delay is not None:
                time.sleep(self.answer_delay())
            return self._reply(path, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if self.fail_next:
            return self.fail_next.popleft()
        if path.endswith("/chat/completions"):
            system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
            user = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
            answer = self.choose(system, user)
            return 200, {}, _openai_completion(body.get("model", ""), answer)
        if path.endswith("/messages"):
            system = body.get("system", "")
            if isinstance(system, list):
                system = "".join(b.get("text", "") for b in system)
            user = "".join(
                m["content"]
                if isinstance(m["content"], str)
                else "".join(b.get("text", "") for b in m["content"])
                for m in body["messages"]
                if m["role"] == "user"
            )
            tool = body.get("tools", [{}])[0].get("name", "answer")
            return (
                200,
                {},
                _anthropic_message(body.get("model", ""), tool, self.choose(system, user)),
            )
        return 404, {}, {"error": {"message": "not found", "type": "invalid_request_error"}}

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # Anthropic's SDK sends anthropic-version; OpenAI's does not.
                anthropic = "anthropic-version" in self.headers
                self._send(*server._list_models(self.path, anthropic))

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                self._send(*server._answer(self.path, body))

            def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


def _openai_models() -> dict[str, Any]:
    # The shape of GET /v1/models (a list object of model objects).
    return {
        "object": "list",
        "data": [{"id": "fake-1", "object": "model", "created": 1700000000, "owned_by": "fake"}],
    }


def _anthropic_models() -> dict[str, Any]:
    # The shape of Anthropic's GET /v1/models (a page of model infos).
    return {
        "data": [
            {
                "type": "model",
                "id": "fake-1",
                "display_name": "Fake 1",
                "created_at": "2025-01-01T00:00:00Z",
            }
        ],
        "has_more": False,
        "first_id": "fake-1",
        "last_id": "fake-1",
    }


def _openai_completion(model: str, answer: dict[str, Any]) -> dict[str, Any]:
    # The shape of a real chat.completion object (structured output puts JSON in `content`).
    return {
        "id": "chatcmpl-" + hashlib.sha1(json.dumps(answer).encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": json.dumps(answer), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 412,
            "completion_tokens": 38,
            "total_tokens": 450,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_fake",
    }


def _anthropic_message(model: str, tool: str, answer: dict[str, Any]) -> dict[str, Any]:
    # The shape of a real Messages API response with a forced tool call.
    return {
        "id": "msg_" + hashlib.sha1(json.dumps(answer).encode()).hexdigest()[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "tool_use", "id": "toolu_fake", "name": tool, "input": answer}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 398,
            "output_tokens": 41,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
