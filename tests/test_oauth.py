"""Route tests for the admin login and the authorization-code flow."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import click
import pytest
import requests_mock
from conftest import TEST_PASSWORD

TOKEN_URL = "https://api.instagram.test/oauth/access_token"
GRAPH_URL = "https://graph.instagram.test"
AUTHORIZE_URL = "https://www.instagram.test/oauth/authorize"
CLIENT_SECRET = "app-secret-never-shown"
REDIRECT_URI = "https://owner.example/admin/callback/instagram"


class Clock:
    """A settable clock for the app, starting at a fixed moment."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def real_app(make_app, clock):
    """An app configured for a real Instagram app at test endpoints."""
    return make_app(
        OWNFEED_SANDBOX=False,
        INSTAGRAM_CLIENT_ID="1234567890",
        INSTAGRAM_CLIENT_SECRET=CLIENT_SECRET,
        INSTAGRAM_REDIRECT_URI=REDIRECT_URI,
        INSTAGRAM_AUTHORIZE_URL=AUTHORIZE_URL,
        INSTAGRAM_TOKEN_URL=TOKEN_URL,
        INSTAGRAM_GRAPH_URL=GRAPH_URL,
        ADMIN_PASSWORD=TEST_PASSWORD,
        CLOCK=clock,
    )


def csrf_token(client, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def log_in(client, password: str = TEST_PASSWORD):
    token = csrf_token(client, "/admin/login")
    return client.post("/admin/login", data={"password": password, "csrf_token": token})


def start_authorization(client) -> dict[str, list[str]]:
    """Press Generate and return the authorize URL's query."""
    token = csrf_token(client, "/admin/generate")
    response = client.post("/admin/generate/instagram", data={"csrf_token": token})
    assert response.status_code == 303
    return parse_qs(urlsplit(response.headers["Location"]).query)


def mock_instagram(mocker: requests_mock.Mocker) -> None:
    mocker.post(
        TOKEN_URL,
        json={"access_token": "SHORT-TOKEN", "user_id": 2764087539, "permissions": []},
    )
    mocker.get(
        f"{GRAPH_URL}/access_token",
        json={
            "access_token": "LONG-TOKEN",
            "token_type": "bearer",
            "expires_in": 5183944,
        },
    )
    mocker.get(f"{GRAPH_URL}/v25.0/me/media", json={"data": []})
    mocker.get(
        f"{GRAPH_URL}/v25.0/me",
        json={
            "user_id": "17841400000000001",
            "id": "2764087539",
            "username": "owner.handle",
            "account_type": "MEDIA_CREATOR",
        },
    )


def summary_text(client) -> str:
    return client.get("/admin/summary").get_data(as_text=True)


# --- login ----------------------------------------------------------------


def test_login_anonymous_redirected(client):
    response = client.get("/admin/generate")
    assert response.status_code == 302
    assert "/admin/login" in response.headers["Location"]


def test_login_anonymous_post_rejected(client):
    response = client.post("/admin/generate/instagram")
    assert response.status_code in (400, 403)


def test_login_right_password(client):
    response = log_in(client)
    assert response.status_code == 303
    assert client.get("/admin/generate").status_code == 200


def test_login_wrong_password(client):
    response = log_in(client, "wrong")
    assert response.status_code == 401
    assert "incorrect" in response.get_data(as_text=True)
    assert client.get("/admin/generate").status_code == 302


def test_login_password_hash(make_app):
    from werkzeug.security import generate_password_hash

    app = make_app(ADMIN_PASSWORD_HASH=generate_password_hash("hashed secret"))
    client = app.test_client()
    assert log_in(client, "wrong").status_code == 401
    assert log_in(client, "hashed secret").status_code == 303


def test_login_without_csrf_rejected(client):
    client.get("/admin/login")
    response = client.post("/admin/login", data={"password": TEST_PASSWORD})
    assert response.status_code == 400
    assert "security token" in response.get_data(as_text=True)


def test_login_renews_session(client):
    client.get("/admin/login")
    with client.session_transaction() as session:
        session["session_id"] = "planted-by-attacker"
    log_in(client)
    with client.session_transaction() as session:
        assert session["session_id"] != "planted-by-attacker"
        assert session["admin"] is True


def test_login_throttled_after_five_failures(app, clock):
    app.extensions["ownfeed"].clock = clock
    client = app.test_client()
    for _ in range(5):
        assert log_in(client, "wrong").status_code == 401
    response = log_in(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "60"
    assert "Try again in 60 seconds" in response.get_data(as_text=True)


def test_login_throttle_per_address(app, clock):
    app.extensions["ownfeed"].clock = clock
    client = app.test_client()
    for _ in range(5):
        log_in(client, "wrong")
    other = app.test_client()
    token = csrf_token(other, "/admin/login")
    response = other.post(
        "/admin/login",
        data={"password": TEST_PASSWORD, "csrf_token": token},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert response.status_code == 303


def test_login_throttle_expires(app, clock):
    app.extensions["ownfeed"].clock = clock
    client = app.test_client()
    for _ in range(5):
        log_in(client, "wrong")
    clock.moment += timedelta(seconds=61)
    assert log_in(client).status_code == 303


def test_login_open_in_sandbox_without_password(make_app):
    client = make_app().test_client()
    page = client.get("/admin/generate")
    assert page.status_code == 200
    assert "open to anyone" in page.get_data(as_text=True)


def test_login_next_not_open_redirect(client):
    token = csrf_token(client, "/admin/login")
    response = client.post(
        "/admin/login",
        data={
            "password": TEST_PASSWORD,
            "csrf_token": token,
            "next": "//evil.example/",
        },
    )
    assert response.headers["Location"] == "/admin/generate"


def test_logout_ends_session(client):
    log_in(client)
    token = csrf_token(client, "/admin/generate")
    client.post("/admin/logout", data={"csrf_token": token})
    assert client.get("/admin/generate").status_code == 302


# --- start-up checks ------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("SECRET_KEY", "SECRET_KEY is not set"),
        ("ADMIN_PASSWORD", "ADMIN_PASSWORD is not set"),
        ("INSTAGRAM_CLIENT_SECRET", "INSTAGRAM_CLIENT_SECRET is not set"),
    ],
)
def test_startup_real_mode_requires(make_app, missing, message):
    from settings import ConfigError

    config = {
        "OWNFEED_SANDBOX": None,
        "INSTAGRAM_CLIENT_ID": "1234567890",
        "INSTAGRAM_CLIENT_SECRET": CLIENT_SECRET,
        "ADMIN_PASSWORD": TEST_PASSWORD,
        "SECRET_KEY": "key",
    }
    config[missing] = None
    with pytest.raises(ConfigError, match=message):
        make_app(**config)


def test_startup_both_passwords_rejected(make_app):
    from settings import ConfigError

    with pytest.raises(ConfigError, match="Set only one"):
        make_app(ADMIN_PASSWORD="a", ADMIN_PASSWORD_HASH="b")


@pytest.mark.parametrize(
    "value",
    [
        "plaintext",
        "md5$salt$0123abcd",
        "pbkdf2:sha256:600000",
        "pbkdf2:sha256:600000$salt$",
        "pbkdf2:no-such-digest:1000$salt$0123abcd",
        "scrypt:3:8:1$salt$0123abcd",
    ],
)
def test_startup_invalid_password_hash_rejected(make_app, value):
    from settings import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_app(ADMIN_PASSWORD_HASH=value)
    message = str(caught.value)
    assert message.startswith("ADMIN_PASSWORD_HASH is not a Werkzeug password hash")
    assert "from werkzeug.security import generate_password_hash" in message
    assert value not in message


def test_startup_pbkdf2_password_hash_accepted(make_app):
    from werkzeug.security import generate_password_hash

    value = generate_password_hash("hashed secret", method="pbkdf2:sha256:1000")
    client = make_app(ADMIN_PASSWORD_HASH=value).test_client()
    assert log_in(client, "hashed secret").status_code == 303


def test_startup_http_endpoint_rejected(make_app):
    from settings import ConfigError

    with pytest.raises(ConfigError, match="INSTAGRAM_GRAPH_URL"):
        make_app(INSTAGRAM_GRAPH_URL="http://graph.example.com")


# --- authorization flow ---------------------------------------------------


def test_generate_redirects_with_state(real_app):
    client = real_app.test_client()
    log_in(client)
    query = start_authorization(client)
    assert query["client_id"] == ["1234567890"]
    assert query["redirect_uri"] == [REDIRECT_URI]
    assert query["response_type"] == ["code"]
    assert query["scope"] == ["instagram_business_basic"]
    assert len(query["state"][0]) >= 32


def test_generate_states_differ(real_app):
    client = real_app.test_client()
    log_in(client)
    assert start_authorization(client)["state"] != start_authorization(client)["state"]


def test_callback_connects_and_stores(real_app, clock):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    with requests_mock.Mocker() as mocker:
        mock_instagram(mocker)
        response = client.get(
            f"/admin/callback/instagram?code=THE-CODE%23_&state={state}"
        )
        exchange = mocker.request_history[0]
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/summary")
    form = parse_qs(exchange.text)
    assert form["code"] == ["THE-CODE"]
    assert form["redirect_uri"] == [REDIRECT_URI]
    assert form["grant_type"] == ["authorization_code"]

    record = real_app.extensions["ownfeed"].token_store.get("instagram")
    assert record["access_token"] == "LONG-TOKEN"
    assert record["user_id"] == "17841400000000001"
    assert record["account_type"] == "MEDIA_CREATOR"
    assert record["expires_at"] == "2027-01-30T11:59:04+00:00"
    page = summary_text(client)
    assert "Connected @owner.handle" in page
    assert "60 days left" in page or "59 days left" in page
    assert "LONG-TOKEN" not in page


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("code=C", "no state parameter"),
        ("code=C&state=forged", "does not match"),
    ],
)
def test_callback_bad_state_rejected(real_app, query, reason):
    client = real_app.test_client()
    log_in(client)
    start_authorization(client)
    with requests_mock.Mocker() as mocker:
        client.get(f"/admin/callback/instagram?{query}")
        assert mocker.call_count == 0
    assert reason in summary_text(client)


def test_callback_expired_state_rejected(real_app, clock):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    clock.moment += timedelta(minutes=11)
    with requests_mock.Mocker() as mocker:
        client.get(f"/admin/callback/instagram?code=C&state={state}")
        assert mocker.call_count == 0
    assert "expired" in summary_text(client)


def test_callback_state_from_other_session_rejected(real_app):
    owner = real_app.test_client()
    log_in(owner)
    state = start_authorization(owner)["state"][0]
    intruder = real_app.test_client()
    log_in(intruder)
    with requests_mock.Mocker() as mocker:
        intruder.get(f"/admin/callback/instagram?code=C&state={state}")
        assert mocker.call_count == 0
    assert "another browser session" in summary_text(intruder)


def test_callback_replay_rejected(real_app):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    with requests_mock.Mocker() as mocker:
        mock_instagram(mocker)
        client.get(f"/admin/callback/instagram?code=C&state={state}")
        client.get(f"/admin/callback/instagram?code=C&state={state}")
        exchanges = [call for call in mocker.request_history if call.method == "POST"]
        assert len(exchanges) == 1
    assert "already completed" in summary_text(client)


def test_callback_denied_shows_reason(real_app):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    with requests_mock.Mocker() as mocker:
        client.get(
            "/admin/callback/instagram?error=access_denied&error_reason=user_denied"
            f"&error_description=The+user+denied+your+request.&state={state}"
        )
        assert mocker.call_count == 0
    page = summary_text(client)
    assert "did not grant access: The user denied your request." in page
    assert "press Generate again and allow access on Instagram" in page
    assert real_app.extensions["ownfeed"].token_store.get("instagram") is None


def start_x_authorization(client) -> str:
    """Press Generate X token (the X sandbox in sandbox mode) and return the state."""
    token = csrf_token(client, "/admin/generate")
    response = client.post("/admin/generate/x", data={"csrf_token": token})
    assert response.status_code == 303
    return parse_qs(urlsplit(response.headers["Location"]).query)["state"][0]


def oauth_records(caplog, text: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "oauth" and text in record.getMessage()
    ]


def test_x_sandbox_deny_shows_next_step(app, caplog):
    caplog.set_level(logging.INFO)
    client = app.test_client()
    log_in(client)
    token = csrf_token(client, "/admin/generate")
    started = client.post("/admin/generate/x", data={"csrf_token": token})
    authorize = urlsplit(started.headers["Location"])
    consent = client.get(f"{authorize.path}?{authorize.query}")
    form = {name: values[0] for name, values in parse_qs(authorize.query).items()}
    form["csrf_token"] = re.search(
        r'name="csrf_token" value="([^"]+)"', consent.get_data(as_text=True)
    ).group(1)
    form["decision"] = "deny"
    denied = client.post(authorize.path, data=form)
    back = urlsplit(denied.headers["Location"])
    assert back.path == "/admin/callback/x"

    assert client.get(f"{back.path}?{back.query}").status_code == 303

    page = summary_text(client)
    assert "Access to the X account was not granted (access_denied)." in page
    assert "press Generate X token again and allow access" in page
    assert "did not grant access" not in page
    assert app.extensions["ownfeed"].token_store.get("x") is None
    logged = oauth_records(caplog, "access_denied")
    assert len(logged) == 1
    assert logged[0].levelno == logging.INFO


@pytest.mark.parametrize(
    ("error", "words"),
    [
        ("invalid_request", "X_REDIRECT_URI is a callback URI registered"),
        ("unauthorized_client", "turn on OAuth 2.0 for a Web App"),
        ("unsupported_response_type", "Remove X_AUTHORIZE_URL"),
        ("invalid_scope", "like.read offline.access (invalid_scope)"),
        ("server_error", "Wait a few minutes"),
        ("temporarily_unavailable", "Wait a few minutes"),
    ],
)
def test_x_authorize_error_codes_explained(app, caplog, error, words):
    client = app.test_client()
    log_in(client)
    state = start_x_authorization(client)

    client.get(f"/admin/callback/x?error={error}&state={state}")

    page = summary_text(client)
    assert f"({error})" in page
    assert words in page
    assert "press Generate X token again" in page
    assert oauth_records(caplog, error)[0].levelno == logging.WARNING


def test_x_authorize_error_description_kept(app):
    client = app.test_client()
    log_in(client)
    state = start_x_authorization(client)

    client.get(
        "/admin/callback/x?error=invalid_request"
        f"&error_description=Missing+code_challenge&state={state}"
    )

    page = summary_text(client)
    assert "(invalid_request)" in page
    assert "X&#39;s description: Missing code_challenge" in page


def test_x_authorize_unknown_error_escaped(app):
    client = app.test_client()
    log_in(client)
    state = start_x_authorization(client)

    client.get(f"/admin/callback/x?error=%3Cb%3Eodd%3C%2Fb%3E&state={state}")

    page = summary_text(client)
    assert "X did not grant access (&lt;b&gt;odd&lt;/b&gt;)." in page
    assert "<b>odd" not in page
    assert "Press Generate X token again" in page


def test_rejected_callback_logged_once(real_app, caplog):
    caplog.set_level(logging.INFO)
    client = real_app.test_client()
    log_in(client)
    start_authorization(client)

    client.get("/admin/callback/instagram?code=C&state=forged-state")

    logged = oauth_records(caplog, "does not match any authorization")
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING
    assert "does not match any authorization" in summary_text(client)


@pytest.mark.parametrize(
    ("error_message", "hint"),
    [
        ("Invalid platform app", "not the Meta app ID"),
        ("Matching code was not found or was already used", "/admin/generate"),
    ],
)
def test_callback_exchange_error_hint(real_app, error_message, hint):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    with requests_mock.Mocker() as mocker:
        mocker.post(
            TOKEN_URL,
            status_code=400,
            json={
                "error_type": "OAuthException",
                "code": 400,
                "error_message": error_message,
            },
        )
        client.get(f"/admin/callback/instagram?code=C&state={state}")
    page = summary_text(client)
    assert error_message in page
    assert hint in page


def test_callback_keeps_old_token_on_failure(real_app):
    store = real_app.extensions["ownfeed"].token_store
    store.set("instagram", {"access_token": "OLD-TOKEN", "username": "before"})
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    with requests_mock.Mocker() as mocker:
        mocker.post(TOKEN_URL, status_code=502, text="<html>Bad gateway</html>")
        client.get(f"/admin/callback/instagram?code=C&state={state}")
    assert store.get("instagram")["access_token"] == "OLD-TOKEN"


def test_callback_requires_admin(real_app):
    client = real_app.test_client()
    response = client.get("/admin/callback/instagram?code=C&state=S")
    assert response.status_code == 302
    assert "/admin/login" in response.headers["Location"]


def test_disconnect_forgets_token(real_app):
    store = real_app.extensions["ownfeed"].token_store
    store.set("instagram", {"access_token": "T", "username": "someone"})
    client = real_app.test_client()
    log_in(client)
    token = csrf_token(client, "/admin/summary")
    client.post("/admin/disconnect/instagram", data={"csrf_token": token})
    assert store.get("instagram") is None


def test_pending_file_has_no_plain_state(real_app):
    client = real_app.test_client()
    log_in(client)
    state = start_authorization(client)["state"][0]
    pending = Path(real_app.instance_path) / "oauth-pending.json"
    text = pending.read_text(encoding="utf-8")
    assert state not in text
    assert json.loads(text)


def test_admin_pages_referrer_policy(client):
    log_in(client)
    response = client.get("/admin/summary")
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_callback_error_with_bad_state_hides_text(real_app):
    client = real_app.test_client()
    log_in(client)
    client.get(
        "/admin/callback/instagram?error=x"
        "&error_description=Visit+evil.example+to+fix&state=bogus"
    )
    page = summary_text(client)
    assert "evil.example" not in page
    assert "does not match" in page


def test_sandbox_control_needs_admin(make_app):
    app = make_app(ADMIN_PASSWORD=TEST_PASSWORD)
    client = app.test_client()
    for path in ("/sandbox/", "/sandbox/x/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert "/admin/login" in response.headers["Location"], path
    assert client.post("/sandbox/control", data={"action": "reset"}).status_code in (
        400,
        403,
    )
    log_in(client)
    assert client.get("/sandbox/").status_code == 200


def test_startup_line_info_for_server_debug_for_command(make_app, caplog):
    caplog.set_level(logging.DEBUG, logger="app")
    make_app()
    with click.Context(click.Command("status"), info_name="status"):
        make_app()
    with click.Context(click.Command("run"), info_name="run"):
        make_app()

    levels = [
        record.levelno
        for record in caplog.records
        if record.getMessage().startswith("ownfeed started")
    ]
    assert levels == [logging.INFO, logging.DEBUG, logging.INFO]
