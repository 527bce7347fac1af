"""The low-water mark tracker and where a restart resumes (``botsky.watermark``), alone."""

from __future__ import annotations

from pathlib import Path

from botsky.events import Event
from botsky.ledger.sqlite import SqliteLedger
from botsky.sources.jetstream import JetstreamSource
from botsky.sources.relay import RelaySource
from botsky.sources.replay import ReplaySource
from botsky.testing import post
from botsky.watermark import Resume, Watermark, load_resume, partition_key, warm_key
from tests.support import T0

S = 1_000_000


def _at(cursor: int, time_us: int = T0) -> Event:
    event = post("did:plc:a", time_us, f"post at {cursor}")
    object.__setattr__(event, "cursor", cursor)
    return event


def test_the_mark_is_the_read_position_until_work_is_held() -> None:
    w = Watermark(10, before=RelaySource.position_before)
    assert w.mark() == 10
    w.advance(_at(11))
    assert w.mark() == 11


def test_the_mark_stays_before_the_oldest_unfinished_post_whatever_order_work_ends() -> None:
    w = Watermark(10, before=RelaySource.position_before)
    tokens = []
    for seq in (11, 12, 13, 14):
        tokens.append(w.hold(w.advance(_at(seq))))
    w.advance(_at(15))  # an event with no work
    assert w.mark() == 10  # seq 11 is unfinished: resume after 10 reads it again
    w.release(tokens[2])  # 13 done first: the mark cannot move past 11 and 12
    assert w.mark() == 10
    w.release(tokens[0])
    assert w.mark() == 11  # 12 is next
    w.release(tokens[1])
    w.release(tokens[3])
    assert w.mark() == 15 and w.held == 0
    w.release(tokens[3])  # twice: ignored
    assert w.mark() == 15


def test_a_relay_commit_of_several_ops_is_read_again_whole() -> None:
    """Two events of one commit share a seq: a held second op keeps the mark before the
    commit, not at it (resuming after its seq would skip it)."""
    w = Watermark(99, before=RelaySource.position_before)
    w.advance(_at(100))
    token = w.hold(w.advance(_at(100)))
    w.advance(_at(101))
    assert w.mark() == 99
    w.release(token)
    assert w.mark() == 101


def test_jetstream_marks_by_time_and_out_of_order_events_hold_it_back() -> None:
    """Jetstream's cursor is time_us and not monotonic: a late event older than the newest
    read, still unfinished, pulls the mark back before itself."""
    w = Watermark(None, before=JetstreamSource.position_before)
    w.advance(_at(T0 + 5 * S, T0 + 5 * S))
    late = w.hold(w.advance(_at(T0 + 3 * S, T0 + 3 * S)))
    w.advance(_at(T0 + 6 * S, T0 + 6 * S))
    assert w.read == T0 + 6 * S
    assert w.mark() == T0 + 3 * S - 1
    w.release(late)
    assert w.mark() == T0 + 6 * S


def test_a_replay_marks_by_the_position_of_the_event_before() -> None:
    w = Watermark(None, before=ReplaySource.position_before)
    first = w.hold(w.advance(_at(40)))  # the line that ends at byte 40 starts at 0
    w.advance(_at(95))
    second = w.hold(w.advance(_at(130)))
    assert w.mark() == 0
    w.release(first)
    assert w.mark() == 95
    w.release(second)
    assert w.mark() == 130


def test_each_partition_has_its_own_mark() -> None:
    w = Watermark(0, before=RelaySource.position_before)
    a = w.hold(w.advance(_at(1)), partition=3)
    w.hold(w.advance(_at(2)), partition=5)
    w.advance(_at(3))
    assert w.marks([3, 5, 7]) == {3: 0, 5: 1, 7: 3}
    w.release(a)
    assert w.marks([3, 5]) == {3: 3, 5: 1}
    assert w.mark() == 1  # all partitions: the lowest


def test_the_warm_position_is_a_window_of_stream_before_the_mark() -> None:
    w = Watermark(0, before=RelaySource.position_before, window_us=60 * S)
    for i in range(1, 301):  # one event a second for five minutes
        event = _at(i, T0 + i * S)
        before = w.advance(event)
        if i == 200:
            held = w.hold(before, time_us=event.time_us)
    # Held at 200 s: the window ends there, so a restart reads from 60 s before it.
    assert w.mark() == 199
    assert w.warm_position(w.mark()) == 139
    w.release(held)
    assert w.warm_position(w.mark()) == 239  # 60 s before the latest event now


def test_without_a_sample_old_enough_the_warm_position_stays_where_the_run_began() -> None:
    w = Watermark(50, before=RelaySource.position_before, window_us=600 * S)
    for i in range(51, 60):
        w.advance(_at(i, T0 + i * S))
    assert w.warm_position(w.mark()) == 50
    cold = Watermark(50, before=RelaySource.position_before, window_us=0)
    for i in range(51, 60):
        cold.advance(_at(i, T0 + i * S))
    assert cold.warm_position(cold.mark()) == 59  # no window: the mark itself


def test_resume_observes_up_to_the_mark_only() -> None:
    r = Resume(start=100, marks={}, default=150)
    assert r.warm
    assert r.observe_only(150, 0) and not r.observe_only(151, 0)
    assert not r.past_marks(150) and r.past_marks(151)
    jet = Resume(start=100, default=150, slack=10)  # Jetstream: its rewind is answered again
    assert jet.observe_only(140, 0) and not jet.observe_only(141, 0)
    cold = Resume(start=150, default=150)
    assert not cold.warm
    replicas = Resume(start=90, marks={0: 100, 1: 120})
    assert replicas.observe_only(110, 0) is False and replicas.observe_only(110, 1) is True
    assert not replicas.past_marks(110) and replicas.past_marks(121)
    assert not Resume().observe_only(1, 0)  # nothing saved: nothing to observe only


async def test_load_resume_starts_at_the_warm_position_or_the_lowest_mark(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "l.sqlite3")
    await led.open()
    try:
        assert await load_resume(led, "pds") == Resume()  # never saved: the live tip
        await led.save_cursor("pds", 500)
        assert (await load_resume(led, "pds")).start == 500
        await led.save_cursor(warm_key("pds"), 420)
        r = await load_resume(led, "pds")
        assert (r.start, r.default, r.warm) == (420, 500, True)
        # Replicas: each partition's mark; one without a mark uses the run's own.
        await led.save_cursor(partition_key("pds", 0), 300)
        await led.save_cursor(partition_key("pds", 1), 700)
        r = await load_resume(led, "pds", partitions=3)
        assert r.start == 300 and r.marks == {0: 300, 1: 700} and r.default == 500
        await led.save_cursor(partition_key("pds", 2), 800)
        r = await load_resume(led, "pds", partitions=3)
        assert r.start == 300  # every partition has its mark: the run's own no longer counts
    finally:
        await led.close()


def test_an_event_begun_but_not_passed_keeps_the_mark_before_it() -> None:
    """A stop may cancel the reader inside ``route``: until ``passed``, the event being
    routed is not behind the mark, so the next start reads it again."""
    w = Watermark(10, before=RelaySource.position_before)
    w.advance(_at(11))
    before = w.begin(_at(12))
    assert before == 11 and w.mark() == 11  # 12 is being routed: not passed yet
    w.passed(_at(12))
    assert w.mark() == 12
