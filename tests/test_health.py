"""Tests for health.py: `/healthz`, and the admin banners with their one action."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests_mock
from conftest import TEST_PASSWORD
from test_oauth import CLIENT_SECRET, GRAPH_URL, Clock, csrf_token, log_in
from test_tokens import (
    MEDIA_URL,
    NEW_TOKEN,
    OLD_TOKEN,
    POST,
    REFRESH_URL,
    graph_error,
    refreshed_body,
    store_of,
    token_record,
)

from timeutil import to_iso
from token_store import TokenStore

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
REPORT_FIELDS = {
    "connected",
    "status",
    "expires_at",
    "days_left",
    "last_refresh",
    "last_error_code",
    "feed_age_seconds",
}
# Each problem's banner button: the form's action and the button's text.
ACTIONS = {
    "connect": ("/admin/generate/instagram", "Connect Instagram<"),
    "generate": ("/admin/generate/instagram", "Connect Instagram again"),
    "refresh": ("/admin/refresh/instagram", "Refresh the token now"),
    "fetch": ("/admin/feed/instagram/refresh", "Fetch the feed now"),
}


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def graph():
    with requests_mock.Mocker() as mocker:
        mocker.get(MEDIA_URL, json={"data": [POST]})
        yield mocker


@pytest.fixture
def real_app(make_app, clock):
    return make_app(
        OWNFEED_SANDBOX=False,
        INSTAGRAM_CLIENT_ID="1234567890",
        INSTAGRAM_CLIENT_SECRET=CLIENT_SECRET,
        INSTAGRAM_GRAPH_URL=GRAPH_URL,
        ADMIN_PASSWORD=TEST_PASSWORD,
        CLOCK=clock,
    )


def connect(app, clock, **changes: Any) -> dict[str, Any]:
    """Store a working token, 2 days old and valid for 50 more, with `changes`."""
    record = token_record(clock.moment, age=2 * DAY, expires_in=50 * DAY, **changes)
    store_of(app).set("instagram", record)
    return record


def fetch_feed(app) -> None:
    """Fetch and save the feed now, through `/images`."""
    assert app.test_client().get("/images").status_code == 200


def healthz(app) -> tuple[int, dict[str, Any], str]:
    response = app.test_client().get("/healthz")
    return response.status_code, response.get_json(), response.get_data(as_text=True)


# Set-ups that make the service degraded, each with its problem code and the
# action of its banner.


def set_up_reauthorization_required(app, clock, graph) -> None:
    last_error = {"at": to_iso(clock.moment), "code": "190/460", "message": "Gone."}
    connect(app, clock, status="reauthorization_required", last_error=last_error)


def set_up_expires_soon(app, clock, graph) -> None:
    connect(app, clock, expires_at=to_iso(clock.moment + 7 * DAY - HOUR))


def set_up_expired(app, clock, graph) -> None:
    connect(app, clock, expires_at=to_iso(clock.moment - HOUR))


def set_up_refresh_failing(app, clock, graph) -> None:
    last_error = {"at": to_iso(clock.moment), "code": "2", "message": "HTTP 500."}
    connect(app, clock, refresh_failures=1, last_error=last_error)


def set_up_feed_outdated(app, clock, graph) -> None:
    connect(app, clock)
    fetch_feed(app)
    clock.moment += 24 * HOUR + timedelta(seconds=1)


def set_up_not_connected(app, clock, graph) -> None:
    pass


DEGRADED = [
    (set_up_not_connected, "not_connected", "connect"),
    (set_up_reauthorization_required, "reauthorization_required", "generate"),
    (set_up_expires_soon, "expires_soon", "refresh"),
    (set_up_expired, "expired", "generate"),
    (set_up_refresh_failing, "refresh_failing", "refresh"),
    (set_up_feed_outdated, "feed_outdated", "fetch"),
]
DEGRADED_IDS = [code for _, code, _ in DEGRADED]


# --- /healthz ----------------------------------------------------------------


def test_healthz_ok(real_app, clock, graph):
    record = connect(real_app, clock, refreshed_at=to_iso(clock.moment - DAY))
    fetch_feed(real_app)
    clock.moment += timedelta(minutes=10)

    status, body, text = healthz(real_app)

    assert status == 200
    assert body["status"] == "ok"
    report = body["providers"]["instagram"]
    assert REPORT_FIELDS <= set(report)
    assert report["connected"] is True
    assert report["status"] == "active"
    assert report["expires_at"] == record["expires_at"]
    assert report["days_left"] == 49
    assert report["last_refresh"] == record["refreshed_at"]
    assert report["last_error_code"] is None
    assert report["feed_age_seconds"] == 600
    assert report["problems"] == []
    assert OLD_TOKEN not in text
    assert CLIENT_SECRET not in text


def test_healthz_ok_before_first_fetch(real_app, clock):
    connect(real_app, clock)
    status, body, _ = healthz(real_app)
    assert status == 200
    assert body["providers"]["instagram"]["feed_age_seconds"] is None


def test_healthz_not_cached(real_app, clock):
    connect(real_app, clock)
    response = real_app.test_client().get("/healthz")
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_expires_in_seven_days_ok(real_app, clock):
    connect(real_app, clock, expires_at=to_iso(clock.moment + 7 * DAY + HOUR))
    status, body, _ = healthz(real_app)
    assert status == 200
    assert body["providers"]["instagram"]["days_left"] == 7


def test_healthz_feed_24_hours_old_ok(real_app, clock, graph):
    connect(real_app, clock)
    fetch_feed(real_app)
    clock.moment += 24 * HOUR
    status, body, _ = healthz(real_app)
    assert status == 200
    assert body["providers"]["instagram"]["feed_age_seconds"] == 24 * 3600


@pytest.mark.parametrize(("set_up", "code", "action"), DEGRADED, ids=DEGRADED_IDS)
def test_healthz_degraded(real_app, clock, graph, set_up, code, action):
    set_up(real_app, clock, graph)

    status, body, text = healthz(real_app)

    assert status == 503
    assert body["status"] == "degraded"
    assert body["providers"]["instagram"]["problems"] == [code]
    assert OLD_TOKEN not in text


def test_healthz_not_connected_report(real_app):
    _, body, _ = healthz(real_app)
    report = body["providers"]["instagram"]
    assert report["connected"] is False
    assert report["status"] is None
    assert report["expires_at"] is None
    assert report["days_left"] is None
    assert report["last_refresh"] is None


def test_healthz_reauthorization_report(real_app, clock, graph):
    set_up_reauthorization_required(real_app, clock, graph)
    report = healthz(real_app)[1]["providers"]["instagram"]
    assert report["connected"] is True
    assert report["status"] == "reauthorization_required"
    assert report["last_error_code"] == "190/460"


def test_healthz_expires_soon_report(real_app, clock, graph):
    set_up_expires_soon(real_app, clock, graph)
    report = healthz(real_app)[1]["providers"]["instagram"]
    assert report["days_left"] == 6
    assert report["expires_at"] == to_iso(clock.moment + 7 * DAY - HOUR)


def test_healthz_refresh_failing_report(real_app, clock, graph):
    set_up_refresh_failing(real_app, clock, graph)
    report = healthz(real_app)[1]["providers"]["instagram"]
    assert report["status"] == "active"
    assert report["last_error_code"] == "2"


def test_healthz_feed_outdated_report(real_app, clock, graph):
    set_up_feed_outdated(real_app, clock, graph)
    report = healthz(real_app)[1]["providers"]["instagram"]
    assert report["feed_age_seconds"] == 24 * 3600 + 1


def test_healthz_after_real_refresh_failure(real_app, clock):
    connect(real_app, clock, expires_at=to_iso(clock.moment + 20 * DAY))
    with requests_mock.Mocker() as mocker:
        mocker.get(REFRESH_URL, status_code=500, json=graph_error(2))
        with real_app.app_context():
            import tokens

            tokens.refresh_token("instagram", "command")
    status, body, _ = healthz(real_app)
    report = body["providers"]["instagram"]
    assert status == 503
    assert report["problems"] == ["refresh_failing"]
    assert report["last_error_code"] == "2"


# --- admin banners -----------------------------------------------------------


def banners(page: str) -> dict[str, str]:
    """Return each banner's HTML, keyed by its problem code."""
    pattern = (
        r'<div class="banner danger" role="alert" data-problem="([a-z_]+)">(.*?)</div>'
    )
    return dict(re.findall(pattern, page, re.DOTALL))


def admin_page(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/admin/generate", "/admin/summary"])
@pytest.mark.parametrize(("set_up", "code", "action"), DEGRADED, ids=DEGRADED_IDS)
def test_banner_shows_one_action(real_app, clock, graph, path, set_up, code, action):
    set_up(real_app, clock, graph)
    client = real_app.test_client()
    log_in(client)

    found = banners(admin_page(client, path))

    assert list(found) == [code]
    form_action, button = ACTIONS[action]
    assert re.findall(r'action="([^"]+)"', found[code]) == [form_action]
    assert button in found[code]
    assert found[code].count("<button") == 1


@pytest.mark.parametrize("path", ["/admin/generate", "/admin/summary"])
def test_banner_none_when_ok(real_app, clock, graph, path):
    connect(real_app, clock)
    fetch_feed(real_app)
    client = real_app.test_client()
    log_in(client)
    assert banners(admin_page(client, path)) == {}


def test_banner_reauthorization_gives_reason(real_app, clock, graph):
    reason = "Instagram ended the connection because its access token expired."
    last_error = {"at": to_iso(clock.moment), "code": "190/463", "message": reason}
    connect(real_app, clock, status="reauthorization_required", last_error=last_error)
    client = real_app.test_client()
    log_in(client)
    banner = banners(admin_page(client, "/admin/generate"))["reauthorization_required"]
    assert reason in banner


def test_banner_not_on_public_pages(real_app, clock, graph):
    set_up_reauthorization_required(real_app, clock, graph)
    client = real_app.test_client()
    log_in(client)
    page = client.get("/images?format=html").get_data(as_text=True)
    assert "data-problem" not in page


def test_banner_refresh_button_fixes_failure(real_app, clock):
    set_up_refresh_failing(real_app, clock, None)
    client = real_app.test_client()
    log_in(client)
    token = csrf_token(client, "/admin/summary")
    with requests_mock.Mocker() as mocker:
        mocker.get(REFRESH_URL, json=refreshed_body())
        response = client.post("/admin/refresh/instagram", data={"csrf_token": token})
    assert response.status_code == 303
    assert store_of(real_app).get("instagram")["access_token"] == NEW_TOKEN
    assert banners(admin_page(client, "/admin/summary")) == {}


def test_banner_fetch_button_fetches_feed(real_app, clock, graph):
    set_up_feed_outdated(real_app, clock, graph)
    client = real_app.test_client()
    log_in(client)
    token = csrf_token(client, "/admin/summary")
    client.post("/admin/feed/instagram/refresh", data={"csrf_token": token})
    assert banners(admin_page(client, "/admin/summary")) == {}


def test_summary_lists_refresh_attempts(real_app, clock):
    connect(real_app, clock, expires_at=to_iso(clock.moment + 20 * DAY))
    client = real_app.test_client()
    log_in(client)
    token = csrf_token(client, "/admin/summary")
    with requests_mock.Mocker() as mocker:
        mocker.get(REFRESH_URL, status_code=500, json=graph_error(2))
        client.post("/admin/refresh/instagram", data={"csrf_token": token})
        clock.moment += HOUR
        mocker.get(REFRESH_URL, json=refreshed_body())
        client.post("/admin/refresh/instagram", data={"csrf_token": token})

    page = admin_page(client, "/admin/summary")
    table = re.search(
        r'<table class="attempts" id="refresh-attempts-instagram">(.*?)</table>',
        page,
        re.DOTALL,
    )
    assert table, "the summary has no table of refresh attempts"
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td>", table.group(1))
    assert rows == [
        (to_iso(clock.moment), "admin", "refreshed"),
        (to_iso(clock.moment - HOUR), "admin", "failed"),
    ]
    assert "HTTP 500" in table.group(1)
    assert OLD_TOKEN not in page
    assert NEW_TOKEN not in page


def test_healthz_corrupt_token_file_503(make_app):
    app = make_app()
    store_path = Path(app.instance_path) / "tokens.json"
    store_path.write_text("{truncated")
    client = app.test_client()
    first = client.get("/healthz")
    assert first.status_code == 503
    assert str(store_path.parent) not in first.get_data(as_text=True)
    page = client.get("/admin/generate").get_data(as_text=True)
    assert "tokens.json.corrupt-" in page
    assert "could not be read" in page


# --- an unreadable token file ---------------------------------------------


def encrypt_token_file(app, clock) -> Path:
    """Connect, fetch the feed, then encrypt tokens.json with a key `app` lacks."""
    from cryptography.fernet import Fernet

    connect(app, clock)
    fetch_feed(app)
    path = Path(app.instance_path) / "tokens.json"
    TokenStore(path, Fernet.generate_key().decode()).rewrite(encrypted=True)
    return path


def test_encrypted_file_admin_page_names_key(real_app, clock, graph):
    encrypt_token_file(real_app, clock)
    client = real_app.test_client()
    log_in(client)

    response = client.get("/admin/summary")
    page = response.get_data(as_text=True)

    assert response.status_code == 503
    assert "TOKEN_ENCRYPTION_KEY" in page


def test_encrypted_file_feed_still_served(real_app, clock, graph, monkeypatch):
    encrypt_token_file(real_app, clock)
    # Public requests look at the file at once, not after up to a second.
    monkeypatch.setattr(TokenStore, "PEEK_RECHECK_SECONDS", 0.0)
    client = real_app.test_client()

    response = client.get("/images")
    embed = client.get("/images/embed")

    assert response.status_code == 200
    assert len(response.get_json()["data"]) == 1
    assert embed.status_code == 200


def test_unreadable_file_html_empty_grid(real_app, clock, graph):
    connect(real_app, clock)
    (Path(real_app.instance_path) / "tokens.json").write_text("not json")

    response = real_app.test_client().get("/images?format=html")
    page = response.get_data(as_text=True)

    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert "settings" not in page
    assert "{" not in page


def test_encrypted_file_healthz_degraded(real_app, clock, graph):
    encrypt_token_file(real_app, clock)

    status, body, text = healthz(real_app)

    assert status == 503
    assert body["status"] == "degraded"
    assert body["providers"]["instagram"]["problems"] == ["token_file_unreadable"]
    assert "TOKEN_ENCRYPTION_KEY" not in text


def test_encrypted_file_commands_one_line(real_app, clock, graph):
    encrypt_token_file(real_app, clock)
    runner = real_app.test_cli_runner()

    results = [
        runner.invoke(args=["token", "status"]),
        runner.invoke(args=["feed", "refresh"]),
    ]

    for result in results:
        assert result.exit_code == 1
        assert "TOKEN_ENCRYPTION_KEY" in result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_encrypted_file_refresh_logs_read(real_app, clock, graph, caplog):
    encrypt_token_file(real_app, clock)

    result = real_app.test_cli_runner().invoke(args=["token", "refresh", "--force"])

    assert result.exit_code == 1
    assert "TOKEN_ENCRYPTION_KEY" in result.output
    assert "Cannot read the token file to refresh instagram" in caplog.text
    assert "Cannot save" not in caplog.text


@pytest.mark.parametrize("path", ["/images", "/healthz"])
def test_corrupt_file_first_request_served(real_app, clock, graph, path, monkeypatch):
    connect(real_app, clock)
    fetch_feed(real_app)
    monkeypatch.setattr(TokenStore, "PEEK_RECHECK_SECONDS", 0.0)
    (Path(real_app.instance_path) / "tokens.json").write_text("not json")

    response = real_app.test_client().get(path)
    body = response.get_json()

    if path == "/images":
        assert response.status_code == 200
        assert len(body["data"]) == 1
    else:
        assert response.status_code == 503
        assert body["status"] == "degraded"
        assert body["providers"]["instagram"]["problems"] == ["token_file_unreadable"]
