"""The `/images` cases: cold start, cached, revalidation, memory and refresh under load.

Each case returns a dict with its title, what it means, its target, whether the
target was met (None when the case only states figures), its figures and the
load runs behind them.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from bench import search_queries
from bench.harness import (
    Bench,
    calls_between,
    capture,
    paired_ratio,
    progress,
    upstream_calls,
)
from bench.load import LoadResult, Request, percentile
from bench.servers import Process, resident_kib

MB = 1_000_000
MEMORY_LIMIT_MB = 80
# RSS moves by a few pages as the allocator reuses memory, so a change up to
# this size counts as no growth.
MEMORY_NOISE_MB = 1.0


def case_result(
    title: str,
    meaning: str,
    target: str,
    met: bool | None,
    figures: dict[str, Any],
    runs: dict[str, LoadResult] | None = None,
) -> dict[str, Any]:
    """Return one case's entry of results.json."""
    return {
        "title": title,
        "status": "run",
        "meaning": meaning,
        "target": target,
        "met": met,
        "figures": figures,
        "runs": {label: run.as_dict() for label, run in (runs or {}).items()},
    }


# --- cold start -----------------------------------------------------------


def cold_start(bench: Bench, server: Process, standin: Process) -> dict[str, Any]:
    """Send the first requests of a fresh server from many clients at once."""
    clients = bench.settings.cold_clients
    progress(f"cold start: {clients} concurrent clients on an empty cache")
    upstream_calls(standin, reset=True)
    outcomes = _concurrent_first_requests(server.url, clients)
    calls = upstream_calls(standin)

    first_bytes = sorted(outcome["first_byte_ms"] for outcome in outcomes)
    statuses = sorted({outcome["status"] for outcome in outcomes})
    expected = bench.pages(bench.settings.posts)
    media_calls = calls.get("media_list", 0)
    children_calls = calls.get("children", 0) + calls.get("media_object", 0)
    met = media_calls == expected and children_calls == 0 and statuses == [200]

    figures = {
        "clients": clients,
        "posts": bench.settings.posts,
        "statuses": statuses,
        "media_calls": media_calls,
        "expected_media_calls": expected,
        "children_calls": children_calls,
        "other_upstream_calls": {
            kind: count
            for kind, count in calls.items()
            if kind not in ("media_list", "children", "media_object")
        },
        "first_byte_ms_min": round(first_bytes[0], 1),
        "first_byte_ms_p50": round(percentile(first_bytes, 50), 1),
        "first_byte_ms_max": round(first_bytes[-1], 1),
        "upstream_fetch_ms": round(expected * bench.settings.delay * 1000, 1),
    }
    return case_result(
        "Cold start under concurrent clients",
        f"{clients} visitors arrive at once on a server that has never fetched the "
        "feed; ownfeed must fetch it once for all of them, not once per visitor.",
        f"exactly ceil(N/100) = {expected} media calls and no children calls",
        met,
        figures,
    )


def _concurrent_first_requests(url: str, clients: int) -> list[dict[str, Any]]:
    """Send GET /images from `clients` threads released together; time each."""
    parts = urlsplit(url)
    barrier = threading.Barrier(clients)
    outcomes: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=90)
        barrier.wait(timeout=30)
        started = time.perf_counter()
        try:
            connection.request("GET", "/images")
            response = connection.getresponse()
            first_byte = time.perf_counter() - started
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            first_byte, status = time.perf_counter() - started, type(err).__name__
        finally:
            connection.close()
        with lock:
            outcomes.append({"status": status, "first_byte_ms": first_byte * 1000})

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes


# --- cached feed and its floor --------------------------------------------


def cached_feed(
    bench: Bench, server: Process, standin: Process, path: str, name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compare a cached feed route with the floor route returning the same bytes.

    Returns the case and what later cases reuse: the 200 run, its ETag and calls.
    """
    progress(f"cached {path} against the floor route")
    response = capture(server, path, name)
    before = upstream_calls(standin)
    floor, feed = bench.compare(
        server, [Request(f"/__bench/floor/{name}")], [Request(path)]
    )
    calls = calls_between(before, upstream_calls(standin))
    share = paired_ratio(feed, floor)
    figures = {
        "body_bytes": len(response.content),
        "rps": round(feed.rps, 1),
        "floor_rps": round(floor.rps, 1),
        "ratio": share,
        "p50_ms": round(feed.p50_ms, 3),
        "floor_p50_ms": round(floor.p50_ms, 3),
        "p99_ms": round(feed.p99_ms, 3),
        "floor_p99_ms": round(floor.p99_ms, 3),
        "upstream_calls": sum(calls.values()),
    }
    case = case_result(
        f"Cached `{path}`",
        f"What serving the cached {path} costs on top of Flask and gunicorn "
        "themselves: the floor route returns the same bytes and headers and does "
        "nothing else.",
        "at least 0.9 of the floor's requests per second",
        share >= 0.9,
        figures,
        {"floor": floor, path: feed},
    )
    reuse = {"run": feed, "etag": response.headers.get("ETag"), "calls": calls}
    return case, reuse


def revalidation(bench: Bench, server: Process, etag: str) -> dict[str, Any]:
    """Compare 304 responses to `If-None-Match` with full 200 responses."""
    progress("If-None-Match revalidation")
    probe = _get(server.url + "/images", {"If-None-Match": etag})
    if probe.status != 304:
        raise RuntimeError(
            f"/images with If-None-Match returned {probe.status}, not 304."
        )
    full, not_modified = bench.compare(
        server, [Request("/images")], [Request("/images", (("If-None-Match", etag),))]
    )
    figures = {
        "rps_304": round(not_modified.rps, 1),
        "rps_200": round(full.rps, 1),
        "ratio": paired_ratio(not_modified, full),
        "p50_ms_304": round(not_modified.p50_ms, 3),
        "p50_ms_200": round(full.p50_ms, 3),
        "bytes_per_response_304": round(not_modified.bytes / not_modified.requests),
        "bytes_per_response_200": round(full.bytes / full.requests),
    }
    return case_result(
        "`If-None-Match` revalidation",
        "Browsers and CDNs that kept a copy ask again with its ETag; a 304 saves "
        "the body on the wire, and this shows whether it also saves server time.",
        "stated",
        None,
        figures,
        {"304": not_modified, "200": full},
    )


def _get(url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", parts.path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


# --- memory ---------------------------------------------------------------


def memory(bench: Bench, server: Process, media_paths: list[str]) -> dict[str, Any]:
    """Measure each worker's RSS after half and all of a mixed request load."""
    total = bench.settings.memory_requests
    half = total // 2
    progress(f"memory: {total} mixed requests, RSS at {half} and {total}")
    mix = memory_mix(bench.settings.search_queries, media_paths)
    seconds = bench.settings.memory_max_seconds
    first = bench.load(server, mix, seconds=seconds, stop_after=half)
    rss_half = _worker_rss_mb(server)
    second = bench.load(server, mix, seconds=seconds, stop_after=total - half)
    rss_full = _worker_rss_mb(server)

    growth = [
        round(full - part, 2) for part, full in zip(rss_half, rss_full, strict=True)
    ]
    sent = first.requests + second.requests
    met = (
        sent >= total
        and max(rss_full) < MEMORY_LIMIT_MB
        and max(growth) <= MEMORY_NOISE_MB
    )

    figures = {
        "requests": sent,
        "rss_mb_after_half": rss_half,
        "rss_mb_after_all": rss_full,
        "growth_mb": growth,
        "limit_mb": MEMORY_LIMIT_MB,
        "growth_tolerance_mb": MEMORY_NOISE_MB,
        "distinct_requests_in_mix": len(mix),
    }
    return case_result(
        "Memory per worker",
        "A long-running worker must not grow: the mix of feed pages, new searches, "
        "HTML, images and health checks fills every cache, and the RSS must stay "
        "flat between the two halves.",
        f"under {MEMORY_LIMIT_MB} MB per worker after {total} requests and no "
        f"growth (at most {MEMORY_NOISE_MB} MB) from {half} to {total}",
        met,
        figures,
        {"first half": first, "second half": second},
    )


def memory_mix(query_count: int, media_paths: list[str]) -> list[Request]:
    """Return the rotation of the memory case: of every 10 requests, 1 is a search.

    Every search is new to the cache of rendered pages, so each one is
    rendered and then dropped, and the other requests cover the remaining routes.
    """
    fixed = [
        Request("/images"),
        Request("/images?limit=24"),
        Request("/images?format=html"),
        Request("/images?type=video"),
        Request("/images/embed"),
        Request("/embed.js"),
        Request("/healthz"),
        Request("/images", (("If-None-Match", '"no-such-etag"'),)),
    ]
    searches = [
        Request("/images?" + urlencode({"q": query}))
        for query in search_queries.queries(query_count)
    ]
    images = [Request(path) for path in media_paths] or fixed
    mix: list[Request] = []
    for index, search in enumerate(searches):
        mix.append(search)
        mix.append(images[index % len(images)])
        mix.extend(fixed)
    return mix


def _worker_rss_mb(server: Process) -> list[float]:
    return [round(resident_kib(pid) * 1024 / MB, 2) for pid in server.worker_pids()]


# --- refresh under load ---------------------------------------------------

# After its last page, a fetch still parses, normalises and saves the posts, and
# then the other workers read the new file. A refresh window includes this time.
SAVE_ALLOWANCE_SECONDS = 0.5
# Pages of one fetch follow each other at once; a longer gap starts a new fetch.
FETCH_GAP_SECONDS = 0.5


def refresh_under_load(
    bench: Bench, server: Process, standin: Process, baseline: LoadResult
) -> dict[str, Any]:
    """Load /images while its short cache time makes the feed refresh repeatedly.

    wrk supplies the load. A probe on its own connection sends one request after
    another and records each one's time, which separates the slowest request
    during the refreshes from the slowest request between them.
    """
    settings = bench.settings
    progress(f"refresh under load: cache time {settings.refresh_ttl} s")
    capture(server, "/images", "images")
    upstream_calls(standin, reset=True)
    probe = _Probe(server.url, settings.refresh_seconds)
    probe.start()
    run = bench.load(server, [Request("/images")], seconds=settings.refresh_seconds)
    probe.join(settings.refresh_seconds + 30)
    timeline = requests.get(
        standin.url + "/__bench/stats?timeline=1", timeout=10
    ).json()["timeline"]
    windows = refresh_windows(timeline)
    during, between = probe.split(windows)

    delay_ms = settings.delay * 1000
    fetch_ms = bench.pages(settings.posts) * delay_ms
    slowest_during = max(during, default=0.0)
    slowest_between = max(between, default=0.0)
    met = (
        len(windows) >= 1
        and len(during) >= 1
        and run.errors == 0
        and slowest_during < fetch_ms
        and slowest_during - slowest_between < delay_ms
    )
    figures = {
        "cache_seconds": settings.refresh_ttl,
        "refreshes": len(windows),
        "slowest_ms_during_refresh": round(slowest_during, 2),
        "slowest_ms_between_refreshes": round(slowest_between, 2),
        "p50_ms_during_refresh": round(percentile(sorted(during), 50), 2),
        "p50_ms_between_refreshes": round(percentile(sorted(between), 50), 2),
        "probe_requests_during_refresh": len(during),
        "probe_requests_between_refreshes": len(between),
        "max_ms_all_requests": round(run.max_ms, 2),
        "p99_ms_all_requests": round(run.p99_ms, 3),
        "max_ms_without_refresh": round(baseline.max_ms, 2),
        "upstream_call_ms": delay_ms,
        "upstream_fetch_ms": round(fetch_ms, 1),
    }
    return case_result(
        "Refresh under load",
        "When the cache time runs out, visitors keep getting the saved feed while "
        "one background fetch replaces it, so no visitor waits for Instagram. A "
        "visitor who waited would be slower by at least one upstream call than the "
        "slowest visitor between refreshes.",
        "at least one refresh; during refreshes, the slowest request is faster than "
        f"the whole fetch ({fetch_ms:.0f} ms) and less than one upstream call "
        f"({delay_ms:.0f} ms) slower than the slowest request between refreshes",
        met,
        figures,
        {"/images while refreshing": run},
    )


def refresh_windows(timeline: list[list[Any]]) -> list[tuple[float, float]]:
    """Group the stand-in's media page calls into fetches: (start, end) each."""
    calls = sorted(
        (start, end) for kind, start, end in timeline if kind == "media_list"
    )
    windows: list[list[float]] = []
    for start, end in calls:
        if windows and start - windows[-1][1] < FETCH_GAP_SECONDS:
            windows[-1][1] = max(windows[-1][1], end)
        else:
            windows.append([start, end])
    return [(start, end + SAVE_ALLOWANCE_SECONDS) for start, end in windows]


class _Probe(threading.Thread):
    """Sends GET /images one after another on one connection and times each."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(name="refresh-probe")
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.seconds = seconds
        self.samples: list[tuple[float, float, float]] = []  # start, end, ms

    def run(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            started_wall, started = time.time(), time.perf_counter()
            connection.request("GET", "/images")
            connection.getresponse().read()
            elapsed = time.perf_counter() - started
            self.samples.append((started_wall, started_wall + elapsed, elapsed * 1000))
            time.sleep(0.005)
        connection.close()

    def split(
        self, windows: list[tuple[float, float]]
    ) -> tuple[list[float], list[float]]:
        """Return the probe's times overlapping a refresh window, and the others."""
        during, between = [], []
        for start, end, ms in self.samples:
            overlaps = any(
                start < w_end and end > w_start for w_start, w_end in windows
            )
            (during if overlaps else between).append(ms)
        return during, between
