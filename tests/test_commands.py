"""Tests for the `flask token ...` and `flask feed refresh` commands."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import requests_mock
from conftest import TEST_PASSWORD, free_port
from cryptography.fernet import Fernet
from test_oauth import CLIENT_SECRET, GRAPH_URL, Clock
from test_tokens import (
    LONG_LIVED_SECONDS,
    ME_URL,
    MEDIA_URL,
    NEW_TOKEN,
    OLD_TOKEN,
    POST,
    REFRESH_URL,
    REJECTION_REASONS,
    graph_error,
    refreshed_body,
    store_of,
    token_record,
)

import commands
import tokens
from timeutil import to_iso

# The message for a pasted token that Instagram rejects when it is imported.
IMPORT_REJECTED = "Instagram rejected the pasted token as invalid or expired"

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
IMPORTED_TOKEN = "IGAAimported-token-00112233445566"
PROFILE = {
    "user_id": "17841400000000001",
    "id": "2764087539",
    "username": "owner.handle",
    "account_type": "MEDIA_CREATOR",
}
SECOND_PAGE_URL = f"{GRAPH_URL}/v25.0/17841400000000001/media?after=QVFI"


@pytest.fixture
def clock():
    return Clock()


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


@pytest.fixture
def runner(real_app):
    return real_app.test_cli_runner()


@pytest.fixture
def graph():
    with requests_mock.Mocker() as mocker:
        yield mocker


def connect(app, clock, **changes: Any) -> dict[str, Any]:
    """Store a token 40 days old that expires in 50 days, with `changes`."""
    record = token_record(clock.moment, age=40 * DAY, expires_in=50 * DAY, **changes)
    store_of(app).set("instagram", record)
    return record


def calls_to(mocker: requests_mock.Mocker, path: str) -> int:
    return sum(1 for call in mocker.request_history if call.path.endswith(path))


# --- token status ------------------------------------------------------------


def test_status_ok_exit_zero(real_app, runner, clock):
    connect(real_app, clock, refreshed_at=to_iso(clock.moment - 2 * DAY))
    result = runner.invoke(args=["token", "status"])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "provider",
        "connected",
        "account",
        "expires",
        "in",
        "last",
        "refresh",
        "status",
    ]
    assert row.split() == [
        "instagram",
        "yes",
        "@owner.handle",
        "50",
        "days",
        "2026-11-29T12:00",
        "active",
    ]
    assert result.stderr == ""
    assert OLD_TOKEN not in result.output


ATTENTION = {
    "not_connected": ({}, "Instagram is not connected"),
    "reauthorization_required": (
        {
            "status": "reauthorization_required",
            "last_error": {
                "at": "x",
                "code": "190/460",
                "message": "Password changed.",
            },
        },
        "Password changed.",
    ),
    "expires_soon": ({"expires_in": 6 * DAY}, "expires in 6 days"),
    "expired": ({"expires_in": -HOUR}, "expired on 2026-12-01"),
    "refresh_failing": (
        {
            "refresh_failures": 2,
            "last_error": {"at": "x", "code": "2", "message": "HTTP 500 again."},
        },
        "HTTP 500 again.",
    ),
}


@pytest.mark.parametrize("state", sorted(ATTENTION))
def test_status_attention_exit_one(real_app, runner, clock, state):
    changes, message = ATTENTION[state]
    if state != "not_connected":
        changes = dict(changes)
        expires_in = changes.pop("expires_in", 50 * DAY)
        record = token_record(
            clock.moment, age=40 * DAY, expires_in=expires_in, **changes
        )
        store_of(real_app).set("instagram", record)

    result = runner.invoke(args=["token", "status"])

    assert result.exit_code == 1
    assert result.stdout.splitlines()[0].startswith("provider")
    assert result.stdout.splitlines()[1].startswith("instagram")
    assert "needs attention: instagram:" in result.stderr
    assert message in result.stderr


def test_status_outdated_feed_only_noted(real_app, runner, clock, graph):
    connect(real_app, clock)
    graph.get(MEDIA_URL, json={"data": [POST]})
    assert real_app.test_client().get("/images").status_code == 200
    clock.moment += 25 * HOUR
    result = runner.invoke(args=["token", "status"])
    assert result.exit_code == 0
    assert "note: instagram:" in result.stderr
    assert "has not been fetched successfully for 25 hours" in result.stderr


def test_status_unknown_expiry(real_app, runner, clock):
    connect(real_app, clock, expires_at=None)
    result = runner.invoke(args=["token", "status"])
    assert result.exit_code == 0
    assert "unknown" in result.stdout.splitlines()[1]


# --- token refresh -----------------------------------------------------------


def test_refresh_nothing_due_exit_zero(real_app, runner, clock, graph):
    connect(real_app, clock)
    result = runner.invoke(args=["token", "refresh"])
    assert result.exit_code == 0, result.output
    assert "instagram: not_due" in result.output
    assert graph.call_count == 0


def test_refresh_nothing_connected_exit_zero(runner, graph):
    result = runner.invoke(args=["token", "refresh"])
    assert result.exit_code == 0, result.output
    assert graph.call_count == 0


def test_refresh_named_provider_not_connected(runner, graph):
    result = runner.invoke(args=["token", "refresh", "--provider", "instagram"])
    assert result.exit_code == 1
    assert "instagram: not_connected: Instagram is not connected." in result.output


def test_refresh_due_exit_zero(real_app, runner, clock, graph):
    connect(real_app, clock, expires_at=to_iso(clock.moment + 20 * DAY))
    graph.get(REFRESH_URL, json=refreshed_body())
    result = runner.invoke(args=["token", "refresh"])
    assert result.exit_code == 0, result.output
    assert "instagram: refreshed" in result.output
    record = store_of(real_app).get("instagram")
    assert record["access_token"] == NEW_TOKEN
    assert record["refresh_attempts"][0]["trigger"] == "command"
    assert NEW_TOKEN not in result.output
    assert OLD_TOKEN not in result.output


@pytest.mark.parametrize(
    "response",
    [
        {"status_code": 500, "json": graph_error(2)},
        {"status_code": 400, "json": graph_error(4)},
        {"status_code": 400, "json": graph_error(190, 460)},
    ],
    ids=["http_500", "rate_limit", "rejected"],
)
def test_refresh_failure_exit_nonzero(real_app, runner, clock, graph, response):
    connect(real_app, clock, expires_at=to_iso(clock.moment + 20 * DAY))
    graph.get(REFRESH_URL, **response)
    result = runner.invoke(args=["token", "refresh"])
    assert result.exit_code != 0
    assert "instagram: " in result.output
    assert store_of(real_app).get("instagram")["access_token"] == OLD_TOKEN


def test_refresh_force_not_due(real_app, runner, clock, graph):
    connect(real_app, clock)
    graph.get(REFRESH_URL, json=refreshed_body())
    result = runner.invoke(args=["token", "refresh", "--force"])
    assert result.exit_code == 0, result.output
    assert store_of(real_app).get("instagram")["access_token"] == NEW_TOKEN


def test_refresh_force_too_young_refused(real_app, runner, clock, graph):
    connect(real_app, clock, refreshed_at=to_iso(clock.moment - 3 * HOUR))
    graph.get(REFRESH_URL, json=refreshed_body())
    result = runner.invoke(args=["token", "refresh", "--force"])
    assert result.exit_code != 0
    assert "less than 24 hours old" in result.output
    assert "from 2026-12-02 09:00 UTC" in result.output
    assert graph.call_count == 0


def test_refresh_too_young_without_force_exit_zero(real_app, runner, clock, graph):
    connect(
        real_app,
        clock,
        refreshed_at=to_iso(clock.moment - 3 * HOUR),
        expires_at=to_iso(clock.moment + 5 * DAY),
    )
    result = runner.invoke(args=["token", "refresh"])
    assert result.exit_code == 0, result.output
    assert graph.call_count == 0


# --- token import ------------------------------------------------------------


def import_token(runner, text: str = IMPORTED_TOKEN + "\n"):
    return runner.invoke(
        args=["token", "import", "--provider", "instagram"], input=text
    )


def test_import_fresh_token_expiry_unknown(real_app, runner, clock, graph):
    graph.get(ME_URL, json=PROFILE)
    graph.get(REFRESH_URL, status_code=400, json=graph_error(100))

    result = import_token(runner)

    assert result.exit_code == 0, result.output
    assert "expires unknown until the first refresh" in result.output
    record = store_of(real_app).get("instagram")
    assert record["access_token"] == IMPORTED_TOKEN
    assert record["expires_at"] is None
    assert record["obtained_at"] == to_iso(clock.moment)
    assert record["refreshed_at"] is None
    assert record["username"] == "owner.handle"
    assert record["user_id"] == "17841400000000001"
    assert record["status"] == "active"
    assert not tokens.is_due(record, clock.moment + 23 * HOUR, 30)
    assert tokens.is_due(record, clock.moment + 24 * HOUR, 30)
    assert IMPORTED_TOKEN not in result.output


def test_import_same_token_keeps_expiry(real_app, runner, clock, graph):
    before = connect(real_app, clock, access_token=IMPORTED_TOKEN)
    graph.get(ME_URL, json=PROFILE)
    graph.get(REFRESH_URL, status_code=400, json=graph_error(100))

    result = import_token(runner)
    record = store_of(real_app).get("instagram")

    assert result.exit_code == 0, result.output
    assert f"expires {before['expires_at']}" in result.output
    assert record["expires_at"] == before["expires_at"]
    assert record["obtained_at"] == before["obtained_at"]
    assert record["refreshed_at"] == before["refreshed_at"]


def test_import_sends_token_to_me(real_app, runner, graph):
    graph.get(ME_URL, json=PROFILE)
    graph.get(REFRESH_URL, status_code=400, json=graph_error(100))
    import_token(runner, f"  {IMPORTED_TOKEN}  \n")
    me_call = next(call for call in graph.request_history if call.path.endswith("/me"))
    assert parse_qs(urlsplit(me_call.url).query)["access_token"] == [IMPORTED_TOKEN]


def test_import_old_token_learns_expiry(real_app, runner, clock, graph):
    graph.get(ME_URL, json=PROFILE)
    graph.get(REFRESH_URL, json=refreshed_body())

    result = import_token(runner)

    assert result.exit_code == 0, result.output
    record = store_of(real_app).get("instagram")
    expected = to_iso(clock.moment + timedelta(seconds=LONG_LIVED_SECONDS))
    assert record["access_token"] == NEW_TOKEN
    assert record["expires_at"] == expected
    assert record["refreshed_at"] == to_iso(clock.moment)
    assert f"expires {expected}" in result.output
    assert not tokens.is_due(record, clock.moment + 24 * HOUR, 30)


@pytest.mark.parametrize("subcode", [subcode for subcode, _ in REJECTION_REASONS])
def test_import_rejected_at_me_stores_nothing(real_app, runner, graph, subcode):
    graph.get(ME_URL, status_code=400, json=graph_error(190, subcode))
    graph.get(REFRESH_URL, json=refreshed_body())

    result = import_token(runner)

    assert result.exit_code != 0
    assert IMPORT_REJECTED in result.output
    assert "nothing was stored" in result.output
    assert calls_to(graph, "refresh_access_token") == 0
    assert store_of(real_app).get("instagram") is None
    assert not Path(store_of(real_app).path).exists()


def test_import_rejected_at_refresh_stores_nothing(real_app, runner, graph):
    graph.get(ME_URL, json=PROFILE)
    graph.get(REFRESH_URL, status_code=400, json=graph_error(190, 463))
    result = import_token(runner)
    assert result.exit_code != 0
    assert IMPORT_REJECTED in result.output
    assert "(HTTP 400, code 190, subcode 463)" in result.output
    assert store_of(real_app).get("instagram") is None


def test_import_rejected_keeps_current_token(real_app, runner, clock, graph):
    before = connect(real_app, clock)
    graph.get(ME_URL, status_code=400, json=graph_error(190, 460))
    result = import_token(runner)
    assert result.exit_code != 0
    assert store_of(real_app).get("instagram") == before


def test_import_empty_input_rejected(real_app, runner, graph):
    result = import_token(runner, "\n")
    assert result.exit_code != 0
    assert "No token was given" in result.output
    assert "`flask token import --provider instagram < token.txt`" in result.output
    assert graph.call_count == 0


@pytest.mark.parametrize(
    ("response", "detail"),
    [
        ({"status_code": 400, "json": graph_error(190)}, "(HTTP 400, code 190)"),
        ({"status_code": 401, "json": graph_error(100)}, "(HTTP 401, code 100)"),
        ({"status_code": 400, "json": graph_error(100)}, "(HTTP 400, code 100)"),
    ],
    ids=["code_190", "http_401", "http_400"],
)
def test_import_rejected_token_message(real_app, runner, graph, response, detail):
    graph.get(ME_URL, **response)

    result = runner.invoke(
        args=["token", "import", "--provider", "instagram"], input="garbage-token\n"
    )

    assert result.exit_code == 1
    assert IMPORT_REJECTED in result.output
    assert detail in result.output
    assert "nothing was stored" in result.output
    assert "Generate a new token in the Meta App Dashboard" in result.output
    assert "/admin/generate" in result.output
    assert "access was removed" not in result.output
    assert "garbage-token" not in result.output
    assert store_of(real_app).get("instagram") is None


def test_import_rate_limit_not_invalid(real_app, runner, graph):
    graph.get(ME_URL, status_code=400, json=graph_error(4))
    result = import_token(runner)
    assert result.exit_code == 1
    assert "rate limit was reached" in result.output
    assert IMPORT_REJECTED not in result.output


def test_import_offers_only_importable_providers(runner):
    help_result = runner.invoke(args=["token", "import", "--help"])
    assert help_result.exit_code == 0
    assert "--provider [instagram]" in help_result.output

    x_result = runner.invoke(args=["token", "import", "--provider", "x"], input="t\n")
    assert x_result.exit_code == 2
    assert "'x' is not 'instagram'" in x_result.output


def test_import_replaces_rejected_token(real_app, runner, clock, graph):
    connect(real_app, clock, status="reauthorization_required")
    graph.get(ME_URL, json=PROFILE)
    graph.get(REFRESH_URL, json=refreshed_body())
    result = import_token(runner)
    assert result.exit_code == 0, result.output
    record = store_of(real_app).get("instagram")
    assert record["status"] == "active"
    assert record["access_token"] == NEW_TOKEN


# --- token encrypt and decrypt -----------------------------------------------


def test_decrypt_plain_file_does_nothing(real_app, runner, clock):
    connect(real_app, clock)
    path = Path(store_of(real_app).path)
    before = path.read_bytes()

    result = runner.invoke(args=["token", "decrypt"])

    assert result.exit_code == 0, result.output
    assert f"{path} is already plain JSON; nothing to do." in result.output
    assert "Decrypted" not in result.output
    assert "TOKEN_ENCRYPTION_KEY" not in result.output
    assert path.read_bytes() == before


def test_decrypt_encrypted_file_writes_plain(make_app, clock):
    key = Fernet.generate_key().decode()
    app = make_app(TOKEN_ENCRYPTION_KEY=key, CLOCK=clock)
    connect(app, clock)
    path = Path(store_of(app).path)
    assert "encrypted" in json.loads(path.read_text("utf-8"))

    result = app.test_cli_runner().invoke(args=["token", "decrypt"])

    assert result.exit_code == 0, result.output
    assert f"Decrypted {path}." in result.output
    assert "Remove TOKEN_ENCRYPTION_KEY" in result.output
    document = json.loads(path.read_text("utf-8"))
    assert document["providers"]["instagram"]["access_token"] == OLD_TOKEN


def test_encrypt_encrypted_file_does_nothing(make_app, clock):
    key = Fernet.generate_key().decode()
    app = make_app(TOKEN_ENCRYPTION_KEY=key, CLOCK=clock)
    connect(app, clock)
    path = Path(store_of(app).path)
    before = path.read_bytes()

    result = app.test_cli_runner().invoke(args=["token", "encrypt"])

    assert result.exit_code == 0, result.output
    assert f"{path} is already encrypted with TOKEN_ENCRYPTION_KEY" in result.output
    assert "nothing to do" in result.output
    assert "Encrypted" not in result.output
    # Fernet output differs on every call, so equal bytes mean no rewrite.
    assert path.read_bytes() == before


def test_encrypt_with_other_key_rejected(make_app, clock):
    app = make_app(TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode(), CLOCK=clock)
    connect(app, clock)
    path = Path(store_of(app).path)
    before = path.read_bytes()
    other = make_app(TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode(), CLOCK=clock)

    result = other.test_cli_runner().invoke(args=["token", "encrypt"])

    assert result.exit_code == 1
    assert "cannot be decrypted with TOKEN_ENCRYPTION_KEY" in result.output
    assert path.read_bytes() == before


def test_encrypt_decrypt_missing_file(runner, real_app):
    path = Path(store_of(real_app).path)
    for command in ("encrypt", "decrypt"):
        result = runner.invoke(args=["token", command])
        assert result.exit_code == 0, result.output
        assert f"There is no token file at {path}" in result.output
        assert f"nothing to {command}" in result.output
    assert not path.exists()


# --- feed refresh ------------------------------------------------------------


def test_feed_refresh_saves_posts(real_app, runner, clock, graph):
    connect(real_app, clock)
    second = dict(POST, id="17900000000000002", timestamp="2026-11-29T08:00:00+0000")
    graph.get(
        MEDIA_URL,
        json={"data": [POST], "paging": {"next": SECOND_PAGE_URL}},
    )
    graph.get(SECOND_PAGE_URL, json={"data": [second]})

    result = runner.invoke(args=["feed", "refresh"])

    assert result.exit_code == 0, result.output
    assert "Fetching posts" in result.output
    assert "Saved 2 instagram posts." in result.output
    saved = json.loads(
        (Path(real_app.instance_path) / "feed-instagram.json").read_text("utf-8")
    )
    assert [post["id"] for post in saved["posts"]] == [POST["id"], second["id"]]
    assert saved["fetched_at"] == to_iso(clock.moment)
    assert calls_to(graph, "/media") == 2


def test_feed_refresh_failure_exit_one(real_app, runner, clock, graph):
    connect(real_app, clock)
    graph.get(MEDIA_URL, status_code=500, json=graph_error(2))
    result = runner.invoke(args=["feed", "refresh"])
    assert result.exit_code == 1
    assert "Fetching the instagram feed failed" in result.output
    assert "HTTP 500" in result.output


def test_feed_refresh_rejected_token_exit_one(real_app, runner, clock, graph):
    connect(real_app, clock)
    graph.get(MEDIA_URL, status_code=400, json=graph_error(190, 460))
    result = runner.invoke(args=["feed", "refresh"])
    assert result.exit_code == 1
    assert "password was changed" in result.output
    record = store_of(real_app).get("instagram")
    assert record["status"] == "reauthorization_required"


def test_feed_refresh_not_connected_exit_one(runner, graph):
    result = runner.invoke(args=["feed", "refresh"])
    assert result.exit_code == 1
    assert "No Instagram account is connected" in result.output
    assert graph.call_count == 0


# --- sandbox server not running ----------------------------------------------


@pytest.fixture
def stopped_sandbox_app(make_app, clock):
    """A sandbox app whose ownfeed server is not running: nothing listens there."""
    app = make_app(
        OWNFEED_SANDBOX_URL=f"http://127.0.0.1:{free_port()}",
        ADMIN_PASSWORD=TEST_PASSWORD,
        CLOCK=clock,
    )
    connect(app, clock)
    return app


@pytest.mark.parametrize(
    "args",
    [["feed", "refresh"], ["token", "refresh", "--force"]],
    ids=["feed_refresh", "token_refresh"],
)
def test_sandbox_server_down_says_start_it(stopped_sandbox_app, args):
    url = stopped_sandbox_app.config["OWNFEED_SANDBOX_URL"]
    folder = Path(stopped_sandbox_app.instance_path)
    before = {path.name: path.read_bytes() for path in folder.glob("*.json")}

    result = stopped_sandbox_app.test_cli_runner().invoke(args=args)
    after = {path.name: path.read_bytes() for path in folder.glob("*.json")}

    assert result.exit_code == 1
    assert f"No ownfeed server is running at {url}" in result.output
    port = url.rpartition(":")[2]
    assert f"start it with `make run PORT={port}`" in result.output
    assert "run this command again" in result.output
    assert "network access" not in result.output
    assert OLD_TOKEN not in result.output
    assert after == before


def test_real_connection_failure_keeps_message(real_app, runner, clock, graph):
    connect(real_app, clock)
    graph.get(MEDIA_URL, exc=requests.exceptions.ConnectionError)

    result = runner.invoke(args=["feed", "refresh"])

    assert result.exit_code == 1
    assert "The connection to Instagram failed" in result.output
    assert "Check the server's network access" in result.output
    assert "make run" not in result.output


@pytest.mark.parametrize(
    ("days", "text"),
    [(None, "unknown"), (0, "less than a day"), (1, "1 day"), (12, "12 days")],
)
def test_status_days_worded_as_admin_page(days, text):
    assert commands._days_text(days) == text
