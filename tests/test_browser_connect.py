"""End to end: connect the sandbox account in headless Chromium, over real HTTP."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import TEST_PASSWORD

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("shape", ["flat", "documented"])
def test_connect_flow_in_browser(live_server_factory, page, shape):
    server = live_server_factory(
        {
            "OWNFEED_SANDBOX": "1",
            "ADMIN_PASSWORD": TEST_PASSWORD,
            "SANDBOX_TOKEN_RESPONSE": shape,
        }
    )
    codes: list[str] = []
    bodies: list[str] = []

    def remember(response):
        query = parse_qs(urlsplit(response.url).query)
        codes.extend(query.get("code", []))
        is_page = "text/html" in response.headers.get("content-type", "")
        if is_page and not 300 <= response.status < 400:
            bodies.append(response.text())

    page.on("response", remember)

    page.goto(server.url + "/admin/generate")
    assert "/admin/login" in page.url
    page.fill("#password", TEST_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/generate")

    page.click("text=Generate Instagram token")
    page.wait_for_url("**/sandbox/oauth/authorize**")
    assert page.is_visible("text=Deny")
    page.click("button:has-text('Allow')")
    page.wait_for_url("**/admin/summary**")

    outcome = page.text_content("#last-attempt")
    assert "Connected @sandbox.owner" in outcome
    card = page.text_content("#provider-instagram")
    assert "BUSINESS" in card
    assert "days left" in card

    tokens = json.loads((server.instance_path / "tokens.json").read_text())
    record = tokens["providers"]["instagram"]
    assert record["username"] == "sandbox.owner"
    assert record["user_id"] == "17841400000000001"
    assert record["expires_at"].endswith("+00:00")
    assert (server.instance_path / "tokens.json").stat().st_mode & 0o777 == 0o600

    import sandbox

    secret_key = (server.instance_path / "secret_key").read_text().strip()
    client_secret = sandbox.credentials(secret_key)[1]
    secrets = {
        "access token": record["access_token"],
        "client secret": client_secret,
        "password": TEST_PASSWORD,
        "session key": secret_key,
    }
    assert codes, "the browser never saw an authorization code"
    secrets.update({f"code {index}": code for index, code in enumerate(codes)})

    server.stop()
    log = server.log_text()
    assert "Connected instagram account sandbox.owner" in log
    for name, value in secrets.items():
        assert value not in log, f"the {name} appears in the server log"
        for body in bodies:
            assert value not in body, f"the {name} appears in a page"


def test_deny_in_browser_shows_reason(live_server_factory, page):
    server = live_server_factory(
        {"OWNFEED_SANDBOX": "1", "ADMIN_PASSWORD": TEST_PASSWORD}
    )
    page.goto(server.url + "/admin/login")
    page.fill("#password", TEST_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/generate")
    page.click("text=Generate Instagram token")
    page.click("button:has-text('Deny')")
    page.wait_for_url("**/admin/summary**")
    assert "did not grant access" in page.text_content("#last-attempt")
    assert not (server.instance_path / "tokens.json").exists()
