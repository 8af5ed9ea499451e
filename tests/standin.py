"""A scriptable HTTP server on loopback that replaces a provider's API in tests.

`StandIn` is a threaded `http.server` that records every request it gets. The
test sets its reply for each method and path: status, headers and body, a
delay before the status line, a body sent a few bytes at a time (trickle), a
connection closed with no response or in the middle of the body, or a redirect.
`FakeInstagram` installs working Instagram endpoints on a StandIn (code
exchange, long-lived exchange, refresh, /me, media pages, media objects, CDN
images), which a test then breaks one route at a time.

`BlackHole` is a listening socket whose accept queue is full, so a connection
attempt to it waits until the client's connect timeout.

Only loopback addresses are used. Every wait is bounded, and `stop()` ends
waits that are still running.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from PIL import Image

# Upper bound, in seconds, for any delay or trickle, so a stuck client cannot
# keep a handler thread alive after its test.
MAX_WAIT_SECONDS = 120.0


@dataclass
class Reply:
    """What the stand-in sends for one request."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before the status line.
    delay: float = 0.0
    # Seconds between body chunks of `chunk_size` bytes; 0 sends the body at once.
    trickle: float = 0.0
    chunk_size: int = 1
    # Content-Length to announce instead of the body's length; a larger value
    # with `close_after_body` makes a body cut short.
    content_length: int | None = None
    # Close the connection with no response at all.
    close: bool = False
    # Close the connection after the body (needed when the body is cut short).
    close_after_body: bool = False


@dataclass(frozen=True)
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, list[str]]:
        """Return the body parsed as an urlencoded form."""
        return parse_qs(self.body.decode("utf-8", "replace"))

    def value(self, name: str) -> str | None:
        """Return the first value of `name` from the query or the form."""
        values = self.query.get(name) or self.form.get(name)
        return values[0] if values else None

    def contains(self, secret: str) -> bool:
        """Tell whether `secret` appears anywhere in the request."""
        text = " ".join(
            [
                self.path,
                json.dumps(self.query),
                json.dumps(self.headers),
                self.body.decode("utf-8", "replace"),
            ]
        )
        return secret in text


Responder = Reply | Callable[[Request], Reply]


def json_reply(payload: Any, status: int = 200, **options: Any) -> Reply:
    """Return a Reply with `payload` as a JSON body."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    headers.update(options.pop("headers", {}))
    body = json.dumps(payload).encode()
    return Reply(status=status, body=body, headers=headers, **options)


def html_reply(text: str, status: int = 200, **options: Any) -> Reply:
    """Return a Reply with an HTML body."""
    headers = {"Content-Type": "text/html; charset=utf-8"}
    return Reply(status=status, body=text.encode(), headers=headers, **options)


def graph_error(
    code: int, message: str = "An error occurred", status: int = 400, **extra: Any
) -> Reply:
    """Return a Graph API error response: `{"error": {...}}` with HTTP `status`."""
    error = {"message": message, "type": "OAuthException", "code": code}
    error.update(extra)
    error.setdefault("fbtrace_id", "AbCdEf123")
    return json_reply({"error": error}, status=status)


def redirect_reply(location: str, status: int = 307) -> Reply:
    """Return a redirect to `location`."""
    return Reply(status=status, headers={"Location": location})


class StandIn:
    """A threaded HTTP server on a loopback address whose replies tests script."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.stopping = threading.Event()
        self._routes: list[tuple[str | None, re.Pattern[str], Responder]] = []
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = _Server((host, 0), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"standin-{host}",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StandIn:
        """Start serving in a daemon thread and return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and end the waits of handlers still running."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting ----------------------------------------------------------

    def route(self, method: str | None, path: str, responder: Responder) -> None:
        """Serve `method` (None: any) requests for exactly `path` with `responder`.

        A later route for the same path wins over an earlier one.
        """
        self.route_pattern(method, re.escape(path), responder)

    def route_pattern(
        self, method: str | None, pattern: str, responder: Responder
    ) -> None:
        """Serve requests whose whole path matches the regular expression."""
        with self._lock:
            self._routes.append((method, re.compile(pattern), responder))

    def responder_for(self, method: str, path: str) -> Responder | None:
        """Return the newest responder for `method` and `path`, or None."""
        with self._lock:
            routes = list(reversed(self._routes))
        for route_method, pattern, responder in routes:
            if route_method in (None, method) and pattern.fullmatch(path):
                return responder
        return None

    # --- what was received ----------------------------------------------------

    def record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self, path: str | None = None) -> list[Request]:
        """Return the requests received so far, only those for `path` if given."""
        with self._lock:
            received = list(self._requests)
        return [r for r in received if path is None or r.path == path]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A larger queue than the default 5, for load tests with many clients.
    request_queue_size = 128
    standin: StandIn


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm the
    # body would wait for the client's delayed ACK (about 40 ms on Linux).
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet; the stand-in records requests instead."""

    def _handle(self) -> None:
        standin = self.server.standin
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers=dict(self.headers.items()),
            body=body,
        )
        standin.record(request)

        responder = standin.responder_for(self.command, parts.path)
        if responder is None:
            reply = graph_error(100, f"Unsupported request to {parts.path}", 404)
        elif isinstance(responder, Reply):
            reply = responder
        else:
            reply = responder(request)
        try:
            self._send(reply, standin.stopping)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout or a size limit): nothing to do.
            self.close_connection = True

    def _send(self, reply: Reply, stopping: threading.Event) -> None:
        if reply.delay and stopping.wait(min(reply.delay, MAX_WAIT_SECONDS)):
            self.close_connection = True
            return
        if reply.close:
            self.close_connection = True
            return

        self.send_response(reply.status)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers.update(reply.headers)
        for name, value in headers.items():
            self.send_header(name, value)
        length = reply.content_length
        self.send_header(
            "Content-Length", str(len(reply.body) if length is None else length)
        )
        if reply.close_after_body:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return

        if not reply.trickle:
            self.wfile.write(reply.body)
        else:
            deadline = time.monotonic() + MAX_WAIT_SECONDS
            size = max(1, reply.chunk_size)
            for start in range(0, len(reply.body), size):
                self.wfile.write(reply.body[start : start + size])
                self.wfile.flush()
                if stopping.wait(reply.trickle) or time.monotonic() > deadline:
                    break
        self.wfile.flush()
        if reply.close_after_body:
            self.close_connection = True


class BlackHole:
    """A loopback port where connection attempts wait until the client times out.

    The socket listens with a backlog of 0 and never accepts. Once its accept
    queue contains a connection, Linux drops further SYNs, so a client's connect
    waits for its connect timeout.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.address = self.listener.getsockname()
        self.fillers: list[socket.socket] = []
        for _ in range(16):
            if self._connect_times_out():
                return
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(self.address)
            self.fillers.append(filler)
            time.sleep(0.02)
        self.close()
        raise RuntimeError("The accept queue never filled; no connect timeout here.")

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def _connect_times_out(self) -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(self.address)
            except TimeoutError:
                return True
            except OSError:
                return False
            return False

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# --- a working Instagram -------------------------------------------------------

API_VERSION = "v25.0"
USERNAME = "standin.owner"
USER_ID = "17841400000000042"
APP_USER_ID = "2764087539"
TOKEN_SECONDS = 60 * 24 * 3600


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    """Return a small JPEG image."""
    output = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(output, "JPEG")
    return output.getvalue()


class FakeInstagram:
    """Working Instagram endpoints on a StandIn, issuing distinct tokens.

    Paths: POST /oauth/access_token, and under /graph: /access_token,
    /refresh_access_token, /v25.0/me, /v25.0/me/media (pages of `page_size`
    linked by `paging.next`), /v25.0/<media id>, and /cdn/<n>.jpg images.
    """

    def __init__(self, standin: StandIn, post_count: int = 30) -> None:
        self.standin = standin
        self.post_count = post_count
        self.image = jpeg_bytes()
        self._issued = 0
        self._lock = threading.Lock()

    @property
    def token_url(self) -> str:
        return f"{self.standin.url}/oauth/access_token"

    @property
    def graph_url(self) -> str:
        return f"{self.standin.url}/graph"

    def path(self, step: str) -> str:
        """Return the stand-in path of a named step."""
        paths = {
            "code_exchange": "/oauth/access_token",
            "long_lived_exchange": "/graph/access_token",
            "refresh": "/graph/refresh_access_token",
            "profile": f"/graph/{API_VERSION}/me",
            "media": f"/graph/{API_VERSION}/me/media",
        }
        return paths[step]

    def config(self) -> dict[str, str]:
        """Return the INSTAGRAM_* settings that point ownfeed at this stand-in."""
        return {
            "INSTAGRAM_AUTHORIZE_URL": f"{self.standin.url}/oauth/authorize",
            "INSTAGRAM_TOKEN_URL": self.token_url,
            "INSTAGRAM_GRAPH_URL": self.graph_url,
            "INSTAGRAM_API_VERSION": API_VERSION,
        }

    def install(self) -> FakeInstagram:
        """Route every working endpoint; return self."""
        self.standin.route("POST", self.path("code_exchange"), self.exchange)
        self.standin.route("GET", self.path("long_lived_exchange"), self.long_lived)
        self.standin.route("GET", self.path("refresh"), self.refresh)
        self.standin.route("GET", self.path("profile"), self.profile)
        self.standin.route("GET", self.path("media"), self.media_page)
        self.standin.route_pattern(
            "GET", rf"/graph/{API_VERSION}/[0-9]+", self.media_object
        )
        self.standin.route_pattern("GET", r"/cdn/[0-9]+\.jpg", self.cdn_image)
        return self

    def issue(self, prefix: str) -> str:
        with self._lock:
            self._issued += 1
            return f"IGAA-{prefix}-{self._issued}"

    # --- endpoints --------------------------------------------------------------

    def exchange(self, request: Request) -> Reply:
        if not request.value("code"):
            return json_reply(
                {"error_type": "OAuthException", "code": 400, "error_message": "x"},
                400,
            )
        token = self.issue("short")
        return json_reply(
            {"access_token": token, "user_id": int(APP_USER_ID), "permissions": []}
        )

    def long_lived(self, request: Request) -> Reply:
        token = self.issue("long")
        return json_reply(
            {"access_token": token, "token_type": "bearer", "expires_in": TOKEN_SECONDS}
        )

    def refresh(self, request: Request) -> Reply:
        token = self.issue("refreshed")
        return json_reply(
            {"access_token": token, "token_type": "bearer", "expires_in": TOKEN_SECONDS}
        )

    def profile(self, request: Request) -> Reply:
        return json_reply(
            {
                "user_id": USER_ID,
                "id": APP_USER_ID,
                "username": USERNAME,
                "account_type": "MEDIA_CREATOR",
                "media_count": self.post_count,
            }
        )

    def media_page(self, request: Request) -> Reply:
        start = int(request.value("after") or 0)
        limit = int(request.value("limit") or 25)
        numbers = range(start, min(start + limit, self.post_count))
        body: dict[str, Any] = {
            "data": [self.post(number) for number in numbers],
            "paging": {"cursors": {"before": "QVFIa", "after": f"QVFI{start}"}},
        }
        if start + limit < self.post_count:
            query = urlencode(
                {
                    "access_token": request.value("access_token") or "",
                    "limit": limit,
                    "after": start + limit,
                }
            )
            body["paging"]["next"] = f"{self.graph_url}/{API_VERSION}/me/media?{query}"
        return json_reply(body)

    def media_object(self, request: Request) -> Reply:
        number = int(request.path.rsplit("/", 1)[1]) - 17_900_000_000_000_000
        if not 0 <= number < self.post_count:
            return graph_error(100, "Unsupported get request.")
        return json_reply(self.post(number))

    def cdn_image(self, request: Request) -> Reply:
        return Reply(body=self.image, headers={"Content-Type": "image/jpeg"})

    def post(self, number: int) -> dict[str, Any]:
        """Return media record `number`; a higher number is an older post."""
        hour = number % 24
        day = 28 - (number // 24) % 28
        return {
            "id": str(17_900_000_000_000_000 + number),
            "media_type": "IMAGE",
            "caption": f"Stand-in post {number} #standin",
            "media_url": f"{self.standin.url}/cdn/{number}.jpg",
            "permalink": f"https://www.instagram.com/p/S{number}/",
            "timestamp": f"2026-11-{day:02d}T{23 - hour:02d}:00:00+0000",
            "username": USERNAME,
        }


def token_record(
    access_token: str, issued_at: datetime, expires_at: datetime
) -> dict[str, Any]:
    """Return an active Instagram record for tokens.json, as ownfeed stores it."""
    return {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_at": expires_at.astimezone(UTC).isoformat(timespec="seconds"),
        "obtained_at": issued_at.astimezone(UTC).isoformat(timespec="seconds"),
        "refreshed_at": issued_at.astimezone(UTC).isoformat(timespec="seconds"),
        "user_id": USER_ID,
        "app_user_id": APP_USER_ID,
        "username": USERNAME,
        "account_type": "MEDIA_CREATOR",
        "permissions": ["instagram_business_basic"],
        "status": "active",
        "last_error": None,
        "refresh_failures": 0,
    }


# --- a working X API v2 --------------------------------------------------------

X_USERNAME = "standin_owner"
X_USER_ID = "1500000000000000042"
X_POST_BASE = 1_800_000_000_000_000_000


class FakeX:
    """Working X API v2 endpoints for app-only reads on a StandIn.

    Paths: GET /2/users/by/username/<X_USERNAME> and GET /2/users/<X_USER_ID>/tweets
    (one page of `post_count` posts, newest first, with the author in
    includes.users).
    """

    def __init__(self, standin: StandIn, post_count: int = 20) -> None:
        self.standin = standin
        self.post_count = post_count

    def path(self, step: str) -> str:
        """Return the stand-in path of a named step."""
        paths = {
            "user_lookup": f"/2/users/by/username/{X_USERNAME}",
            "timeline": f"/2/users/{X_USER_ID}/tweets",
        }
        return paths[step]

    def config(self) -> dict[str, str]:
        """Return the X_* settings that point ownfeed at this stand-in."""
        return {
            "X_API_URL": self.standin.url,
            "X_TOKEN_URL": f"{self.standin.url}/2/oauth2/token",
            "X_USERNAME": X_USERNAME,
        }

    def install(self) -> FakeX:
        """Route every working endpoint; return self."""
        self.standin.route("GET", self.path("user_lookup"), self.user_lookup)
        self.standin.route("GET", self.path("timeline"), self.timeline)
        return self

    # --- endpoints --------------------------------------------------------------

    def user(self) -> dict[str, Any]:
        return {"id": X_USER_ID, "username": X_USERNAME, "name": "Stand-in Owner"}

    def user_lookup(self, request: Request) -> Reply:
        return json_reply({"data": self.user()})

    def timeline(self, request: Request) -> Reply:
        posts = [self.post(number) for number in range(self.post_count)]
        return json_reply(
            {
                "data": posts,
                "includes": {"users": [self.user()]},
                "meta": {"result_count": len(posts)},
            }
        )

    def post(self, number: int) -> dict[str, Any]:
        """Return post `number`; a higher number is an older post."""
        return {
            "id": str(X_POST_BASE + self.post_count - number),
            "text": f"Stand-in post {number}",
            "author_id": X_USER_ID,
            "created_at": f"2026-11-28T{23 - number % 24:02d}:00:00.000Z",
            "lang": "en",
        }
