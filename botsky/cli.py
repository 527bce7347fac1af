"""The ``botsky`` command line: ``run``, ``simulate``, ``scores``, ``check-config``, ``accounts``.

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
import orjson
from rich.console import Console
from rich.table import Table

from botsky import __version__
from botsky.cliutil import config_option, load_or_exit
from botsky.cliutil import or_exit as _load_or_exit
from botsky.errors import BotskyError
from botsky.ledger.base import Mention, Outcome

if TYPE_CHECKING:
    from botsky.config import Settings

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
        _print_summary(summary.as_dict())

    try:
        asyncio.run(_main())
    except BotskyError as exc:
        click.echo(f"botsky: {exc}", err=True)
        sys.exit(1)


@cli.command("scores")
@_config_option
@click.option(
    "--by",
    type=click.Choice(["model", "persona", "bot", "picker", "provider"]),
    default="model",
    show_default=True,
    help="Group mentions by this field.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--logs",
    "log_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rebuild the scores from a botsky JSON log file instead of the ledger.",
)
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write success rates with Wilson 95% intervals per model and picker as a PNG.",
)
def scores_cmd(
    config_path: Path | None, by: str, as_json: bool, log_file: Path | None, plot_file: Path | None
) -> None:
    """Print the leaderboard: success rate with its 95% interval, engagement and cost."""
    from botsky.scoring import rebuild_from_log, render_table, score, scores_json

    if log_file is not None:
        with log_file.open("rb") as fh:
            mentions, outcomes = rebuild_from_log(fh)
    else:
        from botsky.configload import load_config
        from botsky.ledger import open_ledger

        loaded = _load_or_exit(load_config, config_path)
        st = loaded.settings

        async def _rows() -> tuple[list[Mention], list[Outcome]]:
            ledger = open_ledger(st.ledger.url, st.data_dir)
            await ledger.open()
            try:
                return await ledger.mentions(), await ledger.outcomes()
            finally:
                await ledger.close()

        try:
            mentions, outcomes = asyncio.run(_rows())
        except BotskyError as exc:
            click.echo(f"botsky: {exc}", err=True)
            sys.exit(1)
    rows = score(mentions, outcomes, by=by)
    if plot_file is not None:
        from botsky.plot import plot_scores

        by_model = score(mentions, outcomes, by="model")
        plot_scores(by_model, score(mentions, outcomes, by="picker"), plot_file)
        click.echo(f"plot written to {plot_file}", err=True)
    if as_json:
        click.echo(orjson.dumps(scores_json(rows), option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(render_table(rows))
        if log_file is None:
            _print_feed_scores(st)


def _print_feed_scores(st: Settings) -> None:
    """The feed's engagement per seen impression, when the ledger has feed exposures."""
    from botsky.feed.cli import arm_counts
    from botsky.feed.scores import feed_scores, render_feed

    counts = asyncio.run(arm_counts(st))
    if counts:
        Console().print(render_feed(feed_scores(counts), st.feed.arm_by))


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
    from botsky.feed.cli import feed
    from botsky.sim.cli import simulate_cmd

    cli.add_command(accounts)
    cli.add_command(simulate_cmd)
    cli.add_command(feed)


_register()


def main() -> None:
    """Console-script entry point."""
    cli()
