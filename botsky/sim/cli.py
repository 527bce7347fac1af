"""``botsky simulate``: run the simulated network through the production pipeline.

Registered on the ``botsky`` group by ``botsky.cli`` (``cli.add_command(simulate_cmd)``).
Logs go to the JSON log file under ``data_dir`` only. The terminal shows a progress bar and
the warnings a person must act on (a bot left out for a missing or refused key or an
unreachable server, a bot paused: ``botsky.logs.NOTICES``); stdout gets the leaderboard by
picker and by model, each arm's estimates beside the world's truth (true expected rate, upper
bound, oracle; likes and engagement), a legend saying what each number is, why posts went
unanswered (``botsky.summary``), and where ``truth.json``, the ledger and the log are.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from botsky.cliutil import config_option, load_or_exit
from botsky.errors import BotskyError

if TYPE_CHECKING:  # the CLI imports the app only when a command runs
    from botsky.runtime import App
    from botsky.sim.run import SimResult

__all__ = ["DEFAULT_SIM_CONFIG", "simulate_cmd"]

DEFAULT_SIM_CONFIG = Path("configs/sim.yaml")


@click.command("simulate")
@config_option(str(DEFAULT_SIM_CONFIG))
@click.option("--days", type=click.IntRange(1, 3650), default=7, show_default=True)
@click.option("--users", type=click.IntRange(2, 1_000_000), default=300, show_default=True)
@click.option(
    "--seed", type=int, default=None, help="World and pipeline seed (default: the config's, or 1)."
)
@click.option(
    "--engine",
    type=click.Choice(["stochastic", "llm"]),
    default="stochastic",
    show_default=True,
    help="llm: the model in sim.engine plays the users (writes, reads, rates interest).",
)
@click.option(
    "--allow-arm-model",
    is_flag=True,
    help="With --engine llm: let the user model be an arm's model too (graded by itself).",
)
@click.option("--new-per-day", type=click.IntRange(0), default=1, show_default=True)
@click.option("--churn", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue from the checkpoint in data_dir (written at every simulated day boundary).",
)
@click.option(
    "--export",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write every event as Jetstream JSONL (readable by source.kind: replay); the "
    "file is replaced once the run starts.",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Serve the leaderboard page, with the world's truth beside the estimates, during the "
    "run and after it (Ctrl-C stops); its URL is printed when the run starts.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port for --serve (default: web.port from the config; 0 picks a free one).",
)
def simulate_cmd(
    config_path: Path | None,
    days: int,
    users: int,
    seed: int | None,
    engine: str,
    allow_arm_model: bool,
    new_per_day: int,
    churn: float,
    resume: bool,
    export: Path | None,
    serve: bool,
    port: int | None,
) -> None:
    """Simulate a social network and score the bot army against its ground truth.

    An earlier run in the same data_dir is never deleted: once the new run's checks pass, the
    earlier run's ledger, log and checkpoint move to data_dir/previous/<UTC time it last
    wrote>/ (the path is printed). A run that fails or is interrupted before it starts puts
    them back as they were. With --resume, the ledger that the checkpoint's copy replaces is
    moved there too, and the log is appended to.
    """
    from botsky.lastrun import record_run
    from botsky.logs import configure_logging
    from botsky.sim.run import simulate
    from botsky.sim.world import World
    from botsky.wiring import freeze_startup_heap

    loaded, secrets = load_or_exit(config_path or DEFAULT_SIM_CONFIG, live=False)
    st = loaded.settings
    if serve:
        st.web.enabled = True
        if port is not None:
            st.web.port = port
    seed = seed if seed is not None else st.seed if st.seed is not None else 1
    # Wide enough for the leaderboard when stdout is a pipe (rich assumes 80 columns there).
    console = Console(width=None if sys.stdout.isatty() else 160)
    log_file = st.data_dir / st.logging.file if st.logging.file else None
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        # No log file until the earlier run's files are moved aside (simulate's on_ready):
        # a run that fails before it starts must not write into the earlier run's log.
        # Notices: the terminal sees only these; everything else is in the file.
        configure_logging(level=st.logging.level, fmt="json", stream=quiet, notices=True)

        moved: list[Path] = []

        def open_log(previous: Path | None) -> None:
            configure_logging(
                level=st.logging.level, fmt="json", file=log_file, stream=quiet, notices=True
            )
            record_run(loaded.path, "simulate")  # `botsky scores` shows this run
            if previous is not None:
                moved.append(previous)

        # Days simulated of the days asked for. After the last day the world runs on until every
        # mention's outcome window has closed ("settling"); the bar is full by then.
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            # Off a terminal the bar is printed once, at the end: wide enough not to be cut.
            console=Console(stderr=True, width=None if sys.stderr.isatty() else 160),
        )
        task = progress.add_task("days", total=days, counts="")

        def on_day(world: World) -> None:
            # Shown from the run's first day boundary: a run that fails to start shows no bar.
            progress.start()
            c = world.counts
            settling = world.day >= days and not world.finished
            progress.update(
                task,
                description="settling outcomes" if settling else "days",
                completed=min(world.day, days),
                counts=(
                    f"users {len(world.users)}  posts {c['posts']}  mentions {c['mentions']}  "
                    f"replies {c['replies']}  answered mentions {c['mention_replies']}"
                ),
            )

        def announce(url: str) -> None:
            # As soon as the page accepts, before the first event (with --port 0 this is the
            # only way to find it). A line of its own, flushed: scripts and tests wait for it.
            print(f"leaderboard page: {url}  (live during the run)", flush=True)

        async def hold(app: App, result: SimResult) -> None:
            progress.stop()
            _print_result(console, result, seed, export, st.audience.mode)
            url = app.web_server.url if app.web_server is not None else "(web app not running)"
            print(f"leaderboard page: {url}  (run finished; Ctrl-C to stop)", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Ctrl-C came while the results were being prepared, and a wait that cancels
                # its own child task swallowed it: stop now (asyncio.run then raises
                # KeyboardInterrupt) instead of serving until a second Ctrl-C.
                return
            await stop.wait()

        # The imported SDKs are most of the heap: out of the collector's full passes (see
        # freeze_startup_heap; the app is built inside simulate, after this).
        freeze_startup_heap()
        try:
            try:
                result = asyncio.run(
                    simulate(
                        loaded,
                        secrets,
                        days=days,
                        users=users,
                        seed=seed,
                        engine=engine,
                        allow_arm_model=allow_arm_model,
                        new_per_day=new_per_day,
                        churn=churn,
                        resume=resume,
                        export=export,
                        on_day=on_day,
                        hold=hold if serve else None,
                        on_serve=announce if serve else None,
                        on_ready=open_log,
                    )
                )
            finally:
                progress.stop()
        except (BotskyError, KeyboardInterrupt) as exc:
            # A failed or interrupted start has put the earlier run back (see rundir); once
            # started, it stays in previous/: say where.
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            click.echo(f"botsky: {what}", err=True)
            if moved and moved[0].exists():
                click.echo(f"the earlier run's files are in {moved[0]}", err=True)
            sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 1)
        finally:
            # Off the soon-closed null stream; the tables below are not logs.
            configure_logging(level=st.logging.level, fmt="json", stream=sys.stderr, notices=False)

    if not serve:  # with --serve the results were printed before serving
        _print_result(console, result, seed, export, st.audience.mode)


_LEGEND = (
    ("estimate", "the pipeline's success rate: answered / decided mentions (Wilson 95% interval)"),
    (
        "true rate",
        "what the estimate estimates: the mean probability the world used when each mentioned "
        "user decided (0 if they did not read the mention within the outcome window)",
    ),
    (
        "upper bound",
        "the same users had they read the mention at once, unfatigued, in the best mood "
        "(not an estimate: a ceiling on the true rate)",
    ),
    (
        "oracle",
        "the best-fitting online user for the same posts, as an upper bound: no pick does better",
    ),
    (
        "engagement, likes",
        "per bot reply, within the outcome window (engagement: likes, reposts and the post "
        "author's replies): measured, then the world's true expectation (likes on terminals of "
        "120 columns or more)",
    ),
)
_FEED_LEGEND = (
    (
        "feed: seen",
        "impressions of the arm's replies on botsky's feed that the subscribers' app reported "
        "seen (of those served)",
    ),
    (
        "engaged / seen",
        "the feed's figure: share of seen impressions the viewer then liked, reposted or "
        "replied to (Wilson 95% interval), then the world's true expected share",
    ),
    (
        "engagement / seen",
        "likes + reposts + replies per seen impression: measured, then the true expectation",
    ),
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# The truth table drops its likes columns below this console width, to fit 100 columns.
_LIKES_FROM_WIDTH = 120


def _truth_table(result: SimResult, by: str, width: int = 160) -> Table:
    """Per arm: the pipeline's estimates beside the world's truth (rates in %, engagement per
    bot reply). Fits 100 columns; from ``_LIKES_FROM_WIDTH`` columns on, likes as well."""
    truth = result.arm_truth(by)
    likes = width >= _LIKES_FROM_WIDTH
    # No vertical rules (box.SIMPLE_HEAD) and two-line headers, as `botsky scores` does.
    table = Table(title=f"estimate vs truth by {by}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(by)
    for name in ("decided", "estimate\n%", "Wilson\n95%", "true\nrate %"):
        table.add_column(name, justify="right")
    table.add_column("upper\nbound %", justify="right", style="dim")
    table.add_column("oracle\n%", justify="right", style="dim")
    if likes:
        table.add_column("likes\n/ reply", justify="right")
        table.add_column("true likes\n/ reply", justify="right")
    table.add_column("engagement\n/ reply", justify="right")
    table.add_column("true eng.\n/ reply", justify="right")
    for s in result.scores(by):
        t = truth.get(s.group)
        cells = [
            s.group if len(s.group) <= 20 else s.group[:19] + "…",
            str(s.decided),
            _pct(s.success_rate),
            f"{s.ci_low * 100:.1f}–{s.ci_high * 100:.1f}",
            _pct(t.true_rate if t else None),
            _pct(t.upper_bound if t else None),
            _pct(t.oracle if t else None),
        ]
        if likes:
            cells += [_num(s.likes_per_reply), _num(t.likes_per_reply if t else None)]
        cells += [_num(s.engagement_per_reply), _num(t.engagement_per_reply if t else None)]
        table.add_row(*cells)
    return table


def _feed_table(result: SimResult) -> Table:
    """Per arm of botsky's feed: the feed's own figures beside the world's truth (fits 100
    columns, like the truth tables)."""
    from botsky.sim.truth import GROUPINGS

    by = result.feed_arm_by
    truth = result.feed_arm_truth(by) if by in GROUPINGS else {}
    table = Table(
        title=f"botsky's feed: engagement per seen impression vs truth, by {by}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column(by)
    for name in ("served", "seen", "engaged\n/ seen %", "Wilson\n95%", "true\n%"):
        table.add_column(name, justify="right")
    table.add_column("engagement\n/ seen", justify="right")
    table.add_column("true eng.\n/ seen", justify="right")
    for s in result.feed:
        t = truth.get(s.arm)
        table.add_row(
            s.arm if len(s.arm) <= 20 else s.arm[:19] + "…",
            str(s.served),
            str(s.seen),
            _pct(s.engaged_rate),
            f"{s.ci_low * 100:.1f}–{s.ci_high * 100:.1f}",
            _pct(t.true_engaged_rate if t else None),
            _num(s.engagement_per_seen),
            _num(t.true_engagement_per_impression if t else None),
        )
    return table


def _print_result(
    console: Console, result: SimResult, seed: int, export: Path | None, audience_mode: str
) -> None:
    """The leaderboards, the estimates beside the world's truth, why posts went unanswered,
    and where the files are."""
    from botsky.scoring import render_table
    from botsky.summary import unanswered_lines

    world = result.world
    hours = world.config.outcome_window_s / 3600
    console.print(
        f"simulated {world.config.days} days, {len(world.users)} users, seed {seed}, "
        f"engine {world.engine.name}, outcome window {hours:g} h: {result.user_days} user-days "
        f"in {result.elapsed_s:.1f} s ({result.user_days / max(result.elapsed_s, 1e-9):.0f} "
        "user-days/s)"
    )
    if result.user_model is not None:
        style = "bold red" if result.user_model.shared_with else ""
        console.print(result.user_model.describe(), style=style)
    for title, rows in (("by picker", result.by_picker), ("by model", result.by_model)):
        table = render_table(rows)
        table.title = f"leaderboard {title}"
        console.print(table)
    for by in ("picker", "model"):
        console.print(_truth_table(result, by, console.width))
    legend = Table.grid(padding=(0, 2))
    legend.add_column(style="bold")
    legend.add_column()
    for name, text in _LEGEND:
        legend.add_row(name, text)
    console.print(legend)
    if result.feed:
        console.print(_feed_table(result))
        legend = Table.grid(padding=(0, 2))
        legend.add_column(style="bold")
        legend.add_column()
        for name, text in _FEED_LEGEND:
            legend.add_row(name, text)
        console.print(legend)
    # Why posts went unanswered, with a hint each (botsky.summary; `botsky run` prints the same).
    for line in unanswered_lines(result.summary.as_dict(), audience_mode=audience_mode):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"truth:  {result.truth_path}")
    console.print(f"ledger: {result.ledger_path}")
    console.print(f"log:    {result.log_path}")
    if result.previous_run is not None:
        console.print(f"earlier run moved to {result.previous_run}")
    if export is not None:
        console.print(f"events: {export}")
