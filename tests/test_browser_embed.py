"""End to end: the embed script and the embed iframe on another site, in Chromium.

A second HTTP server on another loopback port plays the owner's website. Its page
uses both ways of embedding the feed, so the browser applies real cross-origin rules:
CORS for the script's fetches and `frame-ancestors` for the iframe.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

pytestmark = pytest.mark.browser

XSS_CAPTIONS = ('<script>alert("caption")</script>', '"><img src=x onerror=alert(1)>')
# The sandbox withholds this image post's media_url, so it has no still image.
WITHHELD_CAPTION = "Cover photo with a licensed track"
OLDEST_CAPTION = "The old lighthouse at the end of the world #farshore"
# The script is included twice on purpose: the second copy must render nothing.
HOST_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>The owner's site</title>
<style>body {{ font: 16px system-ui; max-width: 720px; margin: 1rem auto; }}</style>
</head>
<body>
<h1>My photos</h1>
<div id="latest" data-ownfeed data-limit="6"></div>
<h2>The lighthouse</h2>
<div id="lighthouse" data-ownfeed data-q="lighthouse"></div>
<h2>In a frame</h2>
<iframe id="frame" src="{feed}/images/embed?limit=6" title="Posts"
  width="720" height="420" style="border: 0"></iframe>
<script src="{feed}/embed.js"></script>
<script src="{feed}/embed.js"></script>
</body>
</html>
"""
# Counts alert() calls in each document before passing them on as dialogs.
COUNT_ALERTS = """
window.__xss = 0;
const originalAlert = window.alert;
window.alert = (...args) => { window.__xss += 1; return originalAlert(...args); };
"""
IMAGES_LOADED = """(selector) => {
  const images = [...document.querySelectorAll(selector)];
  images.forEach((image) => image.scrollIntoView());
  return images.length > 0
    && images.every((image) => image.complete && image.naturalWidth > 0);
}"""


class HostSite:
    """A site on its own loopback port that serves HOST_PAGE for a feed URL."""

    def __init__(self) -> None:
        self.feed_url = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = HOST_PAGE.format(feed=site.feed_url).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host_sites() -> Iterator:
    """Start host sites for a test and stop them all at its end."""
    sites: list[HostSite] = []

    def factory() -> HostSite:
        site = HostSite()
        sites.append(site)
        return site

    yield factory
    for site in sites:
        site.stop()


def form_fields(page_html: str) -> dict[str, str]:
    """Return the name and value of each input in a page; a later name wins."""
    pairs = re.findall(r'name="([a-z_]+)" value="([^"]*)"', page_html)
    return {name: html.unescape(value) for name, value in pairs}


def connect_sandbox(feed_url: str) -> requests.Session:
    """Connect the sandbox account through the admin pages, with admin left open."""
    http = requests.Session()
    generate = http.get(f"{feed_url}/admin/generate", timeout=10)
    authorize = http.post(
        f"{feed_url}/admin/generate/instagram",
        data={"csrf_token": form_fields(generate.text)["csrf_token"]},
        timeout=10,
    )
    consent = {**form_fields(authorize.text), "decision": "allow"}
    summary = http.post(f"{feed_url}/sandbox/oauth/authorize", data=consent, timeout=10)
    assert "/admin/summary" in summary.url
    return http


def start_feed(live_server_factory, allowed: HostSite, **env: str) -> str:
    """Start ownfeed that allows `allowed`'s origin, connect it, return its URL."""
    server = live_server_factory(
        {"OWNFEED_SANDBOX": "1", "IMAGES_ALLOWED_ORIGINS": allowed.origin, **env}
    )
    connect_sandbox(server.url)
    return server.url


def open_host(context, site: HostSite, dialogs: list[str]):
    """Open the host site in a new page that records dialogs instead of showing them."""
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.add_init_script(COUNT_ALERTS)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(site.origin + "/")
    return page


def embed_frame(page):
    """Return the frame shown by the #frame iframe."""
    return page.wait_for_selector("#frame").content_frame()


def wait_for_images(target, selector: str) -> None:
    target.wait_for_function(IMAGES_LOADED, arg=selector, timeout=10_000)


def alts(target, selector: str) -> list[str]:
    return target.eval_on_selector_all(selector, "items => items.map(i => i.alt)")


def current_sources(target, selector: str) -> list[str]:
    """Return the URL each image element actually loaded, chosen from its srcset."""
    return target.eval_on_selector_all(
        selector, "items => items.map(i => i.currentSrc)"
    )


def test_embed_renders_on_allowed_site(
    live_server_factory, host_sites, browser, tmp_path
):
    site = host_sites()
    site.feed_url = start_feed(live_server_factory, site)
    media_prefix = f"{site.feed_url}/media/"
    context = browser.new_context(viewport={"width": 900, "height": 900})
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    dialogs: list[str] = []
    page = open_host(context, site, dialogs)

    page.wait_for_selector("#latest[data-ownfeed-state=loaded]")
    page.wait_for_selector("#lighthouse[data-ownfeed-state=loaded]")
    wait_for_images(page, "#latest img")
    assert page.locator("#latest .ownfeed-item").count() == 6
    assert page.locator("#latest .ownfeed-grid").count() == 1
    assert page.locator("link[data-ownfeed-css]").count() == 1
    assert alts(page, "#lighthouse img") == [OLDEST_CAPTION]
    assert page.locator("#lighthouse .ownfeed-more").count() == 0
    first = page.locator("#latest .ownfeed-item").first
    assert first.get_attribute("target") == "_blank"
    assert first.get_attribute("rel") == "noopener noreferrer"
    assert first.get_attribute("href").startswith("https://www.instagram.com/p/")
    assert page.locator("#latest .ownfeed-video").count() >= 1
    assert page.locator("#latest .ownfeed-carousel_album").count() >= 1
    assert re.fullmatch(
        r"Instagram photo from \d{4}-\d{2}-\d{2}", alts(page, "#latest img")[3]
    )

    frame = embed_frame(page)
    frame.wait_for_selector(".ownfeed-grid")
    wait_for_images(frame, "img")
    assert frame.locator(".ownfeed-item").count() == 6
    page.screenshot(path=tmp_path / "host-first-page.png", full_page=True)
    feed_requests = [url for url in requested if "/images?format=json" in url]
    assert len(feed_requests) == 2, "each div is rendered once, by one of the scripts"

    for expected_count in (12, 18):
        page.click("#latest .ownfeed-more")
        page.wait_for_function(
            "n => document.querySelectorAll('#latest .ownfeed-item').length === n",
            arg=expected_count,
        )
    assert page.locator("img[src=x]").count() == 0
    wait_for_images(page, "#latest img")
    assert XSS_CAPTIONS[0] in alts(page, "#latest img")
    assert XSS_CAPTIONS[1] in alts(page, "#latest img")
    assert page.text_content("#latest .ownfeed-missing") == WITHHELD_CAPTION
    page.screenshot(path=tmp_path / "host-more.png", full_page=True)

    frame_alts: list[str] = []
    for _ in range(2):
        with frame.expect_navigation():
            frame.click(".ownfeed-more")
        frame = embed_frame(page)
        wait_for_images(frame, "img")
        assert frame.locator("img[src=x]").count() == 0
        frame_alts += alts(frame, "img")
    assert XSS_CAPTIONS[0] in frame_alts
    assert XSS_CAPTIONS[1] in frame_alts

    assert dialogs == []
    assert page.evaluate("window.__xss") == 0
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("#latest script").count() == 0
    hosts = {urlsplit(url).hostname for url in requested}
    assert hosts == {"127.0.0.1"}

    # Images come from ownfeed's /media, so the browser never reaches the CDN.
    wait_for_images(page, "img")
    image_sources = current_sources(page, "img") + current_sources(frame, "img")
    assert len(image_sources) > 18
    assert [src for src in image_sources if not src.startswith(media_prefix)] == []
    assert [url for url in requested if "/sandbox/cdn" in url] == []
    assert any(url.startswith(media_prefix) for url in requested)
    context.close()


def test_embed_blocked_on_other_site(live_server_factory, host_sites, browser):
    allowed, other = host_sites(), host_sites()
    other.feed_url = start_feed(live_server_factory, allowed)
    context = browser.new_context()
    messages: list[str] = []
    context.on("console", lambda message: messages.append(message.text))
    page = open_host(context, other, [])

    page.wait_for_selector("#latest[data-ownfeed-state=error]", state="attached")
    assert page.locator("#latest .ownfeed-grid").count() == 1
    assert page.locator("#latest .ownfeed-item").count() == 0
    assert page.text_content("#latest") == ""
    assert any("blocked by CORS policy" in text for text in messages)

    frame = embed_frame(page)
    assert frame.url.startswith("chrome-error://")
    assert frame.locator(".ownfeed-grid").count() == 0
    assert any("frame-ancestors" in text for text in messages)
    context.close()


def test_embed_without_feed_shows_empty_grid(live_server_factory, host_sites, page):
    site = host_sites()
    server = live_server_factory(
        {"OWNFEED_SANDBOX": "1", "IMAGES_ALLOWED_ORIGINS": site.origin}
    )
    site.feed_url = server.url
    messages: list[str] = []
    page.on("console", lambda message: messages.append(message.text))
    page.goto(site.origin + "/")

    page.wait_for_selector("#latest[data-ownfeed-state=error]", state="attached")
    assert page.locator("#latest .ownfeed-grid").count() == 1
    assert page.locator("#latest .ownfeed-item").count() == 0
    assert page.text_content("#latest") == ""
    assert page.locator("#latest .ownfeed-more").count() == 0
    assert any("HTTP 503: not_connected" in text for text in messages)


def test_embed_serves_stale_feed_in_outage(live_server_factory, host_sites, browser):
    site = host_sites()
    site.feed_url = start_feed(live_server_factory, site, FEED_CACHE_SECONDS="1")
    first = browser.new_context()
    page = open_host(first, site, [])
    page.wait_for_selector("#latest[data-ownfeed-state=loaded]")
    first.close()

    http = requests.Session()
    panel = http.get(f"{site.feed_url}/sandbox/", timeout=10)
    token = form_fields(panel.text)["csrf_token"]
    control = {"csrf_token": token, "action": "toggle_outage"}
    http.post(f"{site.feed_url}/sandbox/control", data=control, timeout=10)
    graph = requests.get(f"{site.feed_url}/sandbox/graph/v25.0/me", timeout=10)
    assert graph.status_code == 503
    assert wait_until_stale(site.feed_url)

    second = browser.new_context()
    bodies: list[dict] = []

    def remember(response) -> None:
        if "format=json" in response.url:
            bodies.append(response.json())

    second.on("response", remember)
    page = open_host(second, site, [])
    page.wait_for_selector("#latest[data-ownfeed-state=loaded]")
    wait_for_images(page, "#latest img")
    assert page.locator("#latest .ownfeed-item").count() == 6
    assert bodies[0]["stale"] is True
    second.close()


def wait_until_stale(feed_url: str, timeout: float = 15.0) -> bool:
    """Request the feed until it is stale: past its time after a failed refresh."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{feed_url}/images?format=json&limit=1", timeout=10).json()
        if body.get("stale"):
            return True
        time.sleep(0.3)
    return False
