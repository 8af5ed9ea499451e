"""Upstream faults at each step of the Instagram flow, against a stand-in server.

ownfeed runs in real mode (not the sandbox) with its Instagram endpoints on a
`StandIn` on 127.0.0.1. Each case connects an account through the admin flow
and fetches the feed while the stand-in works, then breaks one step and drives
that step through ownfeed's own routes:

- `code_exchange`, `long_lived_exchange`, `profile`: a second connection attempt
  (the admin presses Generate again and the callback arrives);
- `refresh`: the admin's Refresh button;
- `media`: a visitor's `/images` once the cached feed is past its time.

For every case:
- no response of ownfeed is a 5xx;
- the stored token is neither lost nor replaced;
- the saved feed is still served, marked stale when its fetch failed;
- exactly one WARNING or ERROR line from ownfeed's own loggers names the failure;
- the admin summary shows it.

Cases are a table of steps times faults. `STEPS` and `FAULTS` are keyed by
provider, so another provider's steps and faults can be added by name.
"""

from __future__ import annotations

import html
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import requests
from conftest import ROOT, TEST_PASSWORD
from requests.adapters import HTTPAdapter
from standin import (
    BlackHole,
    FakeInstagram,
    Reply,
    Request,
    StandIn,
    free_port,
    graph_error,
    html_reply,
    json_reply,
    redirect_reply,
)

import images
import instagram
import services

CLIENT_SECRET = "standin-app-secret-never-sent-elsewhere"
TTL = 1800
# Client timeouts for these tests: connect and read, and the whole-response
# deadline. A stand-in's silence or trickle lasts longer than each of them.
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 0.5
RESPONSE_DEADLINE = 1.5
# Upper bound, in seconds, for one step through ownfeed; past it the step hangs.
STEP_SECONDS = 15.0
APP_LOGGERS = frozenset(path.stem for path in ROOT.glob("*.py"))
OUTAGE_PAGE = "<!DOCTYPE html><html><body><h1>Sorry, something went wrong.</h1>"


class Clock:
    """A settable clock for the app, starting at a fixed moment."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


# --- steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One upstream call of a provider, and how a test makes ownfeed call it."""

    provider: str
    name: str
    # "connect", "refresh" or "media": which ownfeed route drives the call.
    driver: str
    # A response of the right status but the wrong JSON shape for this call.
    wrong_shape: Any
    # Whether ownfeed legitimately records the failure in tokens.json, so only
    # the token itself (not the file's bytes) must stay the same.
    writes_token_file: bool = False


INSTAGRAM_STEPS = (
    Step(
        "instagram",
        "code_exchange",
        "connect",
        {"data": {"access_token": None, "user_id": None}},
    ),
    Step(
        "instagram",
        "long_lived_exchange",
        "connect",
        {"access_token": None, "token_type": "bearer", "expires_in": "sixty days"},
    ),
    Step(
        "instagram",
        "profile",
        "connect",
        {"id": None, "username": None, "user_id": {"nested": True}},
    ),
    Step(
        "instagram",
        "refresh",
        "refresh",
        {"access_token": "", "expires_in": None},
        writes_token_file=True,
    ),
    Step("instagram", "media", "media", {"data": {"id": "1"}, "paging": "next"}),
)
STEPS = {"instagram": INSTAGRAM_STEPS}
# The public route that serves each provider's feed.
FEED_ROUTES = {"instagram": "/images"}


# --- faults ---------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One way an upstream call goes wrong, and what ownfeed then reports.

    `make` builds the stand-in's Reply for a step; None means the call is
    diverted at the transport instead (`divert_to` names where). `message` is a
    fragment, compared ignoring case, of the log line and of the summary.
    """

    name: str
    make: Callable[[Step, FaultContext], Reply] | None
    message: str
    divert_to: str | None = None
    # Seconds the media step's feed waits before its next try, when fixed.
    retry_after: int | None = None
    rejects_token: bool = False


@dataclass
class FaultContext:
    """What a fault's reply may need: the provider's stand-in, its healthy
    replies, and the stand-in on the other loopback host."""

    fake: FakeInstagram
    other_host: StandIn | None = None
    healthy: dict[str, Reply] = field(default_factory=dict)


def _padded_body(step: Step, context: FaultContext) -> Reply:
    """Return the step's healthy JSON with 10 MB of extra text in it."""
    healthy = json.loads(context.healthy[step.name].body)
    healthy["padding"] = "x" * (10 * 1024 * 1024)
    return json_reply(healthy)


def _trickle(step: Step, context: FaultContext) -> Reply:
    """Return the healthy body, one byte every 0.05 s, each gap under the timeout."""
    body = context.healthy[step.name].body + b" " * 2000
    return Reply(body=body, trickle=0.05, chunk_size=1)


def _cut_short(step: Step, context: FaultContext) -> Reply:
    body = context.healthy[step.name].body
    return Reply(
        body=body[: len(body) // 2],
        content_length=len(body),
        close_after_body=True,
    )


def _to_other_host(step: Step, context: FaultContext) -> Reply:
    assert context.other_host is not None
    path = context.fake.path(step.name)
    return redirect_reply(f"{context.other_host.url}{path}", 307)


def _rate_limit(code: int, status: int = 400) -> Fault:
    return Fault(
        f"graph_code_{code}",
        lambda step, context: graph_error(
            code, "Application request limit reached", status
        ),
        "rate limit",
        retry_after=instagram.DEFAULT_RETRY_AFTER,
    )


COMMON_FAULTS = (
    Fault("connection_refused", None, "connection to instagram failed", "closed"),
    Fault("connect_timeout", None, "timed out", "black_hole"),
    Fault("read_timeout_silent", lambda s, c: Reply(delay=10.0), "timed out"),
    Fault("read_timeout_trickle", _trickle, "timed out"),
    Fault("closed_no_response", lambda s, c: Reply(close=True), "connection"),
    Fault("closed_mid_body", _cut_short, "connection to instagram failed"),
    Fault(
        "http_500",
        lambda s, c: graph_error(1, "An unknown error occurred", 500),
        "HTTP 500",
    ),
    Fault("http_502", lambda s, c: html_reply(OUTAGE_PAGE, 502), "HTTP 502"),
    Fault("http_503", lambda s, c: Reply(status=503), "HTTP 503"),
    Fault("html_page", lambda s, c: html_reply(OUTAGE_PAGE, 200), "not JSON"),
    Fault(
        "truncated_json",
        lambda s, c: Reply(body=b'{"data": [{"id": "1790', status=200),
        "not JSON",
    ),
    Fault("wrong_shape", lambda s, c: json_reply(s.wrong_shape), "lacks"),
    Fault("ten_megabytes", _padded_body, "larger than"),
    Fault("redirect_other_host", _to_other_host, "redirect"),
    Fault(
        "http_429_retry_after",
        lambda s, c: Reply(
            status=429,
            body=b"Too Many Requests",
            headers={"Retry-After": "120", "Content-Type": "text/plain"},
        ),
        "rate limit",
        retry_after=120,
    ),
    Fault(
        "http_429_no_retry_after",
        lambda s, c: json_reply({}, 429),
        "rate limit",
        retry_after=instagram.DEFAULT_RETRY_AFTER,
    ),
)
INSTAGRAM_FAULTS = (
    *COMMON_FAULTS,
    *(_rate_limit(code) for code in sorted(instagram.RATE_LIMIT_CODES)),
    Fault(
        "graph_code_190",
        lambda s, c: graph_error(
            190, "Error validating access token", 400, error_subcode=460
        ),
        "connect the account again",
        rejects_token=True,
    ),
)
FAULTS = {"instagram": INSTAGRAM_FAULTS}

CASES = [
    pytest.param(step, fault, id=f"{step.provider}-{step.name}-{fault.name}")
    for provider, steps in STEPS.items()
    for step in steps
    for fault in FAULTS[provider]
]


# --- transport diversion ------------------------------------------------------


class DivertingAdapter(HTTPAdapter):
    """Send requests for chosen paths to another loopback address.

    The request still goes through requests and urllib3 to a real socket, so a
    closed port refuses it and a full accept queue times its connect out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.diversions: dict[str, str] = {}

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        target = self.diversions.get(parts.path)
        if target is not None:
            request.url = urlunsplit(parts._replace(netloc=urlsplit(target).netloc))
        return super().send(request, **kwargs)


# --- fixtures -------------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def other_host() -> Iterator[StandIn]:
    """A stand-in on 127.0.0.2, another loopback host, that must get nothing."""
    with StandIn("127.0.0.2") as server:
        yield server


@pytest.fixture
def fake(standin: StandIn) -> FakeInstagram:
    return FakeInstagram(standin, post_count=30).install()


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> DivertingAdapter:
    """Give every Instagram client short timeouts and a diverting adapter."""
    diverting = DivertingAdapter()

    def make_client(*args: Any, **kwargs: Any) -> instagram.InstagramClient:
        session = requests.Session()
        session.mount("http://", diverting)
        return instagram.InstagramClient(
            *args,
            session=session,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            deadline=RESPONSE_DEADLINE,
            **kwargs,
        )

    monkeypatch.setattr(services, "InstagramClient", make_client)
    return diverting


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def real_app(make_app, fake: FakeInstagram, clock: Clock, adapter: DivertingAdapter):
    """ownfeed in real mode with its Instagram endpoints on the stand-in."""
    return make_app(
        OWNFEED_SANDBOX=False,
        INSTAGRAM_CLIENT_ID="1234567890",
        INSTAGRAM_CLIENT_SECRET=CLIENT_SECRET,
        INSTAGRAM_REDIRECT_URI="http://127.0.0.1/admin/callback/instagram",
        ADMIN_PASSWORD=TEST_PASSWORD,
        FEED_CACHE_SECONDS=TTL,
        CLOCK=clock,
        **fake.config(),
    )


class Visitor:
    """A logged-in test client that fails the test on any 5xx response."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.statuses: list[tuple[str, int]] = []

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._check(path, self.client.get(path, **kwargs))

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._check(path, self.client.post(path, **kwargs))

    def _check(self, path: str, response: Any) -> Any:
        self.statuses.append((path, response.status_code))
        assert response.status_code < 500 or (
            path.startswith("/images") and response.status_code == 503
        ), f"{path} answered {response.status_code}"
        return response

    def csrf_token(self, path: str) -> str:
        page = self.get(path).get_data(as_text=True)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, f"no CSRF token on {path}"
        return match.group(1)

    def log_in(self) -> None:
        token = self.csrf_token("/admin/login")
        response = self.post(
            "/admin/login", data={"password": TEST_PASSWORD, "csrf_token": token}
        )
        assert response.status_code == 303

    def connect(self, provider: str, code: str) -> Any:
        """Press Generate, then deliver the provider's callback with `code`."""
        token = self.csrf_token("/admin/generate")
        started = self.post(f"/admin/generate/{provider}", data={"csrf_token": token})
        assert started.status_code == 303
        state = parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]
        return self.get(
            f"/admin/callback/{provider}", query_string={"code": code, "state": state}
        )

    def press_refresh(self, provider: str) -> Any:
        token = self.csrf_token("/admin/summary")
        return self.post(f"/admin/refresh/{provider}", data={"csrf_token": token})

    def summary_text(self) -> str:
        return html.unescape(self.get("/admin/summary").get_data(as_text=True))


def join_background(timeout: float = STEP_SECONDS) -> None:
    """Wait for ownfeed's background feed and refresh threads to finish."""
    names = ("feed-", "refresh-")
    for thread in threading.enumerate():
        if thread.name.startswith(names) and thread is not threading.current_thread():
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} still runs after {timeout} s"


def run_bounded(target: Callable[[], Any], timeout: float = STEP_SECONDS) -> Any:
    """Run `target` in a thread; fail, rather than hang, when it takes too long."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = target()
        except BaseException as err:  # handed back to the test thread below
            outcome["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the step still runs after {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def actionable_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the WARNING and ERROR messages that ownfeed's own modules logged."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and record.name.split(".")[0] in APP_LOGGERS
    ]


def feed_ids(visitor: Visitor) -> tuple[list[str], bool]:
    body = visitor.get("/images?limit=100").get_json()
    return [item["id"] for item in body["data"]], body["stale"]


def tokens_path(app: Any) -> Path:
    return Path(app.instance_path) / "tokens.json"


def stored_token(app: Any) -> dict[str, Any]:
    record = json.loads(tokens_path(app).read_text())["providers"]["instagram"]
    return {key: record[key] for key in ("access_token", "expires_at", "user_id")}


@pytest.fixture
def connected(real_app, fake: FakeInstagram, clock: Clock) -> Visitor:
    """A logged-in admin whose account is connected and whose feed is saved."""
    visitor = Visitor(real_app)
    visitor.log_in()
    response = visitor.connect("instagram", "first-code")
    assert response.status_code == 303
    join_background()
    ids, stale = feed_ids(visitor)
    assert len(ids) == fake.post_count
    assert stale is False
    return visitor


def break_step(
    step: Step,
    fault: Fault,
    fake: FakeInstagram,
    adapter: DivertingAdapter,
    context: FaultContext,
    stack: list[Any],
) -> None:
    """Make the stand-in (or the transport) fail `step` with `fault`."""
    path = fake.path(step.name)
    if fault.divert_to == "closed":
        adapter.diversions[path] = f"http://127.0.0.1:{free_port()}"
    elif fault.divert_to == "black_hole":
        hole = BlackHole()
        stack.append(hole)
        adapter.diversions[path] = hole.url
    else:
        assert fault.make is not None
        reply = fault.make(step, context)
        method = "POST" if step.name == "code_exchange" else "GET"
        fake.standin.route(method, path, reply)


def healthy_replies(fake: FakeInstagram) -> dict[str, Reply]:
    """Return one healthy reply per step, to build the padded and cut bodies from."""
    request = Request("GET", "/", {"code": ["c"], "limit": ["100"]}, {}, b"")
    return {
        "code_exchange": fake.exchange(request),
        "long_lived_exchange": fake.long_lived(request),
        "refresh": fake.refresh(request),
        "profile": fake.profile(request),
        "media": fake.media_page(request),
    }


def drive(step: Step, visitor: Visitor) -> None:
    """Make ownfeed call the broken step through its own routes."""
    if step.driver == "connect":
        response = visitor.connect(step.provider, "second-code")
        assert response.status_code == 303
    elif step.driver == "refresh":
        response = visitor.press_refresh(step.provider)
        assert response.status_code == 303
    else:
        response = visitor.get(FEED_ROUTES[step.provider])
        assert response.status_code == 200
    join_background()


# --- the table ------------------------------------------------------------------


@pytest.mark.parametrize(("step", "fault"), CASES)
def test_fault_handled(
    step: Step,
    fault: Fault,
    connected: Visitor,
    fake: FakeInstagram,
    adapter: DivertingAdapter,
    other_host: StandIn,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = connected.app
    saved_ids, _ = feed_ids(connected)
    if step.driver == "refresh":
        clock.advance(days=2)  # Instagram refreshes tokens from 24 hours on.
    if step.driver == "media":
        clock.advance(seconds=TTL + 1)
    token_bytes = tokens_path(app).read_bytes()
    token_before = stored_token(app)
    context = FaultContext(fake, other_host, healthy_replies(fake))
    holes: list[Any] = []
    break_step(step, fault, fake, adapter, context, holes)
    caplog.clear()

    try:
        run_bounded(lambda: drive(step, connected))
    finally:
        for hole in holes:
            hole.close()
    lines = actionable_lines(caplog)

    assert len(lines) == 1, lines
    assert fault.message.lower() in lines[0].lower()
    assert CLIENT_SECRET not in lines[0]
    if step.writes_token_file or (fault.rejects_token and step.driver == "media"):
        assert stored_token(app) == token_before
    else:
        assert tokens_path(app).read_bytes() == token_bytes
    ids, stale = feed_ids(connected)
    assert ids == saved_ids
    # Stale: the media fetch failed, or the refresh's clock is past the cache
    # time and the rejected token can fetch nothing.
    refresh_rejected = fault.rejects_token and step.driver == "refresh"
    assert stale is (step.driver == "media" or refresh_rejected)
    assert fault.message.lower() in connected.summary_text().lower()
    assert other_host.requests() == []


@pytest.mark.parametrize(
    "fault",
    [fault for fault in INSTAGRAM_FAULTS if fault.retry_after is not None],
    ids=lambda fault: fault.name,
)
def test_fault_rate_limit_backoff(
    fault: Fault,
    connected: Visitor,
    fake: FakeInstagram,
    adapter: DivertingAdapter,
    clock: Clock,
) -> None:
    step = INSTAGRAM_STEPS[-1]
    clock.advance(seconds=TTL + 1)
    context = FaultContext(fake, None, healthy_replies(fake))
    break_step(step, fault, fake, adapter, context, [])
    drive(step, connected)
    media_calls = len(fake.standin.requests(fake.path("media")))

    with connected.app.app_context():
        snapshot = images.instagram_feed().snapshot()
    clock.advance(seconds=fault.retry_after - 1)
    connected.get("/images")
    join_background()

    assert snapshot.retry_at == clock.moment + timedelta(seconds=1)
    assert len(fake.standin.requests(fake.path("media"))) == media_calls


# --- media pages that are odd but not wrong -------------------------------------

ODD_ITEMS = [
    {
        "id": 17_900_000_000_000_501,
        "media_type": "image",
        "caption": 5,
        "media_url": None,
        "permalink": "javascript:alert(1)",
        "timestamp": 12345,
    },
    {
        "id": "17900000000000502",
        "media_type": "CAROUSEL_ALBUM",
        "caption": None,
        "children": "not a list",
        "timestamp": "2026-11-30T10:00:00+0000",
    },
    {
        "id": "17900000000000503",
        "media_type": "VIDEO",
        "caption": ["a", "list"],
        "thumbnail_url": {"url": "https://cdn.example/x.jpg"},
        "children": {"data": [None, {"id": None}, {"id": "1", "media_type": 7}]},
        "timestamp": None,
    },
]


@pytest.mark.parametrize("path", ["/images", "/images?format=html", "/images/embed"])
def test_fault_odd_items_served(
    path: str, connected: Visitor, fake: FakeInstagram, clock: Clock
) -> None:
    fake.standin.route("GET", fake.path("media"), json_reply({"data": ODD_ITEMS}))
    clock.advance(seconds=TTL + 1)
    connected.get("/images")
    join_background()

    response = connected.get(path)
    text = response.get_data(as_text=True)

    assert response.status_code == 200
    assert "javascript:" not in text
    assert "17900000000000503" in text or path != "/images"


def test_fault_odd_items_strings_or_null(
    connected: Visitor, fake: FakeInstagram, clock: Clock
) -> None:
    fake.standin.route("GET", fake.path("media"), json_reply({"data": ODD_ITEMS}))
    clock.advance(seconds=TTL + 1)
    connected.get("/images")
    join_background()

    items = connected.get("/images").get_json()["data"]

    # Newest first; posts without a readable timestamp go last, by id.
    assert [item["id"] for item in items] == [
        "17900000000000502",
        "17900000000000503",
        "17900000000000501",
    ]
    for item in items:
        for key in ("caption", "permalink", "timestamp", "media_url"):
            assert item[key] is None or isinstance(item[key], str), (key, item)


def test_fault_unreadable_page_keeps_feed(
    connected: Visitor, fake: FakeInstagram, clock: Clock
) -> None:
    # Only `id` comes back when Instagram ignores `fields`: no post is usable.
    page = {"data": [{"id": str(17_900_000_000_000_900 + n)} for n in range(3)]}
    fake.standin.route("GET", fake.path("media"), json_reply(page))
    saved_ids, _ = feed_ids(connected)
    clock.advance(seconds=TTL + 1)
    connected.get("/images")
    join_background()

    ids, stale = feed_ids(connected)

    assert ids == saved_ids
    assert stale is True
    assert "none could be read" in connected.summary_text()


def test_fault_unreadable_page_one_log_line(
    connected: Visitor,
    fake: FakeInstagram,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = {"data": [{"id": str(17_900_000_000_000_900 + n)} for n in range(3)]}
    fake.standin.route("GET", fake.path("media"), json_reply(page))
    clock.advance(seconds=TTL + 1)
    caplog.clear()
    connected.get("/images")
    join_background()

    assert len(actionable_lines(caplog)) == 1
