"""``botsky accounts``: check that every bot can log in, and give bot profiles the ``bot`` label.

``check`` logs every bot in (reusing the saved sessions, see ``botsky.posting.atproto``) and prints
one line per bot: name, handle, DID and whether the session was reused or created; it exits 1
if any bot fails. ``label`` adds the ``bot`` self-label to each bot's
``app.bsky.actor.profile/self`` record, keeping every other field, with ``swapRecord`` so a
concurrent profile edit is never overwritten.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from botsky.cliutil import config_option, load_or_exit
from botsky.errors import BotskyError
from botsky.events import PROFILE
from botsky.posting import BotSession, bot_sessions

__all__ = ["AccountStatus", "accounts", "add_bot_label", "check_sessions", "label_bots"]

SELF_LABELS = "com.atproto.label.defs#selfLabels"


@dataclass(frozen=True)
class AccountStatus:
    """One bot's login result: ``session`` is reused, created, relogged or failed."""

    bot: str
    handle: str
    did: str
    session: str
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def line(self) -> str:
        if self.error:
            return f"{self.bot}\t{self.handle}\tFAILED\t{self.error}"
        return f"{self.bot}\t{self.handle}\t{self.did}\tsession {self.session}"


def add_bot_label(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The profile record with the ``bot`` self-label added, or None if it already has it.

    Pure: every other field (and any other self-label) is kept as it was.
    """
    profile: dict[str, Any] = dict(record or {})
    profile.setdefault("$type", PROFILE)
    labels = profile.get("labels")
    if isinstance(labels, dict) and labels.get("$type") == SELF_LABELS:
        values = [v for v in labels.get("values") or [] if isinstance(v, dict)]
        if any(v.get("val") == "bot" for v in values):
            return None
        profile["labels"] = {**labels, "values": [*values, {"val": "bot"}]}
    else:
        profile["labels"] = {"$type": SELF_LABELS, "values": [{"val": "bot"}]}
    return profile


async def check_sessions(sessions: list[BotSession]) -> list[AccountStatus]:
    """Open every session (reuse or log in); one status per bot, failures included."""
    from atproto_client.exceptions import AtProtocolError

    out = []
    for s in sessions:
        try:
            await s.open()
        except (AtProtocolError, BotskyError) as exc:
            out.append(AccountStatus(s.bot, s.handle, "", "failed", str(exc) or type(exc).__name__))
        else:
            out.append(AccountStatus(s.bot, s.handle, s.did, s.status))
    return out


async def label_bots(sessions: list[BotSession]) -> dict[str, str]:
    """Give each (opened) bot's profile the ``bot`` self-label; bot → added | already."""
    from atproto_client.exceptions import BadRequestError

    result = {}
    for s in sessions:
        current: dict[str, Any] | None = None
        swap: str | None = None
        try:
            got = await s.query(
                "com.atproto.repo.getRecord",
                {"repo": s.did, "collection": PROFILE, "rkey": "self"},
            )
            current, swap = got.get("value"), got.get("cid")
        except BadRequestError as exc:
            content = getattr(exc.response, "content", None)
            if getattr(content, "error", None) != "RecordNotFound":
                raise
        record = add_bot_label(current)
        if record is None:
            result[s.bot] = "already"
            continue
        data: dict[str, Any] = {
            "repo": s.did,
            "collection": PROFILE,
            "rkey": "self",
            "record": record,
            "swapRecord": swap,  # None: the record must not exist yet
        }
        await s.procedure("com.atproto.repo.putRecord", data)
        result[s.bot] = "added"
    return result


def _sessions(config_path: Path | None) -> list[BotSession]:
    from botsky.wiring import live_accounts

    # live=True: every bot has its password, or the command has exited with the problems.
    loaded, secrets = load_or_exit(config_path, live=True)
    st = loaded.settings
    accounts = live_accounts(loaded, secrets)
    return bot_sessions(accounts, pds_url=st.posting.pds_url, data_dir=st.data_dir)


_config_option = config_option()


@click.group("accounts")
def accounts() -> None:
    """The bots' Bluesky accounts: login check and the bot self-label."""


@accounts.command("check")
@_config_option
def check_cmd(config_path: Path | None) -> None:
    """Log every bot in (reusing saved sessions); print DID and session; exit 1 on failure."""
    sessions = _sessions(config_path)

    async def _main() -> list[AccountStatus]:
        try:
            return await check_sessions(sessions)
        finally:
            for s in sessions:
                await s.aclose()

    statuses = asyncio.run(_main())
    for st in statuses:
        click.echo(st.line())
    if not all(st.ok for st in statuses):
        sys.exit(1)


@accounts.command("label")
@_config_option
def label_cmd(config_path: Path | None) -> None:
    """Add the "bot" self-label to every bot's profile, keeping its other fields."""
    sessions = _sessions(config_path)

    async def _main() -> tuple[list[AccountStatus], dict[str, str]]:
        try:
            statuses = await check_sessions(sessions)
            opened = [s for s, st in zip(sessions, statuses, strict=True) if st.ok]
            return statuses, await label_bots(opened)
        finally:
            for s in sessions:
                await s.aclose()

    try:
        statuses, labelled = asyncio.run(_main())
    except Exception as exc:
        click.echo(f"botsky: labelling failed: {exc}", err=True)
        sys.exit(1)
    for st in statuses:
        click.echo(f"{st.bot}\t{st.handle}\t{labelled.get(st.bot, 'FAILED: ' + st.error)}")
    if not all(st.ok for st in statuses):
        sys.exit(1)
