"""Upstream faults at each step of the X timeline fetch, against a stand-in server.

ownfeed runs in real mode with app-only auth (X_BEARER_TOKEN and X_USERNAME) and
its X endpoints on a `StandIn` on 127.0.0.1. Each case saves the `/tweets` feed
while the stand-in works, moves the app clock past X_CACHE_SECONDS, breaks one
step (the user lookup or the timeline read) and requests `/tweets` again.

For every case:
- no response of ownfeed is a 5xx;
- the saved feed is still served, with "stale": true;
- tokens.json, which contains a stored Instagram token, is unchanged byte for
  byte;
- at least one WARNING or ERROR line from ownfeed's own loggers names the failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import TEST_PASSWORD
from standin import (
    FakeX,
    Reply,
    StandIn,
    free_port,
    html_reply,
    json_reply,
    redirect_reply,
    token_record,
)
from test_faults import (
    Clock,
    DivertingAdapter,
    Visitor,
    actionable_lines,
    join_background,
    run_bounded,
)

import services
import x

BEARER_TOKEN = "standin-x-bearer-never-sent-elsewhere"
TTL = 600
CONNECT_TIMEOUT = 0.5
READ_TIMEOUT = 0.5
RESPONSE_DEADLINE = 1.0
# Seconds past the app clock at which the stand-in's rate limit resets.
RESET_AHEAD = 3 * TTL
OUTAGE_PAGE = "<!DOCTYPE html><html><body><h1>Something went wrong.</h1>"


@dataclass(frozen=True)
class Step:
    """One upstream call of the X timeline fetch."""

    name: str
    # A 200 response whose JSON has the wrong shape for this call.
    wrong_shape: Any


X_STEPS = (
    Step("user_lookup", {"data": ["not", "a", "user"]}),
    Step("timeline", {"data": {"id": "1", "text": "not a list"}}),
)


@dataclass(frozen=True)
class Fault:
    """One way an X call goes wrong, and a fragment of the log line it causes.

    `make` builds the stand-in's Reply for a step from the fake and the app
    clock's Unix time; None means the call is diverted to a closed port instead.
    """

    name: str
    make: Callable[[Step, FakeX, float], Reply] | None
    message: str


def _trickle(step: Step, fake: FakeX, now: float) -> Reply:
    """Return a reply sent a byte per 0.05 s, each gap under the read timeout."""
    return Reply(body=b" " * 2000 + b"{}", trickle=0.05, chunk_size=1)


def _ten_megabytes(step: Step, fake: FakeX, now: float) -> Reply:
    return json_reply({"data": [], "padding": "x" * (10 * 1024 * 1024)})


def _rate_limited(step: Step, fake: FakeX, now: float) -> Reply:
    return json_reply(
        {
            "title": "Too Many Requests",
            "detail": "Too Many Requests",
            "type": "about:blank",
            "status": 429,
        },
        429,
        headers={
            "x-rate-limit-limit": "900",
            "x-rate-limit-remaining": "0",
            "x-rate-limit-reset": str(int(now) + RESET_AHEAD),
        },
    )


def _usage_capped(step: Step, fake: FakeX, now: float) -> Reply:
    return json_reply(
        {
            "title": "UsageCapExceeded",
            "detail": "Usage cap exceeded: Monthly product cap",
            "type": "https://api.x.com/2/problems/usage-capped",
            "period": "Monthly",
            "scope": "Product",
        },
        429,
        headers={"Content-Type": "application/problem+json"},
    )


def _unauthorized(step: Step, fake: FakeX, now: float) -> Reply:
    return json_reply(
        {
            "title": "Unauthorized",
            "type": "about:blank",
            "status": 401,
            "detail": "Unauthorized",
        },
        401,
        headers={"Content-Type": "application/problem+json"},
    )


X_FAULTS = (
    Fault("connection_refused", None, "connection to X failed"),
    Fault("read_timeout_trickle", _trickle, "timed out"),
    Fault(
        "http_500",
        lambda s, f, n: json_reply(
            {"title": "Internal Server Error", "type": "about:blank", "status": 500},
            500,
        ),
        "HTTP 500",
    ),
    Fault("http_502", lambda s, f, n: html_reply(OUTAGE_PAGE, 502), "HTTP 502"),
    Fault("http_503", lambda s, f, n: Reply(status=503), "HTTP 503"),
    Fault("html_page", lambda s, f, n: html_reply(OUTAGE_PAGE, 200), "not JSON"),
    Fault(
        "truncated_json",
        lambda s, f, n: Reply(body=b'{"data": [{"id": "1800', status=200),
        "not JSON",
    ),
    Fault("wrong_shape", lambda s, f, n: json_reply(s.wrong_shape), "lacks"),
    Fault("ten_megabytes", _ten_megabytes, "bytes: rejected"),
    Fault("rate_limit_reset", _rate_limited, "rate limit"),
    Fault("usage_capped", _usage_capped, "usage cap"),
    Fault("unauthorized", _unauthorized, "rejected the credentials"),
)
# The redirect case needs the other stand-in, so it is a test of its own.
REDIRECT_MESSAGE = "redirect"

CASES = [
    pytest.param(step, fault, id=f"x-{step.name}-{fault.name}")
    for step in X_STEPS
    for fault in X_FAULTS
]


# --- fixtures -------------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def other_port() -> Iterator[StandIn]:
    """A stand-in on another loopback port, which must get nothing."""
    with StandIn() as server:
        yield server


@pytest.fixture
def fake(standin: StandIn) -> FakeX:
    return FakeX(standin).install()


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> DivertingAdapter:
    """Give the X client short timeouts, a short deadline and a diverting adapter."""
    diverting = DivertingAdapter()

    def make_client(*args: Any, **kwargs: Any) -> x.XClient:
        session = requests.Session()
        session.mount("http://", diverting)
        return x.XClient(
            *args,
            session=session,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            **kwargs,
        )

    monkeypatch.setattr(services, "XClient", make_client)
    monkeypatch.setattr(x, "RESPONSE_DEADLINE_SECONDS", RESPONSE_DEADLINE)
    return diverting


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def saved(make_app, fake: FakeX, clock: Clock, adapter: DivertingAdapter) -> Visitor:
    """A visitor of ownfeed in real mode whose /tweets feed is saved."""
    app = make_app(
        OWNFEED_SANDBOX=False,
        # Real mode needs an Instagram app. Its endpoints point at the stand-in, but
        # these tests never make ownfeed call them.
        INSTAGRAM_CLIENT_ID="1234567890",
        INSTAGRAM_CLIENT_SECRET="standin-instagram-secret",
        INSTAGRAM_REDIRECT_URI="http://127.0.0.1/admin/callback/instagram",
        INSTAGRAM_AUTHORIZE_URL=f"{fake.standin.url}/oauth/authorize",
        INSTAGRAM_TOKEN_URL=f"{fake.standin.url}/oauth/access_token",
        INSTAGRAM_GRAPH_URL=f"{fake.standin.url}/graph",
        ADMIN_PASSWORD=TEST_PASSWORD,
        X_BEARER_TOKEN=BEARER_TOKEN,
        X_CACHE_SECONDS=TTL,
        CLOCK=clock,
        **fake.config(),
    )
    # A stored Instagram token, so that tokens.json exists and a stray write to
    # it shows up in the byte comparison.
    with app.app_context(), services.token_store().transaction() as providers:
        providers["instagram"] = token_record(
            "IGAA-standin-kept", clock.moment, clock.moment + timedelta(days=50)
        )
    visitor = Visitor(app)
    ids, stale = feed_ids(visitor)
    assert len(ids) == fake.post_count
    assert stale is False
    return visitor


def feed_ids(visitor: Visitor) -> tuple[list[str], bool]:
    body = visitor.get("/tweets?limit=100").get_json()
    return [item["id"] for item in body["data"]], body["stale"]


def token_file_bytes(app: Any) -> bytes:
    return (Path(app.instance_path) / "tokens.json").read_bytes()


def fetch_with_fault(visitor: Visitor) -> None:
    """Ask for /tweets past its cache time and wait for the background fetch."""
    response = visitor.get("/tweets")
    assert response.status_code == 200
    join_background()


def assert_kept(visitor: Visitor, saved_ids: list[str], token_bytes: bytes) -> None:
    ids, stale = feed_ids(visitor)
    assert ids == saved_ids
    assert stale is True
    assert token_file_bytes(visitor.app) == token_bytes


# --- the table ------------------------------------------------------------------


@pytest.mark.parametrize(("step", "fault"), CASES)
def test_x_fault_handled(
    step: Step,
    fault: Fault,
    saved: Visitor,
    fake: FakeX,
    adapter: DivertingAdapter,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved_ids, _ = feed_ids(saved)
    token_bytes = token_file_bytes(saved.app)
    clock.advance(seconds=TTL + 1)
    path = fake.path(step.name)
    if fault.make is None:
        adapter.diversions[path] = f"http://127.0.0.1:{free_port()}"
    else:
        reply = fault.make(step, fake, clock.moment.timestamp())
        fake.standin.route("GET", path, reply)
    caplog.clear()

    run_bounded(lambda: fetch_with_fault(saved))
    lines = actionable_lines(caplog)

    assert lines, "no WARNING or ERROR line"
    assert any(fault.message.lower() in line.lower() for line in lines), lines
    assert all(BEARER_TOKEN not in line for line in lines)
    assert_kept(saved, saved_ids, token_bytes)


@pytest.mark.parametrize("step", X_STEPS, ids=lambda step: step.name)
def test_x_fault_redirect_not_followed(
    step: Step,
    saved: Visitor,
    fake: FakeX,
    other_port: StandIn,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved_ids, _ = feed_ids(saved)
    token_bytes = token_file_bytes(saved.app)
    clock.advance(seconds=TTL + 1)
    path = fake.path(step.name)
    fake.standin.route("GET", path, redirect_reply(f"{other_port.url}{path}", 307))
    caplog.clear()

    run_bounded(lambda: fetch_with_fault(saved))
    lines = actionable_lines(caplog)

    assert any(REDIRECT_MESSAGE in line.lower() for line in lines), lines
    assert other_port.requests() == []
    assert_kept(saved, saved_ids, token_bytes)


@pytest.mark.parametrize("step", X_STEPS, ids=lambda step: step.name)
def test_x_fault_rate_limit_waits_for_reset(
    step: Step, saved: Visitor, fake: FakeX, clock: Clock
) -> None:
    clock.advance(seconds=TTL + 1)
    path = fake.path(step.name)
    fake.standin.route("GET", path, _rate_limited(step, fake, clock.moment.timestamp()))
    fetch_with_fault(saved)
    calls = len(fake.standin.requests())

    # Past the cache time again, but still before x-rate-limit-reset.
    clock.advance(seconds=TTL + 1)
    fetch_with_fault(saved)
    clock.advance(seconds=RESET_AHEAD - (TTL + 1) - 1)
    fetch_with_fault(saved)

    assert len(fake.standin.requests()) == calls

    # Past the reset, the next request for /tweets fetches again.
    fake.install()
    clock.advance(seconds=2)
    fetch_with_fault(saved)
    ids, stale = feed_ids(saved)

    assert len(fake.standin.requests()) > calls
    assert stale is False
    assert len(ids) == fake.post_count


def test_x_fault_stand_in_serves_json(fake: FakeX) -> None:
    """Check the stand-in itself: the healthy replies parse as X would send them."""
    lookup = json.loads(fake.user_lookup(None).body)  # type: ignore[arg-type]
    page = json.loads(fake.timeline(None).body)  # type: ignore[arg-type]

    assert lookup["data"]["username"]
    assert len(page["data"]) == fake.post_count
