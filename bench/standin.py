"""A local stand-in for the Instagram Graph API (and X's timeline), for benchmarks.

It listens on 127.0.0.1 only and serves:

- `/v25.0/me/media` in pages (`limit`, at most 100, and a `next` URL),
  `/v25.0/me`, `/v25.0/<media id>` and `/v25.0/<media id>/children`;
- `/refresh_access_token`, `/access_token` and `/oauth/access_token`;
- `/cdn/<name>.jpg`, one generated JPEG for every image;
- X's `/2/users/by/username/<name>`, `/2/users/<id>/tweets` and `/oauth2/token`;
- `/__bench/stats` (calls per kind of path, and with `?timeline=1` the start
  and end of each recent call) and `/__bench/reset`, which zeroes both.

Every call except `/__bench/` waits `--delay` seconds first, like a distant API.
Any access token is accepted. Run it with
`python -m bench.standin --port 8100 --posts 500 --delay 0.15`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from bench import standin_data

logger = logging.getLogger(__name__)

API_VERSION = "v25.0"
MAX_PAGE_SIZE = 100
X_USER_ID = "2244994945"
X_MAX_POSTS = 3200  # X serves only a user's newest 3,200 posts.

_MEDIA_OBJECT = re.compile(rf"/{API_VERSION}/([0-9]+)(/children)?")
_CDN = re.compile(r"/cdn/[0-9]+\.(jpg|mp4)")
_X_TIMELINE = re.compile(r"/2/users/([0-9]+)/tweets")


class StandIn(ThreadingHTTPServer):
    """The stand-in server: its post count, delay, JPEG and call counters."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int, posts: int, delay: float) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.posts = posts
        self.delay = delay
        self.jpeg = standin_data.jpeg_bytes()
        # Made once, so that a response costs the stand-in little CPU, which the
        # servers under test share.
        cdn = f"{self.base_url}/cdn"
        self.records = [standin_data.media_record(i, cdn) for i in range(posts)]
        self.tweets = [
            standin_data.tweet_record(i, X_USER_ID)
            for i in range(min(posts, X_MAX_POSTS))
        ]
        self.calls: Counter[str] = Counter()
        # (kind, start, end) of the latest calls, in seconds since the epoch.
        self.timeline: deque[tuple[str, float, float]] = deque(maxlen=20_000)
        self.calls_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, kind: str) -> None:
        with self.calls_lock:
            self.calls[kind] += 1

    def record(self, kind: str, start: float, end: float) -> None:
        with self.calls_lock:
            self.timeline.append((kind, start, end))


class Handler(BaseHTTPRequestHandler):
    """Routes one request of the stand-in; see the module docstring for the paths."""

    protocol_version = "HTTP/1.1"
    server: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep quiet: the counters are the record of the calls."""

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._route("POST")

    def _route(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        if path.startswith("/__bench/"):
            self._control(path, query)
            return
        kind = classify(path)
        self.server.count(kind)
        started = time.time()
        time.sleep(self.server.delay)
        try:
            if kind == "cdn":
                self._send(200, self.server.jpeg, "image/jpeg")
                return
            payload = self._api_payload(kind, path, query)
            if payload is None:
                payload = {"error": {"message": f"Unknown path {path}", "code": 100}}
                self._send_json(payload, 404)
                return
            self._send_json(payload)
        finally:
            self.server.record(kind, started, time.time())

    def _api_payload(
        self, kind: str, path: str, query: dict[str, list[str]]
    ) -> dict[str, Any] | None:
        base = self.server.base_url
        if kind == "media_list":
            return media_page(base, self.server.records, query)
        if kind == "media_object":
            index = int(_MEDIA_OBJECT.fullmatch(path).group(1))
            index -= standin_data.FIRST_POST_ID
            if not 0 <= index < self.server.posts:
                return None
            return self.server.records[index]
        if kind == "children":
            return {"data": []}
        if kind == "me":
            return {
                "user_id": "17841400000000001",
                "id": "9000000000000001",
                "username": "bench.owner",
                "account_type": "BUSINESS",
                "media_count": self.server.posts,
            }
        if kind in ("refresh", "token_exchange"):
            token = "IGbench" + str(time.time_ns())
            return {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": 5183944,
            }
        return x_payload(kind, path, query, self.server.tweets)

    def _control(self, path: str, query: dict[str, list[str]]) -> None:
        with self.server.calls_lock:
            if path == "/__bench/reset":
                self.server.calls.clear()
                self.server.timeline.clear()
            payload: dict[str, Any] = {
                "calls": dict(self.server.calls),
                "posts": self.server.posts,
            }
            if query.get("timeline"):
                payload["timeline"] = list(self.server.timeline)
        self._send_json(payload)

    def _send_json(self, payload: dict[str, Any], status: int = 200) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, "application/json; charset=UTF-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def classify(path: str) -> str:
    """Name the kind of call a path is, for the counters."""
    if path == f"/{API_VERSION}/me/media":
        return "media_list"
    if path == f"/{API_VERSION}/me":
        return "me"
    match = _MEDIA_OBJECT.fullmatch(path)
    if match:
        return "children" if match.group(2) else "media_object"
    if path == "/refresh_access_token":
        return "refresh"
    if path in ("/access_token", "/oauth/access_token"):
        return "token_exchange"
    if _CDN.fullmatch(path):
        return "cdn"
    if path.startswith("/2/users/by/username/"):
        return "x_user"
    if _X_TIMELINE.fullmatch(path):
        return "x_timeline"
    if path == "/oauth2/token":
        return "x_token"
    return "other"


def media_page(
    base: str, records: list[dict[str, Any]], query: dict[str, list[str]]
) -> dict[str, Any]:
    """Return one page of `/me/media`; `after` is the offset of its first post."""
    limit = min(int(query.get("limit", ["25"])[0]), MAX_PAGE_SIZE)
    offset = int(query.get("after", ["0"])[0])
    end = min(offset + limit, len(records))
    paging: dict[str, Any] = {"cursors": {"before": str(offset), "after": str(end)}}
    if end < len(records):
        kept = {name: values[0] for name, values in query.items() if name != "after"}
        kept.update(limit=str(limit), after=str(end))
        paging["next"] = f"{base}/{API_VERSION}/me/media?{urlencode(kept)}"
    return {"data": records[offset:end], "paging": paging}


def x_payload(
    kind: str, path: str, query: dict[str, list[str]], tweets: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Return the stand-in X response for a user lookup, a timeline page or a token."""
    user = {
        "id": X_USER_ID,
        "username": "bench_owner",
        "name": "Bench Owner",
        "profile_image_url": "https://pbs.twimg.com/profile_images/bench_normal.jpg",
    }
    if kind == "x_user":
        return {"data": {**user, "username": path.rsplit("/", 1)[1]}}
    if kind == "x_token":
        return {"token_type": "bearer", "access_token": "bench-x-app-bearer"}
    if kind != "x_timeline":
        return None
    size = min(int(query.get("max_results", ["10"])[0]), MAX_PAGE_SIZE)
    offset = int(query.get("pagination_token", ["0"])[0])
    end = min(offset + size, len(tweets))
    data = tweets[offset:end]
    meta: dict[str, Any] = {"result_count": len(data)}
    if data:
        meta.update(newest_id=data[0]["id"], oldest_id=data[-1]["id"])
    if end < len(tweets):
        meta["next_token"] = str(end)
    return {"data": data, "includes": {"users": [user]}, "meta": meta}


def main() -> None:
    """Serve the stand-in until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--posts", type=int, default=500, help="posts of the account")
    parser.add_argument(
        "--delay", type=float, default=0.15, help="seconds each call waits"
    )
    arguments = parser.parse_args()
    server = StandIn(arguments.port, arguments.posts, arguments.delay)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
