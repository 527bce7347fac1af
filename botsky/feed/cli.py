"""``botsky feed``: publish the generator record, check the feed like the AppView, show figures.

- ``publish`` logs the publisher account in (``feed.publisher``; sessions kept like the bots')
  and writes or updates ``app.bsky.feed.generator/<rkey>`` with ``putRecord`` and
  ``swapRecord``, keeping the first ``createdAt``; nothing is written when nothing changed.
- ``check`` does what the AppView does before it calls a feed: resolves the service's did:web
  document and its ``#bsky_fg`` service, reads the generator record from the publisher's PDS
  (found through the publisher's DID document), calls ``describeFeedGenerator`` and
  ``getFeedSkeleton`` (anonymously, and with a service token the publisher's PDS mints, unless
  ``--no-auth``), within the AppView's 10 s, and checks every answer's shape. One line per
  check; exit 1 if any fails.
- ``scores`` prints the per-arm engagement per seen impression (``--json`` for machines).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from botsky.cliutil import config_option, or_exit
from botsky.config import FeedConfig, Settings
from botsky.errors import BotskyError
from botsky.syntax import is_valid_at_uri

__all__ = ["build_record", "feed", "record_problems"]

GENERATOR = "app.bsky.feed.generator"
_CONTENT_MODES = {
    "unspecified": "app.bsky.feed.defs#contentModeUnspecified",
    "video": "app.bsky.feed.defs#contentModeVideo",
}
_APPVIEW_TIMEOUT_S = 10.0  # how long the AppView waits for a feed skeleton

_config_option = config_option()
_pds_option = click.option(
    "--pds",
    "pds_url",
    default=None,
    help="The publisher's PDS (default: posting.pds_url).",
)


def build_record(cfg: FeedConfig, created_at: str) -> dict[str, Any]:
    """The ``app.bsky.feed.generator`` record for ``cfg`` (pure)."""
    return {
        "$type": GENERATOR,
        "did": cfg.service_did,
        "displayName": cfg.display_name,
        "description": cfg.description,
        "acceptsInteractions": cfg.accepts_interactions,
        "contentMode": _CONTENT_MODES[cfg.content_mode],
        "createdAt": created_at,
    }


def record_problems(record: object, cfg: FeedConfig) -> list[str]:
    """What is wrong with a generator record, checked against the lexicon and ``cfg``."""
    from botsky.compose import grapheme_len

    if not isinstance(record, dict):
        return ["the record is not an object"]
    problems = []
    if record.get("$type") != GENERATOR:
        problems.append(f"$type is {record.get('$type')!r}, not {GENERATOR}")
    if record.get("did") != cfg.service_did:
        problems.append(f"did is {record.get('did')!r}, not the service's {cfg.service_did}")
    name = record.get("displayName")
    if not isinstance(name, str) or not name or grapheme_len(name) > 24 or len(name) > 240:
        problems.append("displayName must be 1-24 graphemes")
    desc = record.get("description")
    if desc is not None and (not isinstance(desc, str) or grapheme_len(desc) > 300):
        problems.append("description must be at most 300 graphemes")
    if record.get("acceptsInteractions") is not cfg.accepts_interactions:
        problems.append(f"acceptsInteractions is not {cfg.accepts_interactions}")
    if record.get("contentMode") not in (None, *_CONTENT_MODES.values()):
        problems.append(f"contentMode {record.get('contentMode')!r} is not a known value")
    if not isinstance(record.get("createdAt"), str):
        problems.append("createdAt is missing")
    return problems


# --- loading ---------------------------------------------------------------------------------


def _settings(config_path: Path | None) -> tuple[Settings, Path]:
    from botsky.configload import load_config

    loaded = or_exit(load_config, config_path)
    st = loaded.settings
    problems = []
    if st.feed.service_did is None:
        problems.append("feed.service_did is not set (a did:web, e.g. did:web:feed.example.com)")
    if st.feed.publisher is None or not st.feed.publisher.did:
        problems.append("feed.publisher (handle, did, password_env) is not set")
    if problems:
        _fail(problems)
    return st, loaded.path.parent


def _fail(lines: list[str]) -> Any:
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


def _session(st: Settings, base: Path, pds_url: str | None) -> Any:
    from botsky.configload import account_password
    from botsky.logs import configure_logging, register_secret
    from botsky.posting.atproto import BotSession

    # The command's answer is stdout; the session's log lines (logins) go to stderr.
    configure_logging(level=st.logging.level, fmt=st.logging.format, stream=sys.stderr)

    account = st.feed.publisher
    assert account is not None
    if account.password_file is not None and not account.password_file.is_absolute():
        account = account.model_copy(update={"password_file": base / account.password_file})
    password = or_exit(account_password, account, "feed.publisher")
    register_secret(password.get_secret_value())  # never in a log line
    return BotSession(
        bot="feed-publisher",
        handle=account.handle,
        password=password,
        pds_url=pds_url or st.posting.pds_url,
        data_dir=st.data_dir,
        expected_did=account.did,
    )


@click.group("feed")
def feed() -> None:
    """The fair-exposure feed: publish its record, check it like the AppView, its figures."""


# --- publish ---------------------------------------------------------------------------------


@feed.command("publish")
@_config_option
@_pds_option
def publish_cmd(config_path: Path | None, pds_url: str | None) -> None:
    """Write (or update) the feed's app.bsky.feed.generator record in the publisher's repo."""
    st, base = _settings(config_path)
    session = _session(st, base, pds_url)

    async def _main() -> tuple[str, str, str]:
        try:
            await session.open()
            return await publish(session, st.feed)
        finally:
            await session.aclose()

    try:
        uri, cid, what = asyncio.run(_main())
    except Exception as exc:
        click.echo(f"botsky: publishing the feed record failed: {_why(exc)}", err=True)
        sys.exit(1)
    click.echo(f"{what}\t{uri}\t{cid}")


async def publish(session: Any, cfg: FeedConfig) -> tuple[str, str, str]:
    """putRecord the generator record; returns (uri, cid, created|updated|unchanged)."""
    from atproto_client.exceptions import BadRequestError

    current: dict[str, Any] | None = None
    swap: str | None = None
    try:
        got = await session.query(
            "com.atproto.repo.getRecord",
            {"repo": session.did, "collection": GENERATOR, "rkey": cfg.rkey},
        )
        current, swap = got.get("value"), got.get("cid")
    except BadRequestError as exc:
        content = getattr(exc.response, "content", None)
        if getattr(content, "error", None) != "RecordNotFound":
            raise
    created_at = (current or {}).get("createdAt")
    if not isinstance(created_at, str):
        created_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    record = build_record(cfg, created_at)
    uri = f"at://{session.did}/{GENERATOR}/{cfg.rkey}"
    if current is not None and {k: current.get(k) for k in record} == record:
        return uri, str(swap), "unchanged"
    out = await session.procedure(
        "com.atproto.repo.putRecord",
        {
            "repo": session.did,
            "collection": GENERATOR,
            "rkey": cfg.rkey,
            "record": record,
            "swapRecord": swap,  # None: the record must not exist yet
        },
    )
    return str(out["uri"]), str(out["cid"]), "created" if current is None else "updated"


def _why(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    content = getattr(response, "content", None)
    message = getattr(content, "message", None) or getattr(content, "error", None)
    return str(message or exc) or type(exc).__name__


# --- check -----------------------------------------------------------------------------------


@dataclass
class _Report:
    failed: int = 0

    def line(self, ok: bool, what: str, detail: str = "") -> bool:
        if not ok:
            self.failed += 1
        tail = "\t" + detail if detail else ""
        click.echo(f"{'ok  ' if ok else 'FAIL'}\t{what}{tail}")
        return ok


def did_web_url(did: str) -> str:
    """The did.json URL of a did:web (http for localhost, as atproto's resolver does)."""
    host = did.removeprefix("did:web:")
    if ":" in host:
        raise ValueError("did:web with a path is not supported by atproto")
    host = host.replace("%3A", ":")
    local = host == "localhost" or host.startswith("localhost:")
    return f"{'http' if local else 'https'}://{host}/.well-known/did.json"


@feed.command("check")
@_config_option
@_pds_option
@click.option("--no-auth", is_flag=True, help="Skip the authenticated skeleton call.")
def check_cmd(config_path: Path | None, pds_url: str | None, no_auth: bool) -> None:
    """Verify the DID document, the record and the endpoint the way the AppView would."""
    st, base = _settings(config_path)
    session = None if no_auth else _session(st, base, pds_url)
    report = _Report()
    try:
        asyncio.run(_check(st, report, session))
    except BotskyError as exc:
        report.line(False, "check", str(exc))
    if report.failed:
        sys.exit(1)


async def _check(st: Settings, report: _Report, session: Any) -> None:
    cfg = st.feed
    assert cfg.service_did is not None and cfg.publisher is not None
    uri = cfg.feed_uri
    async with httpx.AsyncClient(timeout=_APPVIEW_TIMEOUT_S, follow_redirects=False) as http:
        endpoint = await _check_did_doc(http, cfg.service_did, report)
        await _check_record(http, st, uri, report)
        if endpoint is None:
            return
        await _check_describe(http, endpoint, cfg.service_did, uri, report)
        await _check_skeleton(http, endpoint, uri, None, report)
        if session is not None:
            try:
                await session.open()
                token = await session.query(
                    "com.atproto.server.getServiceAuth",
                    {"aud": cfg.service_did, "lxm": "app.bsky.feed.getFeedSkeleton"},
                )
            except Exception as exc:
                report.line(False, "service token from the publisher's PDS", _why(exc))
                return
            finally:
                await session.aclose()
            await _check_skeleton(http, endpoint, uri, str(token["token"]), report)


async def _get_json(http: httpx.AsyncClient, url: str, **kw: Any) -> tuple[int, Any, float]:
    t0 = time.monotonic()
    resp = await http.get(url, **kw)
    took = time.monotonic() - t0
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
    return resp.status_code, body, took


async def _check_did_doc(http: httpx.AsyncClient, did: str, report: _Report) -> str | None:
    try:
        url = did_web_url(did)
        status, doc, _ = await _get_json(http, url)
    except (ValueError, httpx.HTTPError) as exc:
        report.line(False, "DID document", f"{did}: {exc}")
        return None
    if status != 200 or not isinstance(doc, dict):
        report.line(False, "DID document", f"{url} answered {status}")
        return None
    if doc.get("id") != did:
        report.line(False, "DID document", f"id is {doc.get('id')!r}, not {did}")
        return None
    raw_services = doc.get("service")
    services = raw_services if isinstance(raw_services, list) else []
    fg = next(
        (
            s
            for s in services
            if isinstance(s, dict) and s.get("id") in ("#bsky_fg", f"{did}#bsky_fg")
        ),
        None,
    )
    if fg is None or fg.get("type") != "BskyFeedGenerator":
        report.line(False, "DID document", "no #bsky_fg service of type BskyFeedGenerator")
        return None
    endpoint = fg.get("serviceEndpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://localhost")):
        report.line(False, "DID document", f"serviceEndpoint {endpoint!r} is not an https URL")
        return None
    report.line(True, "DID document", f"{url}: #bsky_fg at {endpoint}")
    return endpoint.rstrip("/")


async def _check_record(http: httpx.AsyncClient, st: Settings, uri: str, report: _Report) -> None:
    from atproto_identity.did.resolver import AsyncDidResolver

    cfg = st.feed
    assert cfg.publisher is not None and cfg.publisher.did is not None
    try:
        data = await AsyncDidResolver(plc_url=st.identity.plc_url).resolve_atproto_data(
            cfg.publisher.did
        )
        pds = str(data.pds).rstrip("/")
    except Exception as exc:
        report.line(False, "generator record", f"cannot resolve {cfg.publisher.did}: {exc}")
        return
    try:
        status, body, _ = await _get_json(
            http,
            f"{pds}/xrpc/com.atproto.repo.getRecord",
            params={"repo": cfg.publisher.did, "collection": GENERATOR, "rkey": cfg.rkey},
        )
    except httpx.HTTPError as exc:
        report.line(False, "generator record", f"{pds}: {exc}")
        return
    if status != 200 or not isinstance(body, dict):
        hint = " (run `botsky feed publish`)" if status == 400 else ""
        report.line(False, "generator record", f"{uri}: getRecord answered {status}{hint}")
        return
    problems = record_problems(body.get("value"), cfg)
    report.line(not problems, "generator record", "; ".join(problems) or uri)


async def _check_describe(
    http: httpx.AsyncClient, endpoint: str, did: str, uri: str, report: _Report
) -> None:
    try:
        status, body, _ = await _get_json(
            http, f"{endpoint}/xrpc/app.bsky.feed.describeFeedGenerator"
        )
    except httpx.HTTPError as exc:
        report.line(False, "describeFeedGenerator", str(exc))
        return
    feeds = body.get("feeds") if isinstance(body, dict) else None
    listed = isinstance(feeds, list) and any(
        isinstance(f, dict) and f.get("uri") == uri for f in feeds
    )
    ok = status == 200 and isinstance(body, dict) and body.get("did") == did and listed
    report.line(ok, "describeFeedGenerator", f"did {did}, lists {uri}" if ok else f"{body}")


async def _check_skeleton(
    http: httpx.AsyncClient, endpoint: str, uri: str, token: str | None, report: _Report
) -> None:
    what = f"getFeedSkeleton ({'with a service token' if token else 'anonymous'})"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        status, body, took = await _get_json(
            http,
            f"{endpoint}/xrpc/app.bsky.feed.getFeedSkeleton",
            params={"feed": uri, "limit": 10},
            headers=headers,
        )
    except httpx.HTTPError as exc:
        report.line(False, what, f"{type(exc).__name__}: {exc}")
        return
    problems = skeleton_problems(status, body)
    detail = f"{len(body['feed'])} items in {took * 1000:.0f} ms" if not problems else ""
    report.line(not problems, what, "; ".join(problems) or detail)


def skeleton_problems(status: int, body: object) -> list[str]:
    """What is wrong with a getFeedSkeleton answer, by the lexicon."""
    if status != 200:
        return [f"answered {status}: {body}"]
    if not isinstance(body, dict) or not isinstance(body.get("feed"), list):
        return ["no feed array"]
    problems = []
    for item in body["feed"]:
        post = item.get("post") if isinstance(item, dict) else None
        if (
            not isinstance(post, str)
            or not is_valid_at_uri(post)
            or "/app.bsky.feed.post/" not in post
        ):
            problems.append(f"item {item!r} is not a post URI")
            break
        context = item.get("feedContext")
        if context is not None and (not isinstance(context, str) or len(context) > 2000):
            problems.append("feedContext must be a string of at most 2000 characters")
            break
    cursor, req_id = body.get("cursor"), body.get("reqId")
    if cursor is not None and not isinstance(cursor, str):
        problems.append("cursor must be a string")
    if req_id is not None and (not isinstance(req_id, str) or len(req_id) > 100):
        problems.append("reqId must be a string of at most 100 characters")
    return problems


# --- scores ----------------------------------------------------------------------------------


@feed.command("scores")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def scores_cmd(config_path: Path | None, as_json: bool) -> None:
    """Engagement per seen impression, per arm, from the ledger."""
    from rich.console import Console

    from botsky.configload import load_config
    from botsky.feed.scores import feed_scores, feed_scores_json, render_feed

    st = or_exit(load_config, config_path).settings
    try:
        counts = asyncio.run(arm_counts(st))
    except BotskyError as exc:
        _fail([f"botsky: {exc}"])
    rows = feed_scores(counts)
    if as_json:
        click.echo(orjson.dumps(feed_scores_json(rows, st.feed.arm_by), option=orjson.OPT_INDENT_2))
    else:
        Console().print(render_feed(rows, st.feed.arm_by))


async def arm_counts(st: Settings) -> list[Any]:
    """The ledger's per-arm exposure counts, read-only (``botsky feed scores``)."""
    from botsky.ledger import open_ledger

    ledger = open_ledger(st.ledger.url, st.data_dir, read_only=True)
    await ledger.open()
    try:
        return await ledger.feed_arm_counts()  # type: ignore[attr-defined]
    finally:
        await ledger.close()
