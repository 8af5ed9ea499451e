"""The search, media, `/tweets` and per-visitor cases."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from bench import search_queries, standin_data
from bench.cases_feed import cached_feed, case_result
from bench.harness import (
    Bench,
    calls_between,
    paired_ratio,
    progress,
    ratio,
    upstream_calls,
)
from bench.load import LoadResult, Request
from bench.servers import Process

# --- search ---------------------------------------------------------------


def search_runs(bench: Bench, server: Process) -> dict[str, LoadResult]:
    """Load one server with distinct queries, one repeated query and no query."""
    progress(f"search on {server.name}")
    texts = search_queries.queries(bench.settings.search_queries)
    distinct = [Request("/images?" + urlencode({"q": text})) for text in texts]
    unfiltered, searched = bench.compare(server, [Request("/images")], distinct)
    return {
        "unfiltered": unfiltered,
        "distinct queries": searched,
        "one repeated query": bench.load(server, distinct[:1]),
    }


def search_case(
    bench: Bench, small: dict[str, LoadResult], large: dict[str, LoadResult]
) -> dict[str, Any]:
    """Compare search with unfiltered /images at both feed sizes."""
    settings = bench.settings
    sizes = {settings.posts: small, settings.search_posts: large}
    figures: dict[str, Any] = {"distinct_queries": settings.search_queries}
    for posts, runs in sizes.items():
        searched, plain = runs["distinct queries"], runs["unfiltered"]
        figures[f"posts_{posts}"] = {
            "rps": round(searched.rps, 1),
            "unfiltered_rps": round(plain.rps, 1),
            "ratio": paired_ratio(searched, plain),
            "p50_ms": round(searched.p50_ms, 3),
            "p99_ms": round(searched.p99_ms, 3),
            "repeated_query_rps": round(runs["one repeated query"].rps, 1),
            "repeated_query_ratio": ratio(runs["one repeated query"].rps, plain.rps),
        }

    # An estimate: while every CPU is busy, each request costs CPUs / throughput
    # of CPU time, shared by the server and the load generator.
    cores = len(os.sched_getaffinity(0))
    extra_posts = settings.search_posts - settings.posts
    per_request = [cores / runs["distinct queries"].rps for runs in sizes.values()]
    # With the index, the two sizes cost about the same, and a difference
    # below zero is the machine's noise, so it counts as no cost.
    difference = (per_request[1] - per_request[0]) / extra_posts * 1e6
    figures["http_us_per_kept_post"] = round(max(0.0, difference), 3)
    figures.update(filter_cost(settings))
    met = figures[f"posts_{settings.posts}"]["ratio"] >= 0.8

    runs = {
        f"{label}, {posts} posts": run
        for posts, size_runs in sizes.items()
        for label, run in size_runs.items()
    }
    return case_result(
        "Search `/images?q=...`",
        f"Visitors search the {settings.posts} and {settings.search_posts} kept "
        "posts with different words. Every query here is new to the cache of "
        "rendered pages, so each request runs its query over all kept posts "
        "through the feed's search index and renders its page. A query asked "
        "once is not kept, and one asked again is.",
        f"at least 0.8 of unfiltered /images at {settings.posts} posts; the cost "
        "per kept post stated",
        met,
        figures,
        runs,
    )


def filter_cost(settings: Any) -> dict[str, float]:
    """Time the search index in this process, in microseconds per kept post.

    `index_us_per_kept_post` is the time to build the index, once per feed
    version. `filter_us_per_kept_post` is one distinct query against it, with
    the term masks that earlier queries left, as in a running server.
    """
    import posts as product_posts
    import search

    records = [
        standin_data.media_record(index, "https://cdn.invalid")
        for index in range(settings.search_posts)
    ]
    kept = product_posts.normalize_posts(records)
    keys = [search.search_key(post["caption"]) for post in kept]
    types = [post["media_type"] for post in kept]
    parsed = [search.parse_query(text) for text in search_queries.queries(200)]
    started = time.perf_counter()
    index = search.SearchIndex(keys, types)
    built = time.perf_counter() - started
    started = time.perf_counter()
    for query in parsed:
        search.filter_posts(kept, index, query, None)
    filtered = time.perf_counter() - started
    return {
        "index_us_per_kept_post": round(built / len(kept) * 1e6, 3),
        "filter_us_per_kept_post": round(filtered / (len(parsed) * len(kept)) * 1e6, 4),
    }


# --- media ----------------------------------------------------------------


def media_case(bench: Bench, server: Process, image_path: str) -> dict[str, Any]:
    """Compare a cached image from /media with the same file as a static file."""
    progress("media route against a static file")
    body = b""
    for _ in range(2):  # the first request downloads and resizes
        response = requests.get(server.url + image_path, timeout=60)
        response.raise_for_status()
        body = response.content
    floor_dir = server.extra["env"]["BENCH_FLOOR_DIR"]
    with open(f"{floor_dir}/static/image.jpg", "wb") as output:
        output.write(body)
    static, served = bench.compare(
        server, [Request("/__bench/static/image.jpg")], [Request(image_path)]
    )
    share = paired_ratio(served, static)
    figures = {
        "image_bytes": len(body),
        "rps": round(served.rps, 1),
        "static_rps": round(static.rps, 1),
        "ratio": share,
        "p50_ms": round(served.p50_ms, 3),
        "static_p50_ms": round(static.p50_ms, 3),
        "resize_ms": resize_times(bench.settings.resize_runs),
    }
    return case_result(
        "Cached image from `/media`",
        "Once an image is resized and kept on disk, serving it should cost little "
        "more than a static file; the resize itself happens once per image and width.",
        "at least 0.8 of the static file's requests per second; resize time stated",
        share >= 0.8,
        figures,
        {"static": static, image_path: served},
    )


def resize_times(runs: int) -> dict[str, float]:
    """Return the median milliseconds of `media.resize` per width, for one photo."""
    import media

    photo = standin_data.jpeg_bytes()
    times = {}
    for width in media.DEFAULT_WIDTHS:
        samples = []
        for _ in range(max(1, runs)):
            started = time.perf_counter()
            media.resize(photo, width)
            samples.append((time.perf_counter() - started) * 1000)
        times[str(width)] = round(statistics.median(samples), 2)
    return times


def first_image_paths(feed_body: dict[str, Any], count: int) -> list[str]:
    """Return the paths of the 320-pixel images of the first posts of a page."""
    paths = []
    for post in feed_body["data"]:
        url = (post.get("sizes") or {}).get("320")
        if url:
            paths.append(urlsplit(url).path)
    return paths[:count]


# --- /tweets --------------------------------------------------------------


def tweets_case(bench: Bench, server: Process, standin: Process) -> dict[str, Any]:
    """Run the cached-feed case on /tweets, or report why it cannot run."""
    title = "Cached `/tweets`"
    probe = requests.get(server.url + "/tweets", timeout=60)
    if probe.status_code != 200:
        reason = (
            "not run: /tweets not available (404)"
            if probe.status_code == 404
            else f"not run: /tweets returned {probe.status_code}: {probe.text[:200]}"
        )
        progress(reason)
        return {"title": title, "status": "not run", "reason": reason, "met": None}
    case, _ = cached_feed(bench, server, standin, "/tweets", "tweets")
    return case


# --- per-visitor fetching -------------------------------------------------


def per_visitor_case(
    bench: Bench, server: Process, standin: Process, ownfeed: dict[str, Any]
) -> dict[str, Any]:
    """Compare an app that calls the API on every view with cached ownfeed.

    Throughput comes from the load run. The calls per view are counted in a
    separate run of whole views, because a load run ends with requests in
    flight that reached the API but were never counted as views.
    """
    progress("per-visitor fetching")
    run = bench.load(server, [Request("/")])
    views = bench.settings.counted_views
    per_visitor_calls = calls_per_view(server, "/", standin, views)
    ownfeed_run = ownfeed["run"]
    figures = {
        "per_visitor_rps": round(run.rps, 1),
        "per_visitor_p50_ms": round(run.p50_ms, 2),
        "per_visitor_calls_per_1000_views": round(1000 * per_visitor_calls, 1),
        "ownfeed_rps": round(ownfeed_run.rps, 1),
        "ownfeed_p50_ms": round(ownfeed_run.p50_ms, 3),
        "ownfeed_calls_per_1000_views": round(1000 * ownfeed["calls_per_view"], 3),
        "views_counted": views,
        "throughput_ratio": ratio(ownfeed_run.rps, run.rps),
    }
    return case_result(
        "Per-visitor fetching compared with ownfeed",
        "Scripts that call the Instagram API on every page view make every visitor "
        "wait for Instagram and spend one call of the hourly rate limit per view; "
        "ownfeed serves the same views from its cache.",
        "stated",
        None,
        figures,
        {"per-visitor app": run, "ownfeed /images": ownfeed_run},
    )


def calls_per_view(server: Process, path: str, standin: Process, views: int) -> float:
    """Send `views` whole views from 8 threads; return upstream calls per view."""
    wait_until_quiet(standin)
    before = upstream_calls(standin)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(
            pool.map(
                lambda _: requests.get(server.url + path, timeout=60).status_code,
                range(views),
            )
        )
    if set(statuses) != {200}:
        raise RuntimeError(
            f"{path} returned {sorted(set(statuses))} while counting, not only 200."
        )
    calls = calls_between(before, upstream_calls(standin))
    api_calls = sum(count for kind, count in calls.items() if kind != "cdn")
    return api_calls / views


def wait_until_quiet(standin: Process, timeout: float = 15.0) -> None:
    """Wait until the stand-in's call counts stop changing for a second.

    Requests that a load run left in flight still reach the stand-in for a
    while after the load generator exits.
    """
    deadline = time.monotonic() + timeout
    previous = upstream_calls(standin)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = upstream_calls(standin)
        if current == previous:
            return
        previous = current
