"""The ``botsky`` command line: ``run``, ``simulate``, ``scores``, ``plan``, ``check-config``,
``accounts``.

With no ``-c``, commands read ``configs/botsky.yaml`` from the working directory. Logs go to
stdout (JSON lines unless stdout is a terminal); human summaries and tables go to stderr or, for
``scores``, stdout.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from botsky import __version__
from botsky.cliutil import config_option, load_or_exit
from botsky.cliutil import or_exit as _load_or_exit
from botsky.errors import BotskyError
from botsky.stats_cli import scores_options

if TYPE_CHECKING:
    from botsky.config import Settings
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
    """Validate the YAML files and environment, with no network; exit 1 on any problem."""
    from botsky.configload import check_config

    problems = check_config(config_path)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        sys.exit(1)
    click.echo("configuration OK")


@cli.command("run")
@_config_option
def run_cmd(config_path: Path | None) -> None:
    """Run the service: read the source, answer eligible posts, record and score mentions."""
    from botsky.logs import configure_logging
    from botsky.wiring import build_app, freeze_startup_heap

    loaded, secrets = load_or_exit(config_path)
    st = loaded.settings
    st.data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging(
        level=st.logging.level,
        fmt=st.logging.format,
        file=st.data_dir / st.logging.file if st.logging.file else None,
    )

    async def _main() -> None:
        app = await build_app(loaded, secrets)
        freeze_startup_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            summary = await app.run(stop)
        finally:
            await app.aclose()
        _print_summary(summary.as_dict())

    try:
        asyncio.run(_main())
    except BotskyError as exc:
        click.echo(f"botsky: {exc}", err=True)
        sys.exit(1)


@cli.command("scores")
@_config_option
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
    comparisons between arms, engagement and cost (methods: docs/statistics.md)."""
    from botsky.scoring import ScoringOptions, log_clock_us, rebuild_from_log
    from botsky.stats_cli import Rows, show_scores
    from botsky.wiring import scoring_options

    if log_file is not None:
        # The same reading options as the ledger path when a config is there; defaults if not.
        options = ScoringOptions()
        if config_path is not None or _default_config_exists():
            from botsky.configload import load_config

            options = scoring_options(_load_or_exit(load_config, config_path).settings)
        with log_file.open("rb") as fh:
            lines = fh.readlines()
        mentions, outcomes = rebuild_from_log(lines)
        rows = Rows(mentions, outcomes, log_clock_us(lines))
    else:
        from botsky.configload import load_config

        loaded = _load_or_exit(load_config, config_path)
        options = scoring_options(loaded.settings)
        rows = read_ledger_rows(loaded.settings)
    show_scores(rows, options, by=by, as_json=as_json, plot_file=plot_file, as_of=as_of, wide=wide)


def read_ledger_rows(st: Settings) -> Rows:
    """The ledger's mentions, outcomes and saved stream clock; exit 1 if it cannot be read."""
    from botsky.ledger import open_ledger
    from botsky.scoring import CLOCK_CURSOR
    from botsky.stats_cli import Rows

    async def _rows() -> Rows:
        ledger = open_ledger(st.ledger.url, st.data_dir)
        await ledger.open()
        try:
            return Rows(
                await ledger.mentions(),
                await ledger.outcomes(),
                await ledger.load_cursor(CLOCK_CURSOR),
            )
        finally:
            await ledger.close()

    try:
        return asyncio.run(_rows())
    except BotskyError as exc:
        click.echo(f"botsky: {exc}", err=True)
        sys.exit(1)


def _default_config_exists() -> bool:
    from botsky.configload import DEFAULT_CONFIG_PATH

    return Path(DEFAULT_CONFIG_PATH).is_file()


def _print_summary(summary: dict[str, object]) -> None:
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
    console.print(table)


def _register() -> None:
    # Imported here, not at the top: each module imports only click until its command runs.
    from botsky.accounts import accounts
    from botsky.sim.cli import simulate_cmd
    from botsky.stats_cli import plan_cmd

    cli.add_command(accounts)
    cli.add_command(simulate_cmd)
    cli.add_command(plan_cmd)


_register()


def main() -> None:
    """Console-script entry point."""
    cli()
