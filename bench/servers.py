"""Start and stop the benchmark's processes: the stand-in API and gunicorn servers.

Every process listens on 127.0.0.1 and runs with the folder of the run as its
working directory, so no `.env` of the repository is read and nothing is
written into the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
# Settings of the product that a developer's shell may contain. No server started
# here inherits them.
_PRODUCT_PREFIXES = (
    "INSTAGRAM_",
    "OWNFEED_",
    "X_",
    "FEED_",
    "MEDIA_",
    "NOTIFY_",
    "IMAGES_",
    "SANDBOX_",
    "REFRESH_",
    "FLASK_",
)
_PRODUCT_KEYS = ("SECRET_KEY", "ADMIN_PASSWORD", "ADMIN_PASSWORD_HASH")
START_TIMEOUT = 30.0


@dataclass
class Process:
    """A started server: its URL, process, log file and the command that started it."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> list[int]:
        """Return the pids of this process's children (gunicorn's workers)."""
        return child_pids(self.process.pid)

    def stop(self) -> None:
        """Stop the process (SIGINT: gunicorn's quick shutdown), then kill it."""
        if self.process.poll() is not None:
            return
        workers = self.worker_pids()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for pid in workers:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environment() -> dict[str, str]:
    """Return this process's environment without any of the product's settings."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_PRODUCT_PREFIXES) and key not in _PRODUCT_KEYS
    }


def start_standin(work_dir: Path, posts: int, delay: float) -> Process:
    """Start the stand-in API with `posts` posts and `delay` seconds per call."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.standin", "--port", str(port)]
    argv += ["--posts", str(posts), "--delay", str(delay)]
    env = clean_environment()
    env["PYTHONPATH"] = str(ROOT)
    server = _spawn(f"standin-{posts}", port, argv, env, work_dir)
    _start_or_stop(server, lambda: _wait_until_up(server, "/__bench/stats"))
    return server


def start_gunicorn(
    name: str,
    target: str,
    env: dict[str, str],
    work_dir: Path,
    workers: int,
    threads: int,
) -> Process:
    """Start `target` (module:app) under gunicorn with gthread workers."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    argv += ["--workers", str(workers), "--threads", str(threads)]
    argv += ["--worker-class", "gthread", "--log-level", "warning", target]
    server_env = clean_environment()
    server_env.update(env)
    server_env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    server = _spawn(name, port, argv, server_env, work_dir, _server_cpus)

    def wait() -> None:
        _wait_until_up(server, "/__bench/ping")
        _wait_for_workers(server, workers)

    _start_or_stop(server, wait)
    return server


def ownfeed_environment(
    work_dir: Path, name: str, standin: Process, max_posts: int, ttl: int
) -> dict[str, str]:
    """Return the settings of an ownfeed server in real mode against `standin`.

    The instance folder gets a connected Instagram token that is not due for
    refresh, so no refresh call happens during a run.
    """
    instance = work_dir / f"{name}-instance"
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_token_file(instance / "tokens.json")
    floor_dir = work_dir / f"{name}-floor"
    (floor_dir / "static").mkdir(parents=True, exist_ok=True)
    return {
        "OWNFEED_SANDBOX": "0",
        "OWNFEED_INSTANCE_PATH": str(instance),
        "INSTAGRAM_CLIENT_ID": "1000000000000001",
        "INSTAGRAM_CLIENT_SECRET": secrets.token_hex(16),
        "SECRET_KEY": secrets.token_hex(32),
        "ADMIN_PASSWORD": secrets.token_hex(16),
        "INSTAGRAM_GRAPH_URL": standin.url,
        "INSTAGRAM_TOKEN_URL": f"{standin.url}/oauth/access_token",
        "INSTAGRAM_AUTHORIZE_URL": f"{standin.url}/oauth/authorize",
        "FEED_MAX_POSTS": str(max_posts),
        "FEED_CACHE_SECONDS": str(ttl),
        "X_API_URL": standin.url,
        "X_BEARER_TOKEN": "bench-x-app-bearer",
        "X_USERNAME": "bench_owner",
        "BENCH_FLOOR_DIR": str(floor_dir),
    }


def write_token_file(path: Path) -> None:
    """Write a token store with a connected, active Instagram token (60 days left)."""
    now = datetime.now(UTC).replace(microsecond=0)
    record = {
        "access_token": "IGbench" + secrets.token_hex(20),
        "token_type": "bearer",
        "expires_at": (now + timedelta(days=59)).isoformat(),
        "obtained_at": now.isoformat(),
        "refreshed_at": None,
        "user_id": "17841400000000001",
        "app_user_id": "9000000000000001",
        "username": "bench.owner",
        "account_type": "BUSINESS",
        "permissions": ["instagram_business_basic"],
        "status": "active",
        "last_error": None,
        "refresh_failures": 0,
    }
    document = {"version": 1, "providers": {"instagram": record}}
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as output:
        json.dump(document, output, indent=2)


def child_pids(parent: int) -> list[int]:
    """Return the pids whose parent is `parent`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == parent:
                children.append(int(entry.name))
                break
    return sorted(children)


def resident_kib(pid: int) -> int:
    """Return the resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line.")


# The CPUs that the servers run on, when the harness pins them: set by
# `pin_servers`, inherited by every process that gunicorn forks.
_server_cpus: set[int] | None = None


def pin_servers() -> tuple[list[int], list[int]] | None:
    """Keep servers on the first CPU and this process (the load) on the others.

    Returns the two CPU lists, or None on a machine with one CPU, where
    nothing is pinned.
    """
    global _server_cpus
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    _server_cpus = {cpus[0]}
    os.sched_setaffinity(0, cpus[1:])
    return [cpus[0]], cpus[1:]


def _spawn(
    name: str,
    port: int,
    argv: list[str],
    env: dict[str, str],
    work_dir: Path,
    cpus: set[int] | None = None,
) -> Process:
    """Start `argv` with its output in `<name>.log`, on `cpus` when given."""
    log_path = work_dir / f"{name}.log"
    with log_path.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=work_dir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
    return Process(name, f"http://127.0.0.1:{port}", process, log_path, argv)


def _start_or_stop(server: Process, wait: Callable[[], None]) -> None:
    """Run `wait`; stop the server when it raises, so no process is left behind."""
    try:
        wait()
    except BaseException:
        server.stop()
        raise


def _wait_for_workers(server: Process, workers: int) -> None:
    """Wait until each worker has responded to a ping, so none is still importing."""
    seen: set[str] = set()
    deadline = time.monotonic() + START_TIMEOUT
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(seen) < workers and time.monotonic() < deadline:
            answers = pool.map(_ping, [server.url] * 8)
            seen.update(answer for answer in answers if answer)
    if len(seen) < workers:
        raise RuntimeError(
            f"Only {len(seen)} of {workers} workers of {server.name} responded in "
            f"{START_TIMEOUT:.0f} s:\n{server.log_text()}"
        )


def _ping(url: str) -> str | None:
    try:
        return requests.get(url + "/__bench/ping", timeout=2).text
    except requests.RequestException:
        return None


def _wait_until_up(server: Process, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited early:\n{server.log_text()}")
        try:
            if requests.get(server.url + path, timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(
        f"{server.name} did not start in {START_TIMEOUT:.0f} s:\n{server.log_text()}"
    )
