"""The PDS harness itself, against the reference PDS: restarts on the same data, its own rate
limits, SIGSTOP/SIGCONT, and each fault of the fault proxy.

These are what the crash and fault tests of botsky build on, so each claim of
``tests/pds/harness.py`` and ``tests/pds/faults.py`` is checked here on the real server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.pds.harness import Fault, LocalPds, TestAccount
from tests.support import unique_name

POST = "app.bsky.feed.post"
CREATE = "com.atproto.repo.createRecord"


def _record(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": "2026-01-01T00:00:00.000Z"}


def _create(pds: LocalPds, who: TestAccount, text: str, via: str = "", **kw: Any) -> httpx.Response:
    """createRecord as a client does, directly or through a proxy (``via``)."""
    body = {"repo": who.did, "collection": POST, "record": _record(text)}
    return pds.call(CREATE, body=body, jwt=who.access_jwt, base_url=via, **kw)


def _texts(pds: LocalPds, who: TestAccount) -> list[str]:
    return sorted(r["value"]["text"] for r in pds.list_records(who.did, POST))


def _wait_for(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- restarts -------------------------------------------------------------------------------


def test_a_restarted_pds_is_the_same_server(pds_factory: Callable[..., LocalPds]) -> None:
    """After a SIGKILL and after a SIGTERM the PDS comes back on the same data and port: the
    records are there, the account logs in, its old session still works, its handle resolves;
    a restarted PLC still knows every DID and accepts new ones."""
    pds = pds_factory()
    alice = pds.create_account(unique_name("restart"))
    before = _create(pds, alice, "written before the restarts").json()

    for kill in (True, False):
        pid = pds.pds_pid
        ready_in = pds.restart(kill=kill)
        assert pds.pds_pid != pid and ready_in < 60
        assert pds.get_record(before["uri"])["cid"] == before["cid"]
        assert pds.login(alice.handle, alice.password).status_code == 200
        # The JWT secret is kept in the data directory: sessions survive the restart.
        assert _create(pds, alice, f"after restart kill={kill}").status_code == 200
        resolved = pds.xrpc("com.atproto.identity.resolveHandle", params={"handle": alice.handle})
        assert resolved["did"] == alice.did

    pds.restart_plc(kill=True)
    assert httpx.get(f"{pds.plc_url}/{alice.did}", timeout=5).status_code == 200
    bob = pds.create_account(unique_name("afterplc"))  # a new PLC operation, validated and kept
    pds.restart(kill=True)
    assert pds.login(bob.handle, bob.password).status_code == 200
    assert _texts(pds, alice) == [
        "after restart kill=False",
        "after restart kill=True",
        "written before the restarts",
    ]


def test_sigstop_freezes_the_pds_and_a_frozen_create_is_committed_on_sigcont(
    pds_factory: Callable[..., LocalPds],
) -> None:
    """While frozen the PDS answers nothing (the client times out), yet the kernel took the
    request: on SIGCONT the PDS commits it. A timed-out create has an unknown outcome."""
    pds = pds_factory()
    alice = pds.create_account(unique_name("frozen"))
    pds.pause()
    try:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{pds.pds_url}/xrpc/{CREATE}",
                json={"repo": alice.did, "collection": POST, "record": _record("in the freeze")},
                headers={"authorization": f"Bearer {alice.access_jwt}"},
                timeout=1.0,
            )
    finally:
        pds.resume()
    _wait_for("the frozen create to be committed", lambda: _texts(pds, alice) == ["in the freeze"])


# --- rate limits ----------------------------------------------------------------------------


def test_rate_limits_give_a_real_429_with_its_reset(pds_factory: Callable[..., LocalPds]) -> None:
    """With rate limits on, every request is counted (the headers show the tightest limit: here
    3,000 requests per 5 minutes per IP), the 31st createSession in 5 minutes is a 429 with
    ratelimit-reset; the harness's own calls (bypass key) are not counted; a PDS restart
    forgets the limits (they are in its memory)."""
    pds = pds_factory(rate_limits=True)
    alice = pds.create_account(unique_name("limited"))

    first = _create(pds, alice, "one", bypass=False)
    second = _create(pds, alice, "two", bypass=False)
    assert first.headers["ratelimit-policy"] == "3000;w=300"
    assert int(second.headers["ratelimit-remaining"]) < int(first.headers["ratelimit-remaining"])
    assert "ratelimit-limit" not in _create(pds, alice, "bypassed").headers

    # Each login costs the PDS ~0.45 s of password hashing: send the 30 side by side.
    with ThreadPoolExecutor(8) as pool:
        tries = pool.map(lambda _: pds.login(alice.handle, "not-the-password"), range(30))
        assert [r.status_code for r in tries] == [401] * 30
    t0 = time.time()
    limited = pds.login(alice.handle, alice.password)
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"] == "RateLimitExceeded"
    assert limited.headers["ratelimit-limit"] == "30"
    assert limited.headers["ratelimit-policy"] == "30;w=300"
    reset = int(limited.headers["ratelimit-reset"])
    assert t0 < reset <= t0 + 301
    assert pds.login(alice.handle, alice.password, bypass=True).status_code == 200

    pds.restart()
    assert pds.login(alice.handle, alice.password).status_code == 200


def test_without_rate_limits_nothing_is_limited(local_pds: LocalPds) -> None:
    """The shared PDS runs without rate limits: no ratelimit headers on writes."""
    alice = local_pds.create_account(unique_name("unlimited"))
    assert "ratelimit-limit" not in _create(local_pds, alice, "free", bypass=False).headers


# --- the fault proxy ------------------------------------------------------------------------


def test_proxy_forwards_unchanged_without_a_fault(local_pds: LocalPds) -> None:
    """No fault: the client gets what the PDS answers, over one keep-alive connection."""
    alice = local_pds.create_account(unique_name("plain"))
    with local_pds.proxy() as proxy, httpx.Client(base_url=proxy.url, timeout=10) as client:
        headers = {"authorization": f"Bearer {alice.access_jwt}"}
        for i in range(3):
            resp = client.post(
                f"/xrpc/{CREATE}",
                json={"repo": alice.did, "collection": POST, "record": _record(f"p{i}")},
                headers=headers,
            )
            assert resp.status_code == 200
        missing = client.get(
            "/xrpc/com.atproto.repo.getRecord",
            params={"repo": alice.did, "collection": POST, "rkey": "nope"},
        )
        assert missing.status_code == 400 and missing.json()["error"] == "RecordNotFound"
        assert [f.pds_status for f in proxy.requests()] == [200, 200, 200, 400]
    assert _texts(local_pds, alice) == ["p0", "p1", "p2"]


def test_drop_after_commit_hides_a_committed_write(local_pds: LocalPds) -> None:
    """The client's connection is cut after the PDS committed: the client sees a network error,
    the record exists (getRecord), and the proxy kept the answer it dropped."""
    alice = local_pds.create_account(unique_name("dropped"))
    with local_pds.proxy() as proxy:
        proxy.set(Fault("drop_after_commit", match=CREATE, times=1))
        with pytest.raises(httpx.TransportError):
            _create(local_pds, alice, "committed, never confirmed", via=proxy.url)
        ((status, answer),) = proxy.dropped
        assert status == 200
        assert local_pds.get_record(answer["uri"])["cid"] == answer["cid"]
        # times=1: the next create goes through.
        assert _create(local_pds, alice, "confirmed", via=proxy.url).status_code == 200


def test_errors_before_and_after_commit(local_pds: LocalPds) -> None:
    """``error`` answers a 5xx and the PDS never sees the request; ``error_after_commit``
    answers a 5xx for a write the PDS did commit."""
    alice = local_pds.create_account(unique_name("errors"))
    created = local_pds.counts().get(CREATE, 0)
    with local_pds.proxy() as proxy:
        proxy.set(Fault("error", match=CREATE, status=503))
        resp = _create(local_pds, alice, "refused", via=proxy.url)
        assert resp.status_code == 503
        assert local_pds.counts().get(CREATE, 0) == created
        proxy.set(Fault("error_after_commit", match=CREATE, status=502))
        resp = _create(local_pds, alice, "committed but 502", via=proxy.url)
        assert resp.status_code == 502
        assert [(f.fault, f.status, f.pds_status) for f in proxy.requests(CREATE)] == [
            ("error", 503, None),
            ("error_after_commit", 502, 200),
        ]
    assert _texts(local_pds, alice) == ["committed but 502"]


def test_delay_and_reset(local_pds: LocalPds) -> None:
    """``delay`` answers late but answers; ``reset`` cuts the connection before forwarding."""
    alice = local_pds.create_account(unique_name("slowreset"))
    with local_pds.proxy() as proxy:
        proxy.set(Fault("delay", match=CREATE, seconds=0.5))
        t0 = time.monotonic()
        assert _create(local_pds, alice, "late", via=proxy.url).status_code == 200
        assert time.monotonic() - t0 >= 0.5
        proxy.set(Fault("reset", match=CREATE))
        with pytest.raises(httpx.TransportError):
            _create(local_pds, alice, "never sent", via=proxy.url)
        # Other methods are not matched.
        assert local_pds.call("com.atproto.server.describeServer", base_url=proxy.url).is_success
    assert _texts(local_pds, alice) == ["late"]


def test_hang_holds_requests_until_released(local_pds: LocalPds) -> None:
    """``hang`` answers nothing: a client that gives up never reaches the PDS; one that waits
    is forwarded once the test clears the fault (and gets the PDS's answer)."""
    alice = local_pds.create_account(unique_name("hang"))
    with local_pds.proxy() as proxy:
        proxy.set(Fault("hang", match=CREATE, seconds=None))
        with pytest.raises(httpx.TimeoutException):
            _create_with_timeout(local_pds, alice, "given up", proxy.url, timeout=1.0)
        _wait_for("the proxy to see the client go", lambda: len(proxy.requests(CREATE)) == 1)
        assert proxy.requests(CREATE)[0].pds_status is None

        release = threading.Timer(0.5, proxy.clear)
        release.start()
        t0 = time.monotonic()
        resp = _create_with_timeout(local_pds, alice, "waited", proxy.url, timeout=15.0)
        release.join()
        assert resp.status_code == 200 and time.monotonic() - t0 >= 0.5
    assert _texts(local_pds, alice) == ["waited"]


def test_proxy_answers_502_while_the_pds_is_down_and_follows_its_restart(
    pds_factory: Callable[..., LocalPds],
) -> None:
    """A killed PDS is a 502 through the proxy; once restarted on its port, the same proxy
    reaches it again."""
    pds = pds_factory()
    with pds.proxy() as proxy:
        assert pds.call("com.atproto.server.describeServer", base_url=proxy.url).is_success
        pds.kill()
        down = pds.call("com.atproto.server.describeServer", base_url=proxy.url)
        assert down.status_code == 502
        pds.start_pds()
        assert pds.call("com.atproto.server.describeServer", base_url=proxy.url).is_success


def _create_with_timeout(
    pds: LocalPds, who: TestAccount, text: str, via: str, timeout: float
) -> httpx.Response:
    return httpx.post(
        f"{via}/xrpc/{CREATE}",
        json={"repo": who.did, "collection": POST, "record": _record(text)},
        headers={"authorization": f"Bearer {who.access_jwt}"},
        timeout=timeout,
    )
