"""The ``botsky`` command line: ``run``, ``simulate``, ``scores``, ``plan``, ``check-config``,
``accounts``, ``schema``.

With no ``-c``, commands read ``configs/botsky.yaml`` from the working directory (``scores``: the
last run started there, see ``botsky.lastrun``). Logs go to
stdout (JSON lines unless stdout is a terminal); human summaries and tables go to stderr or, for
``scores``, stdout.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from botsky import __version__
from botsky.cliutil import config_option, load_or_exit, or_exit
from botsky.errors import BotskyError, ConfigError
from botsky.stats_cli import scores_options

if TYPE_CHECKING:
    from botsky.config import Settings
    from botsky.configload import LoadedConfig
    from botsky.stats_cli import Rows

__all__ = ["main"]

_config_option = config_option()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="botsky")
def cli() -> None:
    """botsky: a randomized bot army on the AT Protocol, scored as recommenders."""


@cli.command("check-config")
@_config_option
def check_config_cmd(config_path: Path | None) -> None:
    """Validate the YAML files and environment, with no network; exit 1 on any problem.

    Every problem in one pass: both files' fields, app passwords when posting is live, files
    the config names, placeholder secrets and example handles. BOTSKY_* variables that match
    no setting are warnings (they are ignored), with the closest setting's variable.
    """
    from botsky.configload import inspect_config

    report = inspect_config(config_path)
    for line in report.warnings:
        click.echo(f"warning: {line}", err=True)
    if report.problems:
        for line in report.problems:
            click.echo(line, err=True)
        sys.exit(1)
    click.echo("configuration OK")


@cli.command("run")
@_config_option
def run_cmd(config_path: Path | None) -> None:
    """Run the service: read the source, answer eligible posts, record and score mentions."""
    from botsky.configload import env_warnings
    from botsky.lastrun import record_run
    from botsky.logs import configure_logging, is_console
    from botsky.wiring import build_app, freeze_startup_heap

    loaded, secrets = load_or_exit(config_path)
    st = loaded.settings
    for line in env_warnings(also_allowed=[st.posting.kill_switch_env or ""]):
        click.echo(f"warning: {line}", err=True)
    st.data_dir.mkdir(parents=True, exist_ok=True)
    # One summary at the end: for people a table (the run_summary log line stays in the file),
    # for machines the run_summary JSON line alone.
    for_people = is_console(st.logging.format)
    configure_logging(
        level=st.logging.level,
        fmt=st.logging.format,
        file=st.data_dir / st.logging.file if st.logging.file else None,
        file_only=("run_summary",) if for_people else (),
    )

    async def _main() -> None:
        app = await build_app(loaded, secrets)
        record_run(loaded.path, "run")  # `botsky scores` shows this run (botsky.lastrun)
        freeze_startup_heap()
        if st.feed.enabled:
            from botsky.feed import tune_interpreter

            tune_interpreter()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            summary = await app.run(stop)
        finally:
            await app.aclose()
        if for_people:
            _print_summary(summary.as_dict(), audience_mode=st.audience.mode)
        elif _isatty(sys.stderr):
            # The log is JSON for a file or a pipe, a person watches stderr: why posts went
            # unanswered still reaches them (the table stays in the run_summary line).
            _print_unanswered(Console(stderr=True), summary.as_dict(), st.audience.mode)

    try:
        asyncio.run(_main())
    except BotskyError as exc:
        click.echo(f"botsky: {exc}", err=True)
        sys.exit(1)


@cli.command("scores")
@config_option("the config of the last run started here, else configs/botsky.yaml")
@scores_options
def scores_cmd(
    config_path: Path | None,
    by: str,
    as_json: bool,
    log_file: Path | None,
    plot_file: Path | None,
    as_of: str | None,
    wide: bool,
) -> None:
    """Print the leaderboard: rates over decided mentions with anytime-valid intervals,
    comparisons between arms, engagement and cost (methods: docs/statistics.md).

    Without -c, the scores are those of the last run started in this directory (botsky run or
    botsky simulate; the first line on stderr says which), else of configs/botsky.yaml. The
    ledger is only read: reading scores never creates or changes one.
    """
    from botsky.scoring import ScoringOptions, log_clock_us, rebuild_from_log
    from botsky.stats_cli import Rows, show_scores
    from botsky.wiring import scoring_options

    if log_file is not None:  # the feed's counts live in the ledger only
        # The same reading options as the ledger path when a config is there; defaults if not.
        options = ScoringOptions()
        if config_path is not None or _default_config_exists():
            from botsky.configload import load_config

            options = scoring_options(or_exit(load_config, config_path).settings)
        with log_file.open("rb") as fh:
            lines = fh.readlines()
        mentions, outcomes = rebuild_from_log(lines)
        rows = Rows(mentions, outcomes, log_clock_us(lines))
    feed: tuple[list[Any], str] | None = None  # the feed's per-arm counts and arm field
    if log_file is None:
        loaded, rows, feed = ledger_rows(config_path)
        options = scoring_options(loaded.settings)
    show_scores(rows, options, by=by, as_json=as_json, plot_file=plot_file, as_of=as_of, wide=wide)
    if feed is not None and feed[0] and not as_json and "," not in by:
        # The fair-exposure feed's engagement per seen impression (botsky.feed.scores).
        from botsky.feed.scores import feed_scores, render_feed

        Console().print(render_feed(feed_scores(feed[0]), feed[1]))


def _default_config_exists() -> bool:
    from botsky.configload import DEFAULT_CONFIG_PATH

    return Path(DEFAULT_CONFIG_PATH).is_file()


@cli.command("schema")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("configs/schema"),
    show_default=True,
    help="Directory for botsky.schema.json and bots.schema.json.",
)
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 if the files there differ from the current settings models.",
)
def schema_cmd(out_dir: Path, check: bool) -> None:
    """Write JSON Schemas of botsky.yaml and bots.yaml, generated from the settings models.

    Editors with the YAML language server complete and check a config whose first line is
    "# yaml-language-server: $schema=<path to the schema>", as the shipped configs do.
    """
    from botsky.schema import config_schemas, render, write_schemas

    if check:
        stale = []
        for name, schema in config_schemas().items():
            path = out_dir / name
            try:
                same = path.read_text(encoding="utf-8") == render(schema)
            except OSError:
                same = False
            if not same:
                stale.append(path)
        for path in stale:
            click.echo(f"{path}: differs from the settings models; run `botsky schema`", err=True)
        if stale:
            sys.exit(1)
        click.echo("schemas up to date")
        return
    for path in write_schemas(out_dir):
        click.echo(f"wrote {path}")


def ledger_rows(config_path: Path | None) -> tuple[LoadedConfig, Rows, tuple[list[Any], str]]:
    """The config, the rows ``scores`` reads (mentions, outcomes and the stream clock the
    runtime saved) and the feed's per-arm counts with its arm field, from the ledger of
    ``-c``'s config; without ``-c``, of the last run started in this directory (said on
    stderr; ``botsky.lastrun``), else of configs/botsky.yaml. Opened read-only: reading scores
    never creates or changes a ledger."""
    from botsky.configload import load_config
    from botsky.lastrun import last_run
    from botsky.ledger import open_ledger
    from botsky.ledger.sqlite import SqliteLedger
    from botsky.scoring import CLOCK_CURSOR
    from botsky.stats_cli import Rows

    if config_path is None and (last := last_run()) is not None:
        click.echo(f"scores of the last run here: {last.describe()}", err=True)
        config_path = last.config
    loaded = or_exit(load_config, config_path)
    st = loaded.settings
    ledger = open_ledger(st.ledger.url, st.data_dir, read_only=True)
    hint = (
        "nothing to score yet: run `botsky simulate` (offline, no keys) or `botsky run` first, "
        "or name the config of a run with -c"
    )
    if isinstance(ledger, SqliteLedger) and not ledger.path.exists():
        click.echo(f"botsky: no ledger at {_shown(ledger.path)} ({_shown(loaded.path)})", err=True)
        click.echo(hint, err=True)
        sys.exit(1)

    async def _rows() -> tuple[Rows, list[Any]]:
        await ledger.open()
        try:
            rows = Rows(
                await ledger.mentions(),
                await ledger.outcomes(),
                await ledger.load_cursor(CLOCK_CURSOR),
            )
            return rows, await ledger.feed_arm_counts()  # type: ignore[attr-defined]
        finally:
            await ledger.close()

    try:
        rows, feed_counts = asyncio.run(_rows())
    except BotskyError as exc:
        click.echo(f"botsky: {exc}", err=True)
        if "yet" in str(exc):
            click.echo(hint, err=True)
        sys.exit(1)
    if not rows.mentions:
        click.echo(f"no mentions recorded yet in the ledger of {_shown(loaded.path)}", err=True)
        # Why: the last run's summary in its log (the bundled replay: no_consent, and a hint).
        for line in _last_unanswered(st):
            click.echo(line, err=True)
    return loaded, rows, (feed_counts, st.feed.arm_by)


_SUMMARY_TAIL_BYTES = 1 << 20  # the last run's summary is among the log's last lines


def _last_unanswered(st: Settings) -> list[str]:
    """Why the last run in ``st``'s log answered no post (``botsky.summary``), from its last
    ``run_summary`` line; nothing when there is no log or no such line."""
    import orjson

    from botsky.summary import unanswered_lines

    if not st.logging.file:
        return []
    path = st.data_dir / st.logging.file
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - _SUMMARY_TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return []
    for line in reversed(tail.splitlines()):
        if b'"run_summary"' not in line:
            continue
        try:
            summary = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(summary, dict) and summary.get("event") == "run_summary":
            lines = unanswered_lines(summary, audience_mode=st.audience.mode)
            return [f"the last run in {_shown(path)}:", *lines] if lines else []
    return []


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is under it (shorter to read)."""
    try:
        return path.absolute().relative_to(Path.cwd())
    except ValueError:
        return path


def _print_summary(summary: dict[str, object], *, audience_mode: str) -> None:
    console = Console(stderr=True)
    table = Table(title="botsky run summary", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("events", str(summary["events"]))
    for group in ("by_kind", "by_operation", "by_collection", "selector", "dispatch", "outcomes"):
        counts = summary[group]
        assert isinstance(counts, dict)
        for key, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            table.add_row(f"{group.removeprefix('by_')}: {key}", str(value))
    table.add_row("skipped lines", str(summary["skipped"]))
    table.add_row("opt-outs", str(summary["opt_outs"]))
    table.add_row("opt-ins", str(summary.get("opt_ins", 0)))
    if summary.get("warm_observed"):
        table.add_row("posts observed on the warm start", str(summary["warm_observed"]))
    if summary.get("pending_kept"):
        table.add_row("posts kept for the next start", str(summary["pending_kept"]))
    console.print(table)
    _print_unanswered(console, summary, audience_mode)


def _print_unanswered(console: Console, summary: dict[str, object], audience_mode: str) -> None:
    """Why posts went unanswered, with a hint each (botsky.summary; simulate prints the same)."""
    from botsky.summary import unanswered_lines

    for line in unanswered_lines(summary, audience_mode=audience_mode):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _register() -> None:
    # Imported here, not at the top: each module imports only click until its command runs.
    from botsky.accounts import accounts
    from botsky.feed.cli import feed
    from botsky.sim.cli import simulate_cmd
    from botsky.stats_cli import plan_cmd

    cli.add_command(accounts)
    cli.add_command(simulate_cmd)
    cli.add_command(plan_cmd)
    cli.add_command(feed)


_register()


def main() -> None:
    """Console-script entry point.

    A user error never ends in a traceback: commands report configuration problems as lines,
    and what still escapes them here is a file the user named that cannot be read or written
    (an OSError: a data_dir under a file, a full disk) or a botsky error; both get one line.
    """
    try:
        cli()
    except (OSError, BotskyError) as exc:
        problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        for line in problems:
            click.echo(f"botsky: {line}", err=True)
        sys.exit(1)
