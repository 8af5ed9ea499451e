"""Run every benchmark case and write bench/results.json and docs/benchmarks.md.

`make bench` runs `python -m bench.run`; `python -m bench.run --smoke` runs every
case with tiny numbers, which the test suite does so the harness keeps working.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from bench import cases_feed, cases_more, report, servers
from bench.harness import SMOKE, Bench, Settings, progress
from bench.load import wrk_available

ROOT = Path(__file__).resolve().parent.parent
CASE_ORDER = (
    "cached_images",
    "search",
    "cold_start",
    "refresh_under_load",
    "revalidation",
    "memory",
    "per_visitor",
    "media",
    "tweets",
)


def run_cases(bench: Bench) -> dict[str, Any]:
    """Start every server, run every case, and return the cases by name.

    The servers start together to save time, and then wait idle until their
    cases. An idle gunicorn worker wakes about once a second, which costs
    nothing measurable.
    """
    settings = bench.settings
    found: dict[str, Any] = {}
    standin, large_standin = _parallel(
        lambda: bench.standin(settings.posts),
        lambda: bench.standin(settings.search_posts),
    )
    per_visitor_env = {"BENCH_GRAPH_URL": standin.url, "BENCH_ACCESS_TOKEN": "IGbench"}
    server, refresher, large, per_visitor = _parallel(
        lambda: bench.ownfeed("ownfeed", standin, settings.posts),
        lambda: bench.ownfeed("refresh", standin, settings.posts, settings.refresh_ttl),
        lambda: bench.ownfeed("search", large_standin, settings.search_posts),
        lambda: bench.gunicorn(
            "per-visitor", "bench.per_visitor_app:app", per_visitor_env
        ),
    )

    found["cold_start"] = _guard(lambda: cases_feed.cold_start(bench, server, standin))
    page = requests.get(server.url + "/images?limit=20", timeout=60).json()
    image_paths = cases_more.first_image_paths(page, 10)
    found["memory"] = _guard(lambda: cases_feed.memory(bench, server, image_paths))
    found["cached_images"], cached = cases_feed.cached_feed(
        bench, server, standin, "/images", "images"
    )
    cached["calls_per_view"] = cases_more.calls_per_view(
        server, "/images", standin, settings.counted_views
    )
    found["revalidation"] = _guard(
        lambda: cases_feed.revalidation(bench, server, cached["etag"])
    )
    small = cases_more.search_runs(bench, server)
    found["media"] = _guard(
        lambda: cases_more.media_case(bench, server, image_paths[0])
    )
    found["tweets"] = _guard(lambda: cases_more.tweets_case(bench, server, standin))
    bench.stop(server)

    found["refresh_under_load"] = _guard(
        lambda: cases_feed.refresh_under_load(bench, refresher, standin, cached["run"])
    )
    bench.stop(refresher)
    found["per_visitor"] = _guard(
        lambda: cases_more.per_visitor_case(bench, per_visitor, standin, cached)
    )
    bench.stop(per_visitor)
    bench.stop(standin)

    requests.get(large.url + "/images", timeout=120).raise_for_status()
    found["search"] = _guard(
        lambda: cases_more.search_case(
            bench, small, cases_more.search_runs(bench, large)
        )
    )
    return {name: found[name] for name in CASE_ORDER}


def _parallel(*starts: Callable[[], Any]) -> list[Any]:
    """Call each function in its own thread and return their results in order."""
    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        futures = [pool.submit(start) for start in starts]
        return [future.result() for future in futures]


def _guard(case: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one case; a failure is recorded in its entry and the run goes on."""
    try:
        return case()
    except Exception as err:  # noqa: BLE001 - one broken case must not stop the rest
        progress(traceback.format_exc())
        return {
            "status": "failed",
            "reason": f"{type(err).__name__}: {err}",
            "met": None,
        }


def machine() -> dict[str, Any]:
    """Describe the machine, the interpreter and the tools of this run."""
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
    memory_kib = int(
        next(line for line in meminfo if line.startswith("MemTotal")).split()[1]
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False)
    packages = {}
    for name in ("flask", "werkzeug", "gunicorn", "pillow", "requests"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "logical_cpus": len(models) or os.cpu_count(),
        "nproc": int(nproc.stdout.strip() or 0),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "packages": packages,
        "wrk": _wrk_version(),
    }


def _load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages from /proc/loadavg."""
    fields = Path("/proc/loadavg").read_text(encoding="utf-8").split()
    return [float(value) for value in fields[:3]]


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _wrk_version() -> str | None:
    if not wrk_available():
        return None
    output = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    lines = (output.stdout + output.stderr).splitlines()
    return lines[0].split(" Copyright")[0] if lines else None


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` through a temporary file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny numbers, for tests")
    parser.add_argument(
        "--tool",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk, the Python client, or wrk when installed",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results.json")
    parser.add_argument("--report", type=Path, default=ROOT / "docs/benchmarks.md")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (logs, instances)"
    )
    for name, default in Settings().as_dict().items():
        if name == "tool":
            continue
        option = f"--{name.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(option, type=type(default), default=None)
    return parser.parse_args(argv)


def settings_from(arguments: argparse.Namespace) -> Settings:
    values = dict(SMOKE) if arguments.smoke else {}
    for name in Settings().as_dict():
        given = getattr(arguments, name, None)
        if given is not None and name != "tool":
            values[name] = given
    tool = arguments.tool
    if tool == "auto":
        tool = "wrk" if wrk_available() else "python"
    if tool == "wrk" and not wrk_available():
        raise SystemExit("wrk is not installed. Run `make bench`, which installs it.")
    return Settings(**values, tool=tool)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results; return the exit status."""
    arguments = parse_arguments(argv)
    settings = settings_from(arguments)
    work_dir = Path(tempfile.mkdtemp(prefix="ownfeed-bench-"))
    bench = Bench(settings, work_dir)
    # Read before pinning, which leaves this process one CPU fewer for nproc.
    described = machine()
    pinned = servers.pin_servers() if settings.pin else None
    started = time.monotonic()
    load_before = _load_average()
    progress(f"ownfeed benchmark, load from {settings.tool}, folder {work_dir}")
    try:
        cases = run_cases(bench)
    finally:
        bench.stop_all()
        if not arguments.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    results = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "smoke": arguments.smoke,
        "run_seconds": round(time.monotonic() - started, 1),
        "machine": {
            **described,
            "server_cpus": pinned[0] if pinned else None,
            "load_cpus": pinned[1] if pinned else None,
            "load_average_before": load_before,
            "load_average_after": _load_average(),
        },
        "settings": settings.as_dict(),
        "commands": report.commands(settings, sys.argv if argv is None else argv),
        "processes": bench.processes,
        "cases": cases,
    }

    write_atomic(
        arguments.results, json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    )
    write_atomic(arguments.report, report.markdown(results))
    progress(report.summary_lines(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
