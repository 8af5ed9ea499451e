"""Load generators: Debian's `wrk`, or a threaded Python client when wrk is missing.

Both send GET requests over keep-alive connections for a fixed time, taking
turns through a list of requests (a path and optional headers), and can stop
after a number of responses. Both report the same figures: requests, seconds,
requests per second, latency percentiles and errors.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

WRK_TIMEOUT = "10s"
_RESULT_MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class Request:
    """One request of a rotation: a path with its query, and extra headers."""

    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadResult:
    """Figures of one load run; latencies in milliseconds."""

    tool: str
    command: str
    sent: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    bytes: int
    stopped_early: bool = False
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        figures = asdict(self)
        for key in ("rps", "p50_ms", "p99_ms", "max_ms", "seconds"):
            figures[key] = round(figures[key], 3)
        return figures


def describe(requests: list[Request]) -> str:
    """Describe a rotation in a few words, for the report."""
    first = requests[0]
    headers = "".join(f" with {name}: {value}" for name, value in first.headers)
    if len(requests) == 1:
        return f"GET {first.path}{headers}"
    return f"{len(requests)} different requests in turn, the first GET {first.path}"


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    base_url: str,
    requests: list[Request],
    *,
    tool: str,
    seconds: int,
    connections: int,
    threads: int,
    work_dir: Path,
    stop_after: int | None = None,
) -> LoadResult:
    """Send `requests` in rotation for `seconds`, or until `stop_after` responses."""
    if tool == "wrk":
        return run_wrk(
            base_url, requests, seconds, connections, threads, work_dir, stop_after
        )
    return run_python(base_url, requests, seconds, connections, stop_after)


# --- wrk ------------------------------------------------------------------


def run_wrk(
    base_url: str,
    requests: list[Request],
    seconds: int,
    connections: int,
    threads: int,
    work_dir: Path,
    stop_after: int | None,
) -> LoadResult:
    """Run wrk with a generated Lua script; SIGINT ends it once every thread stopped.

    wrk waits out its whole `-d` even when its threads stop early, so each thread
    touches a marker file at its last response and the harness interrupts wrk,
    which then prints its figures at once.
    """
    threads = max(1, min(threads, connections))
    markers = work_dir / f"wrk-{time.monotonic_ns()}"
    per_thread = math.ceil(stop_after / threads) if stop_after else 0
    script = work_dir / f"{markers.name}.lua"
    script.write_text(lua_script(requests, per_thread, markers), encoding="utf-8")
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["--timeout", WRK_TIMEOUT, "-s", str(script), base_url + requests[0].path]

    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stopped_early = False
    deadline = time.monotonic() + seconds + 30
    while process.poll() is None and time.monotonic() < deadline:
        done = [markers.with_name(f"{markers.name}-{n}") for n in range(threads)]
        if per_thread and all(path.exists() for path in done):
            process.send_signal(signal.SIGINT)
            stopped_early = True
            break
        time.sleep(0.1)
    try:
        output, _ = process.communicate(timeout=max(5, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate(timeout=10)
        raise RuntimeError(f"wrk did not finish in time:\n{output}") from None
    return _parse_wrk(output, argv, stopped_early, describe(requests))


def lua_script(requests: list[Request], per_thread: int, markers: Path) -> str:
    """Return a wrk script that rotates `requests` and prints its figures as JSON."""
    lines = [f"local stop_after = {per_thread}", f"local markers = {_lua(markers)}"]
    lines += ["local counter = 0", "local index = 0", "local next_id = 0", ""]
    if len(requests) == 1:
        for name, value in requests[0].headers:
            lines.append(f"wrk.headers[{_lua(name)}] = {_lua(value)}")
    else:
        lines.append("local requests = {")
        for request in requests:
            headers = ", ".join(f"[{_lua(n)}] = {_lua(v)}" for n, v in request.headers)
            lines.append(f"  {{{_lua(request.path)}, {{{headers}}}}},")
        lines += [
            "}",
            "function request()",
            "  index = index % #requests + 1",
            "  local entry = requests[index]",
            '  return wrk.format("GET", entry[1], entry[2])',
            "end",
        ]
    lines += [
        "function setup(thread)",
        '  thread:set("id", next_id)',
        "  next_id = next_id + 1",
        "end",
        "function init(args)",
        "  index = id * 7919",
        "end",
    ]
    if per_thread:
        lines += [
            "function response(status, headers, body)",
            "  counter = counter + 1",
            "  if counter == stop_after then",
            '    io.open(markers .. "-" .. id, "w"):close()',
            "    wrk.thread:stop()",
            "  end",
            "end",
        ]
    lines += [
        "function done(summary, latency, requests)",
        "  local e = summary.errors",
        f'  io.write("{_RESULT_MARKER}" .. string.format(',
        '    \'{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
        '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, '
        '"p99_us": %d, "max_us": %d}\\n\',',
        "    summary.requests, summary.duration, summary.bytes, e.connect, e.read,",
        "    e.write, e.status, e.timeout, latency:percentile(50),",
        "    latency:percentile(99), latency.max))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def _lua(text: object) -> str:
    """Quote a value as a Lua string literal."""
    return json.dumps(str(text))


def _parse_wrk(
    output: str, argv: list[str], stopped_early: bool, sent: str
) -> LoadResult:
    lines = [line for line in output.splitlines() if line.startswith(_RESULT_MARKER)]
    if not lines:
        raise RuntimeError(f"wrk printed no result line:\n{output}")
    figures = json.loads(lines[-1][len(_RESULT_MARKER) :])
    seconds = figures["duration_us"] / 1e6
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    command = " ".join("<script>" if part.endswith(".lua") else part for part in argv)
    command = re.sub(r"127\.0\.0\.1:[0-9]+", "127.0.0.1:<port>", command)
    return LoadResult(
        tool="wrk",
        command=command,
        sent=sent,
        requests=figures["requests"],
        seconds=seconds,
        rps=figures["requests"] / seconds if seconds else 0.0,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        errors=errors,
        bytes=figures["bytes"],
        stopped_early=stopped_early,
        details={
            k: figures[k] for k in ("connect", "read", "write", "status", "timeout")
        },
    )


# --- Python ---------------------------------------------------------------


def run_python(
    base_url: str,
    requests: list[Request],
    seconds: int,
    connections: int,
    stop_after: int | None,
) -> LoadResult:
    """Send the rotation from `connections` threads, one keep-alive connection each."""
    parts = urlsplit(base_url)
    counter = itertools.count()
    limit = stop_after or math.inf
    deadline = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(connections)]
    totals = {"errors": 0, "bytes": 0}
    lock = threading.Lock()

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        position = slot * 7919
        while time.monotonic() < deadline and next(counter) < limit:
            request = requests[position % len(requests)]
            position += 1
            started = time.perf_counter()
            try:
                connection.request("GET", request.path, headers=dict(request.headers))
                response = connection.getresponse()
                body = response.read()
                ok = response.status < 400
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=10
                )
                body, ok = b"", False
            latencies[slot].append((time.perf_counter() - started) * 1000)
            with lock:
                totals["bytes"] += len(body)
                totals["errors"] += 0 if ok else 1
        connection.close()

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    elapsed = time.monotonic() - started
    merged = sorted(itertools.chain.from_iterable(latencies))
    command = f"Python client: {connections} connections, {seconds} s" + (
        f", stop after {stop_after} responses" if stop_after else ""
    )
    return LoadResult(
        tool="python",
        command=command,
        sent=describe(requests),
        requests=len(merged),
        seconds=elapsed,
        rps=len(merged) / elapsed if elapsed else 0.0,
        p50_ms=percentile(merged, 50),
        p99_ms=percentile(merged, 99),
        max_ms=merged[-1] if merged else 0.0,
        errors=totals["errors"],
        bytes=totals["bytes"],
        stopped_early=len(merged) >= limit,
    )


def percentile(ordered: list[float], percent: float) -> float:
    """Return the nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]
