"""Security headers, admin access control, trusted proxies and hosts, encryption."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD
from cryptography.fernet import Fernet

CLIENT_SECRET = "hardening-app-secret"


@pytest.fixture
def real_config():
    return {
        "OWNFEED_SANDBOX": False,
        "INSTAGRAM_CLIENT_ID": "1234567890",
        "INSTAGRAM_CLIENT_SECRET": CLIENT_SECRET,
        "ADMIN_PASSWORD": TEST_PASSWORD,
        "INSTAGRAM_REDIRECT_URI": "https://owner.example/admin/callback/instagram",
    }


@pytest.fixture
def real_app(make_app, real_config):
    return make_app(**real_config)


def log_in(client) -> None:
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post(
        "/admin/login", data={"password": TEST_PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 303


def admin_urls(app) -> list[tuple[str, str]]:
    """Return (method, path) for every admin route, with sample arguments."""
    urls = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("admin.") or rule.endpoint == "admin.login":
            continue
        path = rule.rule.replace("<provider>", "instagram")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            urls.append((method, path))
    return urls


def test_admin_routes_all_refuse_anonymous(real_app):
    urls = admin_urls(real_app)
    assert len(urls) >= 8, "the url_map walk found too few admin routes"
    client = real_app.test_client()
    for method, path in urls:
        response = client.open(path, method=method)
        if method == "GET":
            assert response.status_code == 302, path
            assert "/admin/login" in response.headers["Location"], path
        else:
            assert response.status_code in (400, 403), (method, path)


def test_admin_routes_walk_covers_new_rules(real_app):
    # A route added under the admin blueprint is refused without its own check.
    from oauth import bp

    assert bp.before_request_funcs, "the admin blueprint lost its access check"
    client = real_app.test_client()
    response = client.get("/admin/summary")
    assert response.status_code == 302


@pytest.mark.parametrize(
    "path",
    ["/admin/login", "/admin/generate", "/admin/summary", "/images/embed"],
)
def test_html_pages_have_csp(real_app, path):
    client = real_app.test_client()
    log_in(client)
    response = client.get(path)
    policy = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert "script-src" not in policy


def test_admin_pages_have_no_script(real_app):
    client = real_app.test_client()
    log_in(client)
    for path in ("/admin/login", "/admin/generate", "/admin/summary"):
        page = client.get(path).get_data(as_text=True)
        assert "<script" not in page.lower(), path


def test_admin_csp_allows_authorize_redirect(real_app):
    client = real_app.test_client()
    log_in(client)
    policy = client.get("/admin/generate").headers["Content-Security-Policy"]
    assert "form-action 'self' https://www.instagram.com" in policy


def test_sandbox_pages_have_csp(make_app):
    client = make_app().test_client()
    for path in ("/sandbox/", "/admin/generate"):
        policy = client.get(path).headers.get("Content-Security-Policy", "")
        assert "default-src 'none'" in policy, path


@pytest.mark.parametrize(
    "path", ["/admin/login", "/images", "/healthz", "/embed.js", "/media/1/320.jpg"]
)
def test_every_response_nosniff(real_app, path):
    response = real_app.test_client().get(path)
    response.close()
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_admin_pages_no_referrer(real_app):
    response = real_app.test_client().get("/admin/login")
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_session_cookie_flags(real_app):
    client = real_app.test_client()
    page = client.get("/admin/login")
    cookie = page.headers.get("Set-Cookie", "")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def test_plain_http_no_hsts(real_app):
    response = real_app.test_client().get("/admin/login")
    assert "Strict-Transport-Security" not in response.headers
    assert "Secure" not in response.headers.get("Set-Cookie", "")


def test_forwarded_proto_ignored_without_trusted_proxies(real_app):
    response = real_app.test_client().get(
        "/admin/login", headers={"X-Forwarded-Proto": "https"}
    )
    assert "Strict-Transport-Security" not in response.headers


def test_trusted_proxy_https_gets_hsts_and_secure(make_app, real_config):
    app = make_app(**real_config, TRUSTED_PROXIES=1)
    response = app.test_client().get(
        "/admin/login", headers={"X-Forwarded-Proto": "https"}
    )
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Secure" in response.headers["Set-Cookie"]


def test_direct_https_gets_hsts(real_app):
    response = real_app.test_client().get(
        "/admin/login", base_url="https://owner.example"
    )
    assert "Strict-Transport-Security" in response.headers
    assert "Secure" in response.headers["Set-Cookie"]


def test_redirect_uri_not_from_untrusted_host(make_app, real_config):
    from providers import PROVIDERS, RedirectUriError

    real_config.pop("INSTAGRAM_REDIRECT_URI")
    app = make_app(**real_config)
    with app.test_request_context("/", headers={"Host": "evil.example"}):
        with pytest.raises(RedirectUriError, match="INSTAGRAM_REDIRECT_URI"):
            PROVIDERS["instagram"].redirect_uri()


def test_generate_without_redirect_uri_explains(make_app, real_config):
    real_config.pop("INSTAGRAM_REDIRECT_URI")
    app = make_app(**real_config)
    client = app.test_client()
    log_in(client)
    page = client.get("/admin/generate").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post("/admin/generate/instagram", data={"csrf_token": token})
    assert response.headers["Location"].endswith("/admin/summary")
    summary = client.get("/admin/summary").get_data(as_text=True)
    assert "INSTAGRAM_REDIRECT_URI is not set" in summary


def test_trusted_hosts_reject_spoofed_host(make_app, real_config):
    real_config.pop("INSTAGRAM_REDIRECT_URI")
    app = make_app(**real_config, TRUSTED_HOSTS=["owner.example"])
    client = app.test_client()
    response = client.get("/admin/login", headers={"Host": "evil.example"})
    assert response.status_code == 400


def test_trusted_hosts_build_redirect_uri(make_app, real_config):
    real_config.pop("INSTAGRAM_REDIRECT_URI")
    app = make_app(**real_config, TRUSTED_HOSTS=["owner.example"])
    client = app.test_client()
    base = "https://owner.example"
    page = client.get("/admin/login", base_url=base).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    client.post(
        "/admin/login",
        data={"password": TEST_PASSWORD, "csrf_token": token},
        base_url=base,
    )
    page = client.get("/admin/generate", base_url=base).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post(
        "/admin/generate/instagram", data={"csrf_token": token}, base_url=base
    )
    location = response.headers["Location"]
    assert "redirect_uri=https%3A%2F%2Fowner.example%2Fadmin%2Fcallback" in location


# --- encryption at rest ---------------------------------------------------


RECORD = {
    "access_token": "SECRET-ACCESS-TOKEN",
    "username": "owner",
    "status": "active",
}


def test_encrypted_store_hides_token(make_app, real_config, tmp_path):
    key = Fernet.generate_key().decode()
    app = make_app(**real_config, TOKEN_ENCRYPTION_KEY=key)
    store = app.extensions["ownfeed"].token_store
    store.set("instagram", RECORD)
    text = store.path.read_text()
    assert "SECRET-ACCESS-TOKEN" not in text
    assert json.loads(text)["encrypted"]
    assert store.get("instagram")["access_token"] == "SECRET-ACCESS-TOKEN"


def test_encrypted_store_wrong_key_keeps_file(make_app, real_config):
    from token_store import TokenStore, TokenStoreError

    app = make_app(**real_config, TOKEN_ENCRYPTION_KEY=Fernet.generate_key().decode())
    store = app.extensions["ownfeed"].token_store
    store.set("instagram", RECORD)
    before = store.path.read_bytes()
    other = TokenStore(store.path, encryption_key=Fernet.generate_key().decode())
    with pytest.raises(TokenStoreError, match="cannot be decrypted"):
        other.get("instagram")
    without = TokenStore(store.path)
    with pytest.raises(TokenStoreError, match="Set TOKEN_ENCRYPTION_KEY"):
        without.get("instagram")
    assert store.path.read_bytes() == before


def test_encrypt_and_decrypt_commands(make_app, real_config):
    plain_app = make_app(**real_config)
    plain_app.extensions["ownfeed"].token_store.set("instagram", RECORD)
    path = Path(plain_app.instance_path) / "tokens.json"
    assert "SECRET-ACCESS-TOKEN" in path.read_text()

    key = Fernet.generate_key().decode()
    app = make_app(**real_config, TOKEN_ENCRYPTION_KEY=key)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["token", "encrypt"])
    assert result.exit_code == 0, result.output
    assert "SECRET-ACCESS-TOKEN" not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600

    result = runner.invoke(args=["token", "decrypt"])
    assert result.exit_code == 0, result.output
    assert json.loads(path.read_text())["providers"]["instagram"] == RECORD


def test_encrypt_command_without_key_fails(real_app):
    real_app.extensions["ownfeed"].token_store.set("instagram", RECORD)
    result = real_app.test_cli_runner().invoke(args=["token", "encrypt"])
    assert result.exit_code != 0
    assert "TOKEN_ENCRYPTION_KEY is not set" in result.output


def test_invalid_encryption_key_rejected(make_app, real_config):
    from settings import ConfigError

    with pytest.raises(ConfigError, match="TOKEN_ENCRYPTION_KEY"):
        make_app(**real_config, TOKEN_ENCRYPTION_KEY="not-a-key")


def test_x_only_site_runs_in_real_mode(make_app):
    app = make_app(
        OWNFEED_SANDBOX=None,
        X_BEARER_TOKEN="x-only-bearer-token",
        X_USERNAME="jack",
        ADMIN_PASSWORD=TEST_PASSWORD,
    )
    assert app.config["OWNFEED_SANDBOX"] is False
    client = app.test_client()
    assert client.get("/images").status_code == 503
    report = client.get("/healthz").get_json()["providers"]["instagram"]
    assert report["problems"] == []
