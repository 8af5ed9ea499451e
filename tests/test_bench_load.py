"""Tests of the benchmark's load generators against the stand-in API on loopback."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.load import Request, lua_script, run_python, run_wrk, wrk_available
from bench.standin import StandIn


class QuietStandIn(StandIn):
    """A stand-in that ignores clients hanging up, as the load generators do.

    wrk and the Python client close their keep-alive connections when they stop,
    sometimes while a handler thread still reads the next request line.
    socketserver would print that ConnectionResetError's traceback.
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StandIn]:
    """A stand-in with 150 posts and no delay, served from a thread."""
    server = QuietStandIn(0, posts=150, delay=0.0)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def standin(standin_server: StandIn) -> StandIn:
    """The module's stand-in with its call counters at zero."""
    with standin_server.calls_lock:
        standin_server.calls.clear()
    return standin_server


@pytest.mark.parametrize("error", [ConnectionResetError, BrokenPipeError])
def test_standin_silent_on_hang_up(standin: StandIn, capsys, error) -> None:
    try:
        raise error("the client closed the connection")
    except error:
        standin.handle_error(None, ("127.0.0.1", 9))

    assert capsys.readouterr().err == ""


def test_standin_reports_other_errors(standin: StandIn, capsys) -> None:
    try:
        raise ValueError("a bug in a handler")
    except ValueError:
        standin.handle_error(None, ("127.0.0.1", 9))

    assert "ValueError: a bug in a handler" in capsys.readouterr().err


def test_standin_media_pages_follow_next(standin: StandIn) -> None:
    url = f"{standin.base_url}/v25.0/me/media?limit=100&access_token=t"

    first = requests.get(url, timeout=5).json()
    second = requests.get(first["paging"]["next"], timeout=5).json()

    assert len(first["data"]) == 100
    assert len(second["data"]) == 50
    assert "next" not in second["paging"]
    assert standin.calls["media_list"] == 2


def test_standin_counts_children_calls(standin: StandIn) -> None:
    requests.get(f"{standin.base_url}/v25.0/17900000000000003/children", timeout=5)

    assert standin.calls["children"] == 1


def test_run_python_stops_after_count(standin: StandIn) -> None:
    paths = [Request("/__bench/stats"), Request("/cdn/17900000000000000.jpg")]

    result = run_python(
        standin.base_url, paths, seconds=10, connections=2, stop_after=40
    )

    assert result.requests == 40
    assert result.errors == 0
    assert result.stopped_early
    assert standin.calls["cdn"] == 20


def test_run_python_counts_errors(standin: StandIn) -> None:
    result = run_python(
        standin.base_url,
        [Request("/no-such-path")],
        seconds=10,
        connections=1,
        stop_after=5,
    )

    assert result.errors == 5


def test_lua_script_rotates_requests_with_headers(tmp_path: Path) -> None:
    requests_ = [Request("/a"), Request("/b", (("If-None-Match", '"x"'),))]

    script = lua_script(requests_, per_thread=10, markers=tmp_path / "m")

    assert "function request()" in script
    assert '{"/b", {["If-None-Match"] = "\\"x\\""}}' in script
    assert "local stop_after = 10" in script


@pytest.mark.skipif(not wrk_available(), reason="wrk is not installed")
def test_run_wrk_stops_after_count(standin: StandIn, tmp_path: Path) -> None:
    paths = [Request("/__bench/stats"), Request("/cdn/17900000000000000.jpg")]

    result = run_wrk(standin.base_url, paths, 20, 2, 1, tmp_path, stop_after=60)

    assert result.stopped_early
    assert result.requests >= 60
    assert result.errors == 0
    assert standin.calls["cdn"] >= 30
