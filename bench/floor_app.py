"""ownfeed's app with three benchmark-only routes, for gunicorn: `bench.floor_app:app`.

- `/__bench/ping` returns the worker's pid without touching the feed, so the
  harness can wait for every worker.
- `/__bench/floor/<name>` returns bytes captured from one of ownfeed's responses,
  with the same headers, and does nothing else: the cost of Flask and gunicorn
  alone, the floor that ownfeed's own route is compared with.
- `/__bench/static/<name>` serves a file with `send_from_directory`, as a static
  file route does.

The harness writes `<name>.body` and `<name>.json` (the headers) into
`BENCH_FLOOR_DIR` before the first request to a floor route. These routes exist
only in this module, never in the product app.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from flask import Response, abort, send_from_directory

# The product's own app object, the one `gunicorn app:app` serves, so that no
# second app is built in the worker.
from app import app

FLOOR_DIR = Path(os.environ.get("BENCH_FLOOR_DIR", "bench-floor"))
_NAME = re.compile(r"[a-z0-9_-]{1,40}")
_floors: dict[str, tuple[bytes, dict[str, str]]] = {}


@app.get("/__bench/ping")
def ping() -> Response:
    """Return this worker's pid with no other work, so the harness can wait for it."""
    return Response(str(os.getpid()).encode(), mimetype="text/plain")


@app.get("/__bench/floor/<name>")
def floor(name: str) -> Response:
    """Return the captured bytes and headers of `name`, read once per worker."""
    entry = _floors.get(name)
    if entry is None:
        if not _NAME.fullmatch(name):
            abort(404)
        try:
            body = (FLOOR_DIR / f"{name}.body").read_bytes()
            headers = json.loads((FLOOR_DIR / f"{name}.json").read_text("utf-8"))
        except FileNotFoundError:
            abort(404)
        entry = _floors[name] = (body, headers)
    body, headers = entry
    return Response(body, headers=headers)


@app.get("/__bench/static/<name>")
def static_file(name: str) -> Response:
    """Serve a file from `BENCH_FLOOR_DIR/static` as a static file route does."""
    return send_from_directory(FLOOR_DIR / "static", name, max_age=30 * 24 * 3600)
