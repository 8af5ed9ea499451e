"""End to end: a token invalidated by a password change, seen and fixed in Chromium."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.browser

# How long the server may take to meet the rejected token and record it. A
# background fetch already under way when the token is invalidated may run
# until the client's 30-second deadline, so the wait covers one such fetch.
REJECTION_WAIT_SECONDS = 45.0


def stored_record(server) -> dict:
    text = (server.instance_path / "tokens.json").read_text(encoding="utf-8")
    return json.loads(text)["providers"]["instagram"]


def allow_in_browser(page) -> None:
    """Press Allow on the sandbox's authorize page and wait for the summary."""
    page.wait_for_url("**/sandbox/oauth/authorize**")
    page.click("button:has-text('Allow')")
    page.wait_for_url("**/admin/summary**")


def test_reauthorization_banner_in_browser(live_server_factory, page):
    # No ADMIN_PASSWORD: the sandbox's admin pages are open. A feed older than
    # one second is fetched again, so /images soon calls the sandbox's Graph API.
    server = live_server_factory({"OWNFEED_SANDBOX": "1", "FEED_CACHE_SECONDS": "1"})

    page.goto(server.url + "/admin/generate")
    page.click("text=Generate Instagram token")
    allow_in_browser(page)
    assert "Connected @sandbox.owner" in page.text_content("#last-attempt")
    first_token = stored_record(server)["access_token"]

    page.goto(server.url + "/sandbox/")
    page.click("button:has-text('as after a password change')")
    page.wait_for_url("**/sandbox/")
    assert "password change (code 190, subcode 460)" in page.text_content("main")

    deadline = time.monotonic() + REJECTION_WAIT_SECONDS
    polls = 0
    while stored_record(server)["status"] != "reauthorization_required":
        assert time.monotonic() < deadline, "the rejected token was never recorded"
        time.sleep(0.3)
        # A new URL each time: /images may be cached by the browser for a
        # minute, and a cached response would not reach the server.
        polls += 1
        page.goto(f"{server.url}/images?format=json&poll={polls}")

    page.goto(server.url + "/admin/generate")
    banners = page.locator("[data-problem]")
    assert banners.count() == 1
    banner = page.locator("[data-problem=reauthorization_required]")
    assert "password was changed" in banner.text_content()
    assert banner.locator("button").count() == 1

    banner.locator("button:has-text('Connect Instagram again')").click()
    allow_in_browser(page)

    assert page.locator("[data-problem]").count() == 0
    status = page.text_content("#provider-instagram [data-field=status]")
    assert status.strip() == "active"
    record = stored_record(server)
    assert record["status"] == "active"
    assert record["last_error"] is None
    assert record["access_token"] != first_token
    page.goto(server.url + "/admin/generate")
    assert page.locator("[data-problem]").count() == 0

    server.stop()
    log = server.log_text()
    assert log.count("The instagram token was rejected") == 1
    assert first_token not in log
