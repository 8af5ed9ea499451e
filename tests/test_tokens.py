"""Tests for tokens.py: refresh policy, refreshing, rejected tokens and the webhook."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import requests_mock
from conftest import ROOT, TEST_PASSWORD
from test_oauth import (
    AUTHORIZE_URL,
    CLIENT_SECRET,
    GRAPH_URL,
    REDIRECT_URI,
    TOKEN_URL,
    Clock,
    log_in,
    mock_instagram,
    start_authorization,
)

import notify
import tokens
from timeutil import to_iso, utc_now

REFRESH_URL = f"{GRAPH_URL}/refresh_access_token"
ME_URL = f"{GRAPH_URL}/v25.0/me"
MEDIA_URL = f"{GRAPH_URL}/v25.0/me/media"
OLD_TOKEN = "IGAAold-token-0123456789abcdef"
NEW_TOKEN = "IGAAnew-token-fedcba9876543210"
WEBHOOK_SECRET = "webhook-signing-key"
LONG_LIVED_SECONDS = 5183944
# Owner's words for each Graph error_subcode of code 190.
REJECTION_REASONS = [
    (460, "password was changed"),
    (463, "access token expired"),
    (458, "access was removed"),
    (None, "access was removed"),
]
POST = {
    "id": "17900000000000001",
    "media_type": "IMAGE",
    "caption": "Morning light",
    "media_url": "https://cdn.instagram.test/1.jpg",
    "permalink": "https://www.instagram.com/p/AAA/",
    "timestamp": "2026-11-30T08:00:00+0000",
}


# --- helpers -----------------------------------------------------------------


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1 that records each POST.

    It responds with the statuses queued in `statuses`, then with 200.
    """

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver.lock:
                    receiver.posts.append((headers, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/ownfeed"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), daemon=True
        )
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def graph_error(code: int, subcode: int | None = None) -> dict[str, Any]:
    """Build a Graph API error body as Instagram sends it."""
    messages = {
        190: "Error validating access token: The session has been invalidated",
        2: "An unexpected error has occurred. Please retry your request later.",
        4: "Application request limit reached",
        100: "Unsupported request",
    }
    error: dict[str, Any] = {
        "message": messages.get(code, "error"),
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AbCdEfGhIjKlMnOpQrStUvW",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def refreshed_body(token: str = NEW_TOKEN) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": LONG_LIVED_SECONDS,
    }


def token_record(
    moment: datetime,
    *,
    age: timedelta = timedelta(days=40),
    expires_in: timedelta | None = timedelta(days=20),
    **changes: Any,
) -> dict[str, Any]:
    """Build a stored Instagram record obtained `age` before `moment`."""
    record = {
        "access_token": OLD_TOKEN,
        "token_type": "bearer",
        "expires_at": to_iso(moment + expires_in) if expires_in is not None else None,
        "obtained_at": to_iso(moment - age),
        "refreshed_at": None,
        "user_id": "17841400000000001",
        "app_user_id": "2764087539",
        "username": "owner.handle",
        "account_type": "MEDIA_CREATOR",
        "permissions": ["instagram_business_basic"],
        "status": "active",
        "last_error": None,
        "refresh_failures": 0,
    }
    record.update(changes)
    return record


def store_of(app):
    return app.extensions["ownfeed"].token_store


def refresh(app, trigger: str = "command", force: bool = False):
    with app.app_context():
        result = tokens.refresh_token("instagram", trigger, force=force)
    notify.wait_for_deliveries(10)
    return result


def refresh_calls(mocker: requests_mock.Mocker) -> list:
    return [
        call
        for call in mocker.request_history
        if call.path.endswith("refresh_access_token")
    ]


def wait_for_background_refresh() -> None:
    """Wait until the background refresh thread, if any, has finished."""
    assert tokens._background_lock.acquire(timeout=10), "background refresh hung"
    tokens._background_lock.release()
    notify.wait_for_deliveries(10)


def error_records(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


# --- fixtures ----------------------------------------------------------------


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    notify.wait_for_deliveries(10)
    server.close()


@pytest.fixture
def graph() -> Iterator[requests_mock.Mocker]:
    """Mock the Instagram endpoints, and send other URLs (the webhook) over HTTP."""
    with requests_mock.Mocker(real_http=True) as mocker:
        # Registered first, so it matches only URLs that no test registers. An
        # unexpected Instagram call then fails clearly and never leaves the machine.
        mocker.register_uri(
            requests_mock.ANY,
            re.compile(r"^https://[^/]*instagram\.test/"),
            status_code=599,
            text="unexpected Instagram call in a test",
        )
        yield mocker
        notify.wait_for_deliveries(10)


@pytest.fixture
def make_real_app(make_app, clock, receiver):
    """Return a factory of apps for a real Instagram app, with the webhook set."""

    def factory(**overrides: Any):
        config = {
            "OWNFEED_SANDBOX": False,
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": CLIENT_SECRET,
            "INSTAGRAM_REDIRECT_URI": REDIRECT_URI,
            "INSTAGRAM_AUTHORIZE_URL": AUTHORIZE_URL,
            "INSTAGRAM_TOKEN_URL": TOKEN_URL,
            "INSTAGRAM_GRAPH_URL": GRAPH_URL,
            "ADMIN_PASSWORD": TEST_PASSWORD,
            "NOTIFY_WEBHOOK_URL": receiver.url,
            "NOTIFY_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "NOTIFY_RETRY_DELAYS": (0.05, 0.05, 0.05),
            "CLOCK": clock,
        }
        config.update(overrides)
        return make_app(**config)

    return factory


@pytest.fixture
def real_app(make_real_app):
    return make_real_app()


# --- refresh policy ----------------------------------------------------------

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_is_due_old_and_expiring():
    record = token_record(T0, age=timedelta(days=40), expires_in=timedelta(days=20))
    assert tokens.is_due(record, T0, 30)


def test_is_due_expires_later():
    record = token_record(T0, age=timedelta(days=40), expires_in=timedelta(days=31))
    assert not tokens.is_due(record, T0, 30)


def test_is_due_at_refresh_before_days_boundary():
    record = token_record(T0, expires_in=timedelta(days=30))
    assert tokens.is_due(record, T0, 30)
    assert not tokens.is_due(record, T0, 29)


@pytest.mark.parametrize(
    ("age", "due"),
    [(timedelta(hours=23, minutes=59), False), (timedelta(hours=24), True)],
)
def test_is_due_young_by_obtained_at(age, due):
    record = token_record(T0, age=age, expires_in=timedelta(days=5))
    assert tokens.is_due(record, T0, 30) is due


def test_is_due_young_by_refreshed_at():
    record = token_record(
        T0,
        age=timedelta(days=50),
        expires_in=timedelta(days=5),
        refreshed_at=to_iso(T0 - timedelta(hours=2)),
    )
    assert not tokens.is_due(record, T0, 30)
    assert tokens.is_due(record, T0 + timedelta(hours=22), 30)


@pytest.mark.parametrize(
    ("age", "due"), [(timedelta(hours=23), False), (timedelta(hours=24), True)]
)
def test_is_due_unknown_expiry(age, due):
    record = token_record(T0, age=age, expires_in=None)
    assert tokens.is_due(record, T0, 30) is due


def test_is_due_reauthorization_required_never():
    record = token_record(T0, status="reauthorization_required")
    assert not tokens.is_due(record, T0, 30)


@pytest.mark.parametrize(
    ("failures", "minutes"),
    [(0, 10), (1, 10), (2, 20), (3, 40), (4, 80), (6, 320), (7, 360), (50, 360)],
)
def test_background_wait_backoff(failures, minutes):
    record = token_record(T0, refresh_failures=failures)
    assert tokens.background_wait(record) == timedelta(minutes=minutes)


def test_refresh_reauthorization_no_call(real_app, graph, clock):
    record = token_record(clock.moment, status="reauthorization_required")
    store_of(real_app).set("instagram", record)
    graph.get(REFRESH_URL, json=refreshed_body())
    result = refresh(real_app, force=True)
    assert result.outcome == "reauthorization_required"
    assert result.failed
    assert refresh_calls(graph) == []
    assert store_of(real_app).get("instagram")["access_token"] == OLD_TOKEN


def test_refresh_not_due_no_call(make_real_app, graph, clock):
    app = make_real_app(REFRESH_BEFORE_DAYS=10)
    store_of(app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, json=refreshed_body())
    result = refresh(app)
    assert result.outcome == "not_due"
    assert not result.failed
    assert refresh_calls(graph) == []


def test_refresh_too_young_even_forced(real_app, graph, clock):
    record = token_record(clock.moment, age=timedelta(hours=3))
    store_of(real_app).set("instagram", record)
    graph.get(REFRESH_URL, json=refreshed_body())
    result = refresh(real_app, force=True)
    assert result.outcome == "too_young"
    assert "2026-12-02 09:00 UTC" in result.message
    assert refresh_calls(graph) == []


# --- a successful refresh ----------------------------------------------------


def test_refresh_success_stores_new_token(real_app, graph, clock, receiver):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, json=refreshed_body())

    result = refresh(real_app)

    assert result.outcome == "refreshed"
    record = store_of(real_app).get("instagram")
    assert record["access_token"] == NEW_TOKEN
    expected_expiry = clock.moment + timedelta(seconds=LONG_LIVED_SECONDS)
    assert record["expires_at"] == to_iso(expected_expiry)
    assert record["refreshed_at"] == to_iso(clock.moment)
    assert record["obtained_at"] == to_iso(clock.moment - timedelta(days=40))
    assert record["status"] == "active"
    assert record["refresh_failures"] == 0
    assert record["last_error"] is None
    attempt = record["refresh_attempts"][0]
    assert attempt["at"] == to_iso(clock.moment)
    assert attempt["trigger"] == "command"
    assert attempt["outcome"] == "refreshed"
    assert receiver.events() == []


def test_refresh_sends_old_token(real_app, graph, clock):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, json=refreshed_body())
    refresh(real_app)
    query = parse_qs(urlsplit(refresh_calls(graph)[0].url).query)
    assert query["grant_type"] == ["ig_refresh_token"]
    assert query["access_token"] == [OLD_TOKEN]


def test_refresh_history_keeps_ten(real_app, graph, clock):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, json=refreshed_body())
    for _ in range(12):
        clock.moment += timedelta(hours=25)
        assert refresh(real_app, "admin", force=True).outcome == "refreshed"
    attempts = store_of(real_app).get("instagram")["refresh_attempts"]
    assert len(attempts) == 10
    assert attempts[0]["at"] == to_iso(clock.moment)
    assert attempts[-1]["at"] == to_iso(clock.moment - timedelta(hours=25 * 9))


def test_refresh_success_resets_failures(real_app, graph, clock, receiver):
    last_error = {"at": to_iso(clock.moment), "code": "2", "message": "HTTP 500"}
    record = token_record(clock.moment, refresh_failures=3, last_error=last_error)
    store_of(real_app).set("instagram", record)
    graph.get(REFRESH_URL, json=refreshed_body())
    refresh(real_app)
    record = store_of(real_app).get("instagram")
    assert record["refresh_failures"] == 0
    assert record["last_error"] is None
    assert [event["event"] for event in receiver.events()] == ["recovered"]


# --- a failed refresh --------------------------------------------------------

FAILURES = {
    "http_500": ({"status_code": 500, "json": graph_error(2)}, "2"),
    "html_502": ({"status_code": 502, "text": "<html>Bad gateway</html>"}, None),
    "timeout": ({"exc": requests.exceptions.ConnectTimeout}, None),
    "rate_limit": ({"status_code": 400, "json": graph_error(4)}, "4"),
    "http_429": ({"status_code": 429, "text": "Too many requests"}, None),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_refresh_failure_keeps_token(real_app, graph, clock, caplog, failure):
    response, code = FAILURES[failure]
    before = token_record(clock.moment)
    store_of(real_app).set("instagram", before)
    graph.get(REFRESH_URL, **response)

    with caplog.at_level(logging.INFO):
        result = refresh(real_app)

    assert result.outcome == "failed"
    assert result.failed
    after = store_of(real_app).get("instagram")
    assert after["access_token"] == OLD_TOKEN
    assert after["expires_at"] == before["expires_at"]
    assert after["status"] == "active"
    assert after["refresh_failures"] == 1
    assert after["last_error"]["at"] == to_iso(clock.moment)
    assert after["last_error"]["message"] == result.message
    if code is not None:
        assert after["last_error"]["code"] == code
    assert after["refresh_attempts"][0]["outcome"] == "failed"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "Refreshing the instagram token failed" in r.getMessage() for r in warnings
    )
    assert OLD_TOKEN not in caplog.text


def test_refresh_failure_file_keeps_token_bytes(real_app, graph, clock):
    store_of(real_app).set("instagram", token_record(clock.moment))
    path = store_of(real_app).path
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    refresh(real_app)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["providers"]["instagram"]["access_token"] == OLD_TOKEN
    assert f'"access_token": "{OLD_TOKEN}"' in path.read_text(encoding="utf-8")


def test_refresh_failures_counted(real_app, graph, clock):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    refresh(real_app)
    refresh(real_app)
    assert store_of(real_app).get("instagram")["refresh_failures"] == 2


def test_refresh_background_backoff(real_app, graph, clock):
    start = clock.moment
    store_of(real_app).set("instagram", token_record(start))
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))

    assert refresh(real_app, "background").outcome == "failed"
    clock.moment = start + timedelta(minutes=9, seconds=59)
    assert refresh(real_app, "background").outcome == "skipped"
    clock.moment = start + timedelta(minutes=10)
    assert refresh(real_app, "background").outcome == "failed"
    second = clock.moment
    clock.moment = second + timedelta(minutes=19, seconds=59)
    assert refresh(real_app, "background").outcome == "skipped"
    clock.moment = second + timedelta(minutes=20)
    assert refresh(real_app, "background").outcome == "failed"
    assert len(refresh_calls(graph)) == 3


def test_refresh_command_ignores_backoff(real_app, graph, clock):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    refresh(real_app, "background")
    clock.moment += timedelta(minutes=1)
    assert refresh(real_app, "command").outcome == "failed"
    assert len(refresh_calls(graph)) == 2


def test_refresh_failing_sent_once_then_recovered(real_app, graph, clock, receiver):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    refresh(real_app)
    clock.moment += timedelta(hours=1)
    refresh(real_app)
    assert [event["event"] for event in receiver.events()] == ["refresh_failing"]

    graph.get(REFRESH_URL, json=refreshed_body())
    clock.moment += timedelta(hours=1)
    refresh(real_app)
    events = receiver.events()
    assert [event["event"] for event in events] == ["refresh_failing", "recovered"]
    assert "HTTP 500" in events[0]["reason"]
    assert events[1]["at"] == to_iso(clock.moment)


# --- rejected tokens (code 190) ----------------------------------------------


def check_rejection(app, receiver, caplog, reason: str) -> None:
    """Assert the state, the log and the one webhook of a rejected token."""
    record = store_of(app).get("instagram")
    assert record["status"] == "reauthorization_required"
    assert reason in record["last_error"]["message"]
    assert record["last_error"]["code"].startswith("190")
    assert record["access_token"] == OLD_TOKEN

    errors = error_records(caplog)
    assert len(errors) == 1
    assert reason in errors[0].getMessage()

    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    assert hmac.compare_digest(headers["x-ownfeed-signature"], signed(body))
    assert headers["content-type"] == "application/json"
    event = json.loads(body)
    assert set(event) == {"event", "provider", "reason", "at"}
    assert event["event"] == "reauthorization_required"
    assert event["provider"] == "instagram"
    assert reason in event["reason"]
    assert "/admin/generate" in event["reason"]
    assert OLD_TOKEN not in body.decode()


@pytest.mark.parametrize(("subcode", "reason"), REJECTION_REASONS)
def test_refresh_rejected_needs_reauthorization(
    real_app, graph, clock, receiver, caplog, subcode, reason
):
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=400, json=graph_error(190, subcode))

    result = refresh(real_app)
    clock.moment += timedelta(hours=1)
    again = refresh(real_app, force=True)

    assert result.outcome == "reauthorization_required"
    assert reason in result.message
    assert again.outcome == "reauthorization_required"
    assert len(refresh_calls(graph)) == 1
    check_rejection(real_app, receiver, caplog, reason)
    event = receiver.events()[0]
    assert event["at"] == to_iso(clock.moment - timedelta(hours=1))


@pytest.mark.parametrize(("subcode", "reason"), REJECTION_REASONS)
def test_images_rejected_needs_reauthorization(
    real_app, graph, clock, receiver, caplog, subcode, reason
):
    record = token_record(
        clock.moment, age=timedelta(days=2), expires_in=timedelta(days=58)
    )
    store_of(real_app).set("instagram", record)
    graph.get(MEDIA_URL, status_code=400, json=graph_error(190, subcode))
    client = real_app.test_client()

    responses = [client.get("/images") for _ in range(4)]
    notify.wait_for_deliveries(10)

    assert [response.status_code for response in responses] == [503] * 4
    for response in responses:
        assert response.get_json()["error"]["code"] == "reauthorization_required"
    media_calls = [
        call for call in graph.request_history if call.path.endswith("/me/media")
    ]
    assert len(media_calls) == 1
    check_rejection(real_app, receiver, caplog, reason)


def test_rejection_concurrent_one_webhook(real_app, graph, clock, receiver):
    """Concurrent rejections change the state and send the webhook only once."""
    from instagram import TokenInvalidError

    store_of(real_app).set("instagram", token_record(clock.moment))
    error = TokenInvalidError("rejected", code=190, subcode=460)

    def reject() -> None:
        with real_app.app_context():
            tokens.record_token_rejected("instagram", error)

    threads = [threading.Thread(target=reject) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    notify.wait_for_deliveries(10)
    assert len(receiver.posts) == 1


def test_rejection_of_replaced_token_ignored(real_app, clock, receiver, caplog):
    from instagram import TokenInvalidError

    record = token_record(clock.moment, access_token=NEW_TOKEN)
    store_of(real_app).set("instagram", record)
    error = TokenInvalidError("rejected", code=190, subcode=460)
    with real_app.app_context():
        tokens.record_token_rejected("instagram", error, access_token=OLD_TOKEN)
    notify.wait_for_deliveries(10)
    assert store_of(real_app).get("instagram") == record
    assert error_records(caplog) == []
    assert receiver.posts == []


def test_rejection_of_current_token_recorded(real_app, clock, receiver):
    from instagram import TokenInvalidError

    store_of(real_app).set("instagram", token_record(clock.moment))
    error = TokenInvalidError("rejected", code=190, subcode=463)
    with real_app.app_context():
        tokens.record_token_rejected("instagram", error, access_token=OLD_TOKEN)
    notify.wait_for_deliveries(10)
    record = store_of(real_app).get("instagram")
    assert record["status"] == "reauthorization_required"
    assert record["last_error"]["code"] == "190/463"
    assert len(receiver.posts) == 1


def test_images_stale_during_reauthorization(make_real_app, graph, clock):
    app = make_real_app(FEED_CACHE_SECONDS=60)
    record = token_record(
        clock.moment, age=timedelta(days=2), expires_in=timedelta(days=58)
    )
    store_of(app).set("instagram", record)
    graph.get(MEDIA_URL, json={"data": [POST]})
    client = app.test_client()
    first = client.get("/images").get_json()
    assert first["stale"] is False

    graph.get(MEDIA_URL, status_code=400, json=graph_error(190, 460))
    clock.moment += timedelta(seconds=61)
    during = client.get("/images")
    with app.app_context():
        from images import instagram_feed

        instagram_feed().wait_for_background()
    assert store_of(app).get("instagram")["status"] == "reauthorization_required"

    later = [client.get("/images") for _ in range(3)]
    assert during.status_code == 200
    for response in later:
        body = response.get_json()
        assert response.status_code == 200
        assert body["stale"] is True
        assert [post["id"] for post in body["data"]] == [POST["id"]]
    media_calls = [
        call for call in graph.request_history if call.path.endswith("/me/media")
    ]
    assert len(media_calls) == 2


# --- the webhook -------------------------------------------------------------


def test_webhook_unsigned_without_secret(make_real_app, graph, clock, receiver):
    app = make_real_app(NOTIFY_WEBHOOK_SECRET=None)
    store_of(app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    refresh(app)
    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    assert "x-ownfeed-signature" not in headers
    assert json.loads(body)["event"] == "refresh_failing"


def test_webhook_retried_until_accepted(real_app, graph, clock, receiver, caplog):
    receiver.statuses = [500, 500]
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=400, json=graph_error(190, 463))
    refresh(real_app)

    assert len(receiver.posts) == 3
    bodies = {body for _, body in receiver.posts}
    assert len(bodies) == 1
    headers, body = receiver.posts[2]
    assert headers["x-ownfeed-signature"] == signed(body)
    assert json.loads(body)["event"] == "reauthorization_required"
    failed = [r for r in caplog.records if "failed on attempt" in r.getMessage()]
    assert len(failed) == 2


def test_webhook_gives_up_after_retries(real_app, graph, clock, receiver, caplog):
    receiver.statuses = [500] * 10
    store_of(real_app).set("instagram", token_record(clock.moment))
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    refresh(real_app)
    assert len(receiver.posts) == 4
    assert any("was not delivered" in r.getMessage() for r in error_records(caplog))


def test_reconnect_sends_recovered(real_app, graph, clock, receiver):
    last_error = {"at": to_iso(clock.moment), "code": "190/460", "message": "gone"}
    record = token_record(
        clock.moment, status="reauthorization_required", last_error=last_error
    )
    store_of(real_app).set("instagram", record)
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    mock_instagram(graph)

    response = client.get(f"/admin/callback/instagram?code=C&state={state}")
    notify.wait_for_deliveries(10)

    assert response.status_code == 303
    stored = store_of(real_app).get("instagram")
    assert stored["status"] == "active"
    assert stored["access_token"] == "LONG-TOKEN"
    assert stored["last_error"] is None
    events = receiver.events()
    assert [event["event"] for event in events] == ["recovered"]
    assert events[0]["provider"] == "instagram"


def test_first_connection_sends_nothing(real_app, graph, receiver):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    mock_instagram(graph)
    client.get(f"/admin/callback/instagram?code=C&state={state}")
    notify.wait_for_deliveries(10)
    assert receiver.posts == []


# --- the background trigger --------------------------------------------------


def test_images_starts_one_background_refresh(real_app, graph, clock):
    start = clock.moment
    store_of(real_app).set("instagram", token_record(start))
    graph.get(MEDIA_URL, json={"data": [POST]})
    graph.get(REFRESH_URL, status_code=500, json=graph_error(2))
    client = real_app.test_client()

    assert client.get("/images").status_code == 200
    wait_for_background_refresh()
    assert len(refresh_calls(graph)) == 1
    attempt = store_of(real_app).get("instagram")["refresh_attempts"][0]
    assert attempt["trigger"] == "background"

    clock.moment = start + timedelta(minutes=9)
    assert client.get("/images").status_code == 200
    wait_for_background_refresh()
    assert len(refresh_calls(graph)) == 1

    clock.moment = start + timedelta(minutes=10)
    client.get("/images")
    wait_for_background_refresh()
    assert len(refresh_calls(graph)) == 2


def test_images_refresh_running_not_repeated(real_app, graph, clock):
    # requests_mock sends one request at a time, so the feed is fetched first,
    # while the token is not due, and stays fresh during the blocked refresh.
    client = real_app.test_client()
    not_due = token_record(clock.moment, expires_in=timedelta(days=50))
    store_of(real_app).set("instagram", not_due)
    graph.get(MEDIA_URL, json={"data": [POST]})
    assert client.get("/images").status_code == 200
    store_of(real_app).set("instagram", token_record(clock.moment))
    started = threading.Event()
    release = threading.Event()

    def slow_refresh(request, context):
        started.set()
        release.wait(10)
        return refreshed_body()

    graph.get(REFRESH_URL, json=slow_refresh)
    # Requests look for due tokens at most every 30 seconds.
    clock.moment += tokens.BACKGROUND_CHECK + timedelta(seconds=1)
    client.get("/images")
    assert started.wait(10)
    for _ in range(3):
        assert client.get("/images").status_code == 200
    running = [t for t in threading.enumerate() if t.name == "refresh-instagram"]
    release.set()
    assert len(running) == 1
    wait_for_background_refresh()

    assert len(refresh_calls(graph)) == 1
    assert store_of(real_app).get("instagram")["access_token"] == NEW_TOKEN
    client.get("/images")
    wait_for_background_refresh()
    assert len(refresh_calls(graph)) == 1


def test_images_young_token_not_refreshed(real_app, graph, clock):
    record = token_record(clock.moment, age=timedelta(hours=2), expires_in=None)
    store_of(real_app).set("instagram", record)
    graph.get(MEDIA_URL, json={"data": [POST]})
    graph.get(REFRESH_URL, json=refreshed_body())
    real_app.test_client().get("/images")
    wait_for_background_refresh()
    assert refresh_calls(graph) == []


# --- two processes -----------------------------------------------------------

RACE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    sys.path.insert(0, sys.argv[1])
    from app import create_app
    import tokens

    config, name = json.loads(sys.argv[2]), sys.argv[3]
    folder = Path(config["INSTANCE_PATH"])
    app = create_app(config)
    # Both processes call refresh_token at the same moment.
    (folder / f"ready-{name}").touch()
    deadline = time.monotonic() + 20
    while len(list(folder.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    with app.app_context():
        result = tokens.refresh_token("instagram", "command")
    print(json.dumps({"outcome": result.outcome}))
    """
)


class StandInGraph:
    """A Graph API stand-in on 127.0.0.1 whose refresh takes half a second."""

    def __init__(self) -> None:
        self.sent_tokens: list[str] = []
        self.lock = threading.Lock()
        graph = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                parts = urlsplit(self.path)
                if parts.path != "/refresh_access_token":
                    self.send_error(404)
                    return
                with graph.lock:
                    graph.sent_tokens.append(parse_qs(parts.query)["access_token"][0])
                    number = len(graph.sent_tokens)
                time.sleep(0.5)
                body = json.dumps(refreshed_body(f"IGAArace-token-{number}")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.02,), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_refresh_two_processes_one_call(make_app, tmp_path):
    graph = StandInGraph()
    instance = tmp_path / "instance"
    try:
        app = make_app(
            OWNFEED_SANDBOX=False,
            INSTAGRAM_CLIENT_ID="1234567890",
            INSTAGRAM_CLIENT_SECRET=CLIENT_SECRET,
            ADMIN_PASSWORD=TEST_PASSWORD,
        )
        store_of(app).set("instagram", token_record(utc_now()))
        config = {
            "TESTING": True,
            "INSTANCE_PATH": str(instance),
            "SECRET_KEY": "test-session-key",
            "OWNFEED_SANDBOX": False,
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": CLIENT_SECRET,
            "INSTAGRAM_GRAPH_URL": graph.url,
            "ADMIN_PASSWORD": TEST_PASSWORD,
        }
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RACE_SCRIPT,
                    str(ROOT),
                    json.dumps(config),
                    name,
                ],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        ]
        outputs = [process.communicate(timeout=60) for process in processes]
    finally:
        graph.close()

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    outcomes = sorted(json.loads(stdout)["outcome"] for stdout, _ in outputs)
    assert outcomes == ["refreshed", "too_young"]
    assert graph.sent_tokens == [OLD_TOKEN]
    document = json.loads((instance / "tokens.json").read_text(encoding="utf-8"))
    record = document["providers"]["instagram"]
    assert record["access_token"] == "IGAArace-token-1"
    assert record["refresh_failures"] == 0
    assert len(record["refresh_attempts"]) == 1
