"""The run's settings and shared helpers: servers, load runs, captures and counters."""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench import servers
from bench.load import LoadResult, Request, run_load

logger = logging.getLogger(__name__)

# Headers of a feed response that the floor route sends too.
FLOOR_HEADERS = (
    "Content-Type",
    "ETag",
    "Cache-Control",
    "Vary",
    "X-Content-Type-Options",
)
PAGE_SIZE = 100  # posts per Graph API page that ownfeed requests


@dataclass
class Settings:
    """The numbers of one run; `make bench` uses these defaults."""

    posts: int = 500
    search_posts: int = 5000
    delay: float = 0.15
    # Each load run lasts `seconds`; a comparison alternates its two sides
    # for `rounds` rounds, and its ratio is the median of the rounds' ratios.
    seconds: int = 2
    rounds: int = 10
    connections: int = 16
    wrk_threads: int = 1
    cold_clients: int = 100
    memory_requests: int = 100_000
    memory_max_seconds: int = 240
    refresh_ttl: int = 2
    refresh_seconds: int = 12
    resize_runs: int = 10
    counted_views: int = 200
    search_queries: int = 1024
    # The servers run on the first CPU and the load generator on the others,
    # so the two never share a core (on a machine with one CPU, nothing is pinned).
    pin: bool = True
    workers: int = 1
    threads: int = 4
    tool: str = "wrk"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Tiny numbers for the smoke test: every case runs, in well under 30 seconds.
SMOKE = {
    "posts": 20,
    "search_posts": 120,
    "delay": 0.02,
    "seconds": 1,
    "connections": 4,
    "cold_clients": 10,
    "memory_requests": 300,
    "memory_max_seconds": 20,
    "refresh_ttl": 1,
    "refresh_seconds": 2,
    "resize_runs": 1,
    "counted_views": 10,
    "search_queries": 300,
    "rounds": 1,
    "workers": 1,
}


@dataclass
class Bench:
    """One run: its settings, folder, and the processes it started."""

    settings: Settings
    work_dir: Path
    started: list[servers.Process] = field(default_factory=list)
    # Each started process's command line and settings, secrets left out.
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- processes --------------------------------------------------------

    def standin(self, posts: int) -> servers.Process:
        process = servers.start_standin(self.work_dir, posts, self.settings.delay)
        self._record(process, {})
        return process

    def ownfeed(
        self, name: str, standin: servers.Process, max_posts: int, ttl: int = 1800
    ) -> servers.Process:
        """Start ownfeed (with the floor routes) in real mode against `standin`."""
        env = servers.ownfeed_environment(self.work_dir, name, standin, max_posts, ttl)
        return self.gunicorn(name, "bench.floor_app:app", env)

    def gunicorn(self, name: str, target: str, env: dict[str, str]) -> servers.Process:
        settings = self.settings
        process = servers.start_gunicorn(
            name, target, env, self.work_dir, settings.workers, settings.threads
        )
        process.extra["env"] = env
        self._record(process, env)
        return process

    def _record(self, process: servers.Process, env: dict[str, str]) -> None:
        self.started.append(process)
        self.processes[process.name] = {
            "command": process.command_line,
            "environment": {
                key: "(secret)" if _is_secret(key) else value
                for key, value in sorted(env.items())
            },
        }

    def stop(self, process: servers.Process) -> None:
        process.stop()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.started.clear()

    # --- measuring --------------------------------------------------------

    def load(
        self,
        server: servers.Process,
        requests_: list[Request],
        seconds: int | None = None,
        stop_after: int | None = None,
    ) -> LoadResult:
        """Run the load generator against `server` and log the outcome."""
        settings = self.settings
        result = run_load(
            server.url,
            requests_,
            tool=settings.tool,
            seconds=seconds or settings.seconds,
            connections=settings.connections,
            threads=settings.wrk_threads,
            work_dir=self.work_dir,
            stop_after=stop_after,
        )
        progress(
            f"  {result.sent[:70]}: {result.rps:.0f} req/s, p50 "
            f"{result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
            f"{result.requests} requests, {result.errors} errors"
        )
        return result

    def compare(
        self, server: servers.Process, first: list[Request], second: list[Request]
    ) -> tuple[LoadResult, LoadResult]:
        """Load `first` and `second` in turn for `rounds` rounds; merge each side.

        Alternating short runs cancels the drift of a shared machine's speed,
        which changes within seconds; `paired_ratio` then compares round by round.
        """
        runs: tuple[list[LoadResult], list[LoadResult]] = ([], [])
        for _ in range(max(1, self.settings.rounds)):
            runs[0].append(self.load(server, first))
            runs[1].append(self.load(server, second))
        return merge(runs[0]), merge(runs[1])

    def pages(self, posts: int) -> int:
        """Return the Graph API pages one fetch of `posts` posts takes."""
        return math.ceil(posts / PAGE_SIZE)


def merge(runs: list[LoadResult]) -> LoadResult:
    """Combine runs of the same requests: totals add up, percentiles are averaged."""
    requests_ = sum(run.requests for run in runs)
    seconds = sum(run.seconds for run in runs)
    return LoadResult(
        tool=runs[0].tool,
        command=runs[0].command,
        sent=runs[0].sent,
        requests=requests_,
        seconds=seconds,
        rps=requests_ / seconds if seconds else 0.0,
        p50_ms=statistics.fmean(run.p50_ms for run in runs),
        p99_ms=statistics.fmean(run.p99_ms for run in runs),
        max_ms=max(run.max_ms for run in runs),
        errors=sum(run.errors for run in runs),
        bytes=sum(run.bytes for run in runs),
        details={"runs": len(runs), "rps_each": [round(run.rps, 1) for run in runs]},
    )


def capture(server: servers.Process, path: str, name: str) -> requests.Response:
    """Fetch `path` once and save its body and headers as the floor route `name`."""
    response = requests.get(server.url + path, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(
            f"{path} returned {response.status_code}, not 200: {response.text[:300]}"
        )
    floor_dir = Path(server.extra["env"]["BENCH_FLOOR_DIR"])
    headers = {k: response.headers[k] for k in FLOOR_HEADERS if k in response.headers}
    (floor_dir / f"{name}.body").write_bytes(response.content)
    (floor_dir / f"{name}.json").write_text(json.dumps(headers), encoding="utf-8")
    floor = requests.get(f"{server.url}/__bench/floor/{name}", timeout=10)
    if floor.content != response.content:
        raise RuntimeError(f"The floor route of {name} returned other bytes.")
    return response


def upstream_calls(standin: servers.Process, reset: bool = False) -> dict[str, int]:
    """Return the stand-in's calls per kind of path, and zero them when `reset`."""
    path = "/__bench/reset" if reset else "/__bench/stats"
    return requests.get(standin.url + path, timeout=10).json()["calls"]


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Return the calls per kind made between two counter readings."""
    kinds = set(before) | set(after)
    return {kind: after.get(kind, 0) - before.get(kind, 0) for kind in sorted(kinds)}


def ratio(part: float, whole: float) -> float:
    """Return part / whole to three places, or 0.0 when whole is 0."""
    return round(part / whole, 3) if whole else 0.0


def paired_ratio(part: LoadResult, whole: LoadResult) -> float:
    """Return the median of the per-round ratios of two sides of `compare`.

    Runs that were not paired round by round are compared by their totals.
    """
    parts = part.details.get("rps_each", [])
    wholes = whole.details.get("rps_each", [])
    if len(parts) != len(wholes) or len(parts) < 2:
        return ratio(part.rps, whole.rps)
    pairs = [a / b for a, b in zip(parts, wholes, strict=True) if b]
    return round(statistics.median(pairs), 3) if pairs else 0.0


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """Print a progress line, with the seconds since the start, to standard error."""
    print(
        f"[{time.monotonic() - _STARTED:6.1f}] {message}", file=sys.stderr, flush=True
    )


def _is_secret(key: str) -> bool:
    return key in ("INSTAGRAM_CLIENT_SECRET", "SECRET_KEY", "ADMIN_PASSWORD") or (
        "TOKEN" in key and not key.endswith("_URL")
    )
