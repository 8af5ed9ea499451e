"""The approach ownfeed replaces: a page that calls the Instagram API on every view.

Many embed scripts and plugins do this, so every visitor costs one API call and
waits for it. Served by gunicorn as `bench.per_visitor_app:app`, with the Graph
API URL in `BENCH_GRAPH_URL` and the token in `BENCH_ACCESS_TOKEN`.
"""

from __future__ import annotations

import os

import requests
from flask import Flask, Response

MEDIA_FIELDS = "id,caption,media_type,media_url,permalink,thumbnail_url,timestamp"

app = Flask(__name__)


@app.get("/__bench/ping")
def ping() -> Response:
    """Return this worker's pid with no API call, so the harness can wait for it."""
    return Response(str(os.getpid()).encode(), mimetype="text/plain")


@app.get("/")
def page() -> Response:
    """Fetch the newest 12 posts from the API for this view and return them."""
    graph_url = os.environ["BENCH_GRAPH_URL"]
    upstream = requests.get(
        f"{graph_url}/v25.0/me/media",
        params={
            "fields": MEDIA_FIELDS,
            "limit": 12,
            "access_token": os.environ["BENCH_ACCESS_TOKEN"],
        },
        timeout=10,
    )
    return Response(upstream.content, upstream.status_code, mimetype="application/json")
