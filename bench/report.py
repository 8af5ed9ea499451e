"""docs/benchmarks.md, written from the results of a run."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from bench.harness import Settings

Case = dict[str, Any]


def commands(settings: Settings, argv: list[str]) -> dict[str, str]:
    """Return how the run was started and how its load generator was called."""
    if settings.tool == "wrk":
        load = (
            f"wrk -t {settings.wrk_threads} -c {settings.connections} "
            f"-d {settings.seconds}s --timeout 10s -s <generated script> <url>"
        )
    else:
        load = (
            f"Python client (bench/load.py): {settings.connections} threads with one "
            f"keep-alive connection each, {settings.seconds} s per run"
        )
    return {
        "harness": shlex.join(["python", "-m", "bench.run", *argv[1:]]),
        "load": load,
    }


# --- one line per case ----------------------------------------------------


def _cached(f: dict[str, Any]) -> str:
    return (
        f"{f['rps']:,.0f} req/s against the floor's {f['floor_rps']:,.0f}: "
        f"**{f['ratio']:.2f}**; p50 {f['p50_ms']:.2f} ms "
        f"(floor {f['floor_p50_ms']:.2f}), p99 {f['p99_ms']:.2f} ms "
        f"(floor {f['floor_p99_ms']:.2f})"
    )


def _search(f: dict[str, Any]) -> str:
    sizes = [key for key in f if key.startswith("posts_")]
    parts = [
        f"{key[6:]} posts: {f[key]['rps']:,.0f} req/s against "
        f"{f[key]['unfiltered_rps']:,.0f} unfiltered: **{f[key]['ratio']:.2f}**"
        for key in sizes
    ]
    parts.append(
        f"{f['filter_us_per_kept_post']:.3f} µs per kept post per query, "
        f"{f['index_us_per_kept_post']:.2f} µs per kept post to build the index "
        f"once per feed version, "
        f"{f['http_us_per_kept_post']:.2f} µs per kept post over HTTP (estimate)"
    )
    return "; ".join(parts)


def _cold(f: dict[str, Any]) -> str:
    return (
        f"{f['media_calls']} media calls (expected {f['expected_media_calls']}), "
        f"{f['children_calls']} children calls; first byte p50 "
        f"{f['first_byte_ms_p50']:.0f} ms, max {f['first_byte_ms_max']:.0f} ms "
        f"(statuses {', '.join(map(str, f['statuses']))})"
    )


def _refresh(f: dict[str, Any]) -> str:
    return (
        f"{f['refreshes']} refreshes; slowest probe request "
        f"{f['slowest_ms_during_refresh']:.1f} ms during them and "
        f"{f['slowest_ms_between_refreshes']:.1f} ms between them; all requests: "
        f"max {f['max_ms_all_requests']:.1f} ms, p99 {f['p99_ms_all_requests']:.2f} ms"
    )


def _revalidation(f: dict[str, Any]) -> str:
    return (
        f"304: {f['rps_304']:,.0f} req/s, 200: {f['rps_200']:,.0f} req/s: "
        f"**{f['ratio']:.2f}**; {f['bytes_per_response_304']} against "
        f"{f['bytes_per_response_200']} bytes per response"
    )


def _memory(f: dict[str, Any]) -> str:
    rss = ", ".join(f"{value:.1f}" for value in f["rss_mb_after_all"])
    growth = ", ".join(f"{value:+.2f}" for value in f["growth_mb"])
    return (
        f"RSS per worker after {f['requests']:,} requests: {rss} MB; "
        f"growth over the second half: {growth} MB"
    )


def _per_visitor(f: dict[str, Any]) -> str:
    return (
        f"per-visitor: {f['per_visitor_rps']:,.0f} req/s, "
        f"{f['per_visitor_calls_per_1000_views']:g} API calls per 1,000 views; "
        f"ownfeed: {f['ownfeed_rps']:,.0f} req/s, "
        f"{f['ownfeed_calls_per_1000_views']:g} per 1,000 views"
    )


def _media(f: dict[str, Any]) -> str:
    resize = ", ".join(
        f"{width} px {ms:.1f} ms" for width, ms in f["resize_ms"].items()
    )
    return (
        f"{f['rps']:,.0f} req/s against the static file's {f['static_rps']:,.0f}: "
        f"**{f['ratio']:.2f}**; resize of a 1080×1350 photo: {resize}"
    )


HEADLINES: dict[str, Callable[[dict[str, Any]], str]] = {
    "cached_images": _cached,
    "tweets": _cached,
    "search": _search,
    "cold_start": _cold,
    "refresh_under_load": _refresh,
    "revalidation": _revalidation,
    "memory": _memory,
    "per_visitor": _per_visitor,
    "media": _media,
}


def headline(name: str, case: Case) -> str:
    if case.get("status") != "run":
        return case.get("reason") or case.get("status", "")
    return HEADLINES[name](case["figures"])


def verdict(case: Case) -> str:
    if case.get("status") == "not run":
        return "not run"
    if case.get("status") == "failed":
        return "failed"
    return {True: "met", False: "**missed**", None: "stated"}[case.get("met")]


def summary_lines(results: dict[str, Any]) -> str:
    """Return one plain line per case, for the end of the run's output."""
    lines = ["", "Results:"]
    for name, case in results["cases"].items():
        title = case.get("title", name).replace("`", "")
        lines.append(f"- {title}: {verdict(case).strip('*')}. {headline(name, case)}")
    return "\n".join(lines).replace("**", "")


# --- the page -------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """Return docs/benchmarks.md for `results`."""
    settings = results["settings"]
    lines = [
        "# Benchmarks",
        "",
        "This page is written by `make bench` (`python -m bench.run`) from "
        "`bench/results.json`; edit `bench/report.py`, not this page.",
        f"Run of {results['generated_at']}, {results['run_seconds']:.0f} s in all"
        + (", with the smoke test's tiny numbers." if results.get("smoke") else "."),
        "",
        "| case | result | target | verdict |",
        "|---|---|---|---|",
    ]
    for name, case in results["cases"].items():
        title = case.get("title", name)
        lines.append(
            f"| {title} | {headline(name, case)} | {case.get('target', '')} | "
            f"{verdict(case)} |"
        )
    lines += ["", *_machine(results), "", *_setup(results, settings)]
    for name, case in results["cases"].items():
        lines += ["", *_case_section(name, case)]
    return "\n".join(lines) + "\n"


def _machine(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    before = machine["load_average_before"][0]
    warning = []
    if before > machine["nproc"]:
        warning = [
            "",
            f"**The machine was busy**: the 1-minute load average was {before} on "
            f"{machine['nproc']} CPUs before the run started, from other processes. "
            "Figures of such a run are lower and vary more from run to run than on "
            "an idle machine, so run `make bench` again on an idle one before "
            "relying on a ratio near its target.",
        ]
    return [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs "
        f"(`nproc`: {machine['nproc']}), {machine['memory_gib']} GiB of memory",
        f"- System: {machine['os']}, Linux {machine['kernel']}",
        f"- Python {machine['python']}; {packages}",
        f"- Load generator: {machine['wrk'] or 'the Python client in bench/load.py'}",
        "- Load average (1, 5, 15 minutes) before the run: "
        f"{_plain(machine['load_average_before'])}; right after it, this run's "
        f"own processes included: {_plain(machine['load_average_after'])}",
        "",
        _pinning(machine),
        *warning,
    ]


def _pinning(machine: dict[str, Any]) -> str:
    alternation = (
        "Each comparison alternates its two sides in short runs, and its ratio is "
        "the median of the rounds' ratios, so that the machine's speed, which "
        "drifts within seconds on a shared machine, cancels out. The ratios are "
        "the figures to compare between runs and machines."
    )
    if not machine.get("server_cpus"):
        return (
            "The load generator runs on the same CPUs as the servers, and so does "
            "anything else running on the machine, which the load average shows. "
            + alternation
        )
    return (
        f"The servers run on CPU {_plain(machine['server_cpus'])} and the harness "
        f"with its load generator on CPU {_plain(machine['load_cpus'])} "
        "(`sched_setaffinity`), so a ratio compares what the server itself spends "
        "on each request, not how it shares a core with the load. Other processes "
        "on the machine still share both, which the load average shows. " + alternation
    )


def _setup(results: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    commands_ = results["commands"]
    return [
        "## Setup",
        "",
        f"- A stand-in for the Instagram Graph API (`bench/standin.py`) on 127.0.0.1 "
        f"serves {settings['posts']} posts ({settings['search_posts']} for the "
        "larger search case) in pages of 100, and waits "
        f"{settings['delay'] * 1000:.0f} ms before every response. It counts the "
        "calls it receives per kind of path.",
        "- ownfeed runs in real mode (`OWNFEED_SANDBOX=0`) against it under gunicorn "
        f"with {_count(settings['workers'], 'worker')} of "
        f"{_count(settings['threads'], 'thread')} each "
        "(`--worker-class gthread`), as the README's production example does. The "
        "module `bench/floor_app.py` adds the floor and static-file routes to the "
        "same app; the product has no such routes.",
        f"- Harness: `{commands_['harness']}`",
        f"- Load: `{commands_['load']}`, or the same runs with the Python client "
        "when wrk is missing. The generated script rotates through the case's "
        "requests and prints wrk's figures as JSON.",
        f"- Each load run lasts {settings['seconds']} s with "
        f"{settings['connections']} keep-alive connections, except where a case "
        f"says otherwise; a comparison runs its two sides in turn "
        f"{_count(settings['rounds'], 'time')}.",
    ]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _case_section(name: str, case: Case) -> list[str]:
    lines = [f"## {case.get('title', name)}", ""]
    if case.get("status") != "run":
        return [*lines, f"{case.get('reason')}."]
    lines += [
        case["meaning"],
        "",
        f"Target: {case['target']}. Verdict: {verdict(case)}.",
        "",
        headline(name, case) + ".",
        "",
        "| run | what was sent | requests | req/s | p50 ms | p99 ms | max ms "
        "| errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, run in case.get("runs", {}).items():
        lines.append(
            f"| {label} | {run['sent']} | {run['requests']:,} | {run['rps']:,.1f} "
            f"| {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['max_ms']:.1f} "
            f"| {run['errors']} |"
        )
    if not case.get("runs"):
        lines = lines[:-3]
    lines += ["", "Figures:", ""]
    lines += [f"- {key}: {_plain(value)}" for key, value in case["figures"].items()]
    commands_ = sorted({run["command"] for run in case.get("runs", {}).values()})
    if commands_:
        lines += ["", "Commands:", ""] + [f"- `{command}`" for command in commands_]
    return lines


def _plain(value: Any) -> str:
    """Format a figure: numbers as they are, lists and mappings as compact text."""
    if isinstance(value, dict):
        return (
            ", ".join(f"{key} {_plain(item)}" for key, item in value.items()) or "none"
        )
    if isinstance(value, list):
        return ", ".join(_plain(item) for item in value)
    return str(value)
