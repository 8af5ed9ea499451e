"""Profile requests to ownfeed in one process with pyinstrument, to find their costs.

    python -m bench.profile /images "/images?q=*" /__bench/floor/images

Starts the stand-in API and builds the benchmark app (ownfeed and its floor
routes) in real mode against it. After one warm-up request per path, it sends
each path `--requests` times through Flask's test client, prints the time per
request, and with `--tree` the call tree that pyinstrument recorded.

`q=*` stands for distinct search queries in turn, each new to the cache of
rendered pages. Flask's test client is single-threaded and skips gunicorn, so
the times are CPU costs, not the server's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

from flask.testing import FlaskClient

from bench import search_queries, servers
from bench.harness import FLOOR_HEADERS


def main() -> None:
    """Profile the paths given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="paths to request, such as /images")
    parser.add_argument("--posts", type=int, default=500, help="posts of the feed")
    parser.add_argument("--requests", type=int, default=2000, help="per path")
    parser.add_argument("--tree", action="store_true", help="print the call trees")
    arguments = parser.parse_args()

    from pyinstrument import Profiler

    work_dir = Path(tempfile.mkdtemp(prefix="ownfeed-profile-"))
    standin = servers.start_standin(work_dir, arguments.posts, 0.0)
    try:
        env = servers.ownfeed_environment(
            work_dir, "profile", standin, arguments.posts, 1800
        )
        os.environ.update(env)
        from bench.floor_app import app

        client = app.test_client()
        _warm(client, env, arguments.paths)
        for path in arguments.paths:
            rotation = _rotation(path)
            started = time.perf_counter()
            for index in range(arguments.requests):
                client.get(rotation[index % len(rotation)])
            per_request = (time.perf_counter() - started) / arguments.requests
            print(f"{path}: {per_request * 1e6:.0f} µs per request")
            if arguments.tree:
                profiler = Profiler(interval=0.001)
                with profiler:
                    for index in range(arguments.requests):
                        client.get(rotation[index % len(rotation)])
                print(profiler.output_text(unicode=True, color=False))
    finally:
        standin.stop()


def _rotation(path: str) -> list[str]:
    if "q=*" not in path:
        return [path]
    base = path.split("?")[0]
    return [f"{base}?{urlencode({'q': text})}" for text in search_queries.queries(1024)]


def _warm(client: FlaskClient, env: dict[str, str], paths: list[str]) -> None:
    """Fetch the feed, capture the floor bodies, and request every path once."""
    floor_dir = Path(env["BENCH_FLOOR_DIR"])
    for name, path in (("images", "/images"), ("tweets", "/tweets")):
        response = client.get(path)
        if response.status_code == 200:
            (floor_dir / f"{name}.body").write_bytes(response.data)
            headers = {
                key: value
                for key, value in response.headers.items()
                if key in FLOOR_HEADERS
            }
            (floor_dir / f"{name}.json").write_text(json.dumps(headers))
    for path in paths:
        client.get(_rotation(path)[0])


if __name__ == "__main__":
    main()
