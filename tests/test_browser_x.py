"""End to end in headless Chromium: the X connect flow and X posts through embed.js.

Both tests run ownfeed in sandbox mode on a loopback port, so the browser goes
through the X sandbox's authorize page, and embed.js renders X posts on a
second loopback origin under real cross-origin rules.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from conftest import TEST_PASSWORD

import sandbox_x

pytestmark = pytest.mark.browser

LIKED_COUNT = 20
LIKED_SCRIPT = "<script>alert('liked')</script>"
POST_SCRIPT = '<script>alert("post")</script>'
POST_ATTRIBUTE = '"><img src=x onerror=alert(1)> & <b>not bold</b>'
HOST_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>The owner's site</title></head>
<body>
<h1>My posts on X</h1>
<div id="timeline" data-ownfeed-x data-limit="5"></div>
<h2>Posts I liked</h2>
<div id="liked" data-ownfeed-x data-view="liked" data-limit="{liked}"></div>
<h2>Sunsets</h2>
<div id="search" data-ownfeed-x data-view="search" data-q="#sunset"></div>
<div id="no-query" data-ownfeed-x data-view="search"></div>
<div id="bad-view" data-ownfeed-x data-view="likes"></div>
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
# Describes every element under a root: tag, class, the attributes the markup
# sets, and the text of elements without element children.
DESCRIBE = """
const ATTRIBUTES = ["href", "src", "alt", "datetime", "data-id", "target", "rel",
  "loading", "decoding", "width", "height"];
function describe(root) {
  return [root, ...root.querySelectorAll("*")].map((element) => {
    const attributes = {};
    for (const name of ATTRIBUTES) {
      if (element.hasAttribute(name)) {
        attributes[name] = element.getAttribute(name);
      }
    }
    const text = element.children.length ? null : element.textContent;
    return [element.tagName, element.className, attributes, text];
  });
}
"""
DESCRIBE_RENDERED = DESCRIBE + "(root) => describe(root)"
DESCRIBE_SERVED = (
    DESCRIBE
    + """(html) => describe(
  new DOMParser().parseFromString(html, "text/html").querySelector("ol.ownfeed-tweets")
)"""
)


class HostSite:
    """The owner's site on its own loopback port, serving HOST_PAGE."""

    def __init__(self) -> None:
        self.feed_url = ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                page = HOST_PAGE.format(feed=site.feed_url, liked=LIKED_COUNT)
                body = page.encode()
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
def host_site() -> Iterator[HostSite]:
    site = HostSite()
    yield site
    site.stop()


def test_x_connect_flow_in_browser(live_server_factory, page):
    server = live_server_factory(
        {"OWNFEED_SANDBOX": "1", "ADMIN_PASSWORD": TEST_PASSWORD}
    )
    visited: list[str] = []
    bodies: list[str] = []

    def remember(response) -> None:
        visited.append(response.url)
        is_page = "text/html" in response.headers.get("content-type", "")
        if is_page and not 300 <= response.status < 400:
            bodies.append(response.text())

    page.on("response", remember)

    page.goto(server.url + "/admin/generate")
    page.fill("#password", TEST_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/generate")

    page.click("text=Generate X token")
    page.wait_for_url("**/sandbox/x/i/oauth2/authorize**")
    authorize = parse_qs(urlsplit(page.url).query)
    assert authorize["code_challenge_method"] == ["S256"]
    assert len(authorize["code_challenge"][0]) == 43
    assert "offline.access" in authorize["scope"][0].split()
    assert "code_verifier" not in authorize
    pending = json.loads((server.instance_path / "oauth-pending.json").read_text())
    verifiers = [entry["code_verifier"] for entry in pending.values()]
    assert len(verifiers) == 1
    assert verifiers[0]

    page.click("button:has-text('Allow')")
    page.wait_for_url("**/admin/summary**")
    assert "Connected @sandbox_owner" in page.text_content("#last-attempt")
    assert "@sandbox_owner" in page.text_content("#provider-x")

    tokens_file = server.instance_path / "tokens.json"
    record = json.loads(tokens_file.read_text())["providers"]["x"]
    assert record["username"] == "sandbox_owner"
    assert record["refresh_token"]
    assert record["access_token"]
    assert record["status"] == "active"
    assert "like.read" in record["permissions"]
    pending = json.loads((server.instance_path / "oauth-pending.json").read_text())
    assert [entry["code_verifier"] for entry in pending.values()] == [None]

    liked = requests.get(f"{server.url}/tweets/liked?format=json&limit=100", timeout=10)
    assert liked.status_code == 200
    assert len(liked.json()["data"]) == LIKED_COUNT
    # The stored access token is the OAuth 2.0 user token the sandbox issued.
    me = requests.get(
        f"{server.url}/sandbox/x/2/users/me",
        headers={"Authorization": f"Bearer {record['access_token']}"},
        timeout=10,
    )
    assert me.json()["data"]["username"] == "sandbox_owner"
    page.goto(server.url + "/tweets/liked?format=html&limit=100")
    assert page.locator("li.ownfeed-tweet").count() == LIKED_COUNT

    codes = [
        code
        for url in visited
        for code in parse_qs(urlsplit(url).query).get("code", [])
    ]
    assert codes, "the browser never saw an authorization code"
    secret_key = (server.instance_path / "secret_key").read_text().strip()
    credentials = sandbox_x.credentials(secret_key)
    secrets = {
        "access token": record["access_token"],
        "refresh token": record["refresh_token"],
        "code_verifier": verifiers[0],
        "client secret": credentials["client_secret"],
        "OAuth 1.0a token secret": credentials["access_token_secret"],
        "password": TEST_PASSWORD,
        "session key": secret_key,
    }
    secrets.update({f"code {index}": code for index, code in enumerate(codes)})
    server.stop()
    log = server.log_text()
    assert "Connected x account sandbox_owner" in log
    public = [liked.text] + bodies
    for name, value in secrets.items():
        assert value not in log, f"the {name} appears in the server log"
        for body in public:
            assert value not in body, f"the {name} appears in a page"
        if name != "code 0" and not name.startswith("code "):
            assert not any(value in url for url in visited), f"the {name} in a URL"


def wait_for_images(target, selector: str) -> None:
    target.wait_for_function(IMAGES_LOADED, arg=selector, timeout=10_000)


def texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "items => items.map(i => i.textContent)")


def test_x_embed_renders_on_other_site(live_server_factory, host_site, browser):
    server = live_server_factory(
        {"OWNFEED_SANDBOX": "1", "IMAGES_ALLOWED_ORIGINS": host_site.origin}
    )
    host_site.feed_url = server.url
    context = browser.new_context(viewport={"width": 900, "height": 900})
    requested: list[str] = []
    messages: list[str] = []
    dialogs: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    context.on("console", lambda message: messages.append(message.text))
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.add_init_script(COUNT_ALERTS)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(host_site.origin + "/")

    for name in ("timeline", "liked", "search"):
        page.wait_for_selector(f"#{name}[data-ownfeed-state=loaded]", state="attached")
    for name in ("no-query", "bad-view"):
        page.wait_for_selector(f"#{name}[data-ownfeed-state=error]", state="attached")
    assert page.locator("#timeline li.ownfeed-tweet").count() == 5
    assert page.locator("#liked li.ownfeed-tweet").count() == LIKED_COUNT
    assert page.locator("#search li.ownfeed-tweet").count() >= 1
    assert all("#sunset" in text.lower() for text in texts(page, "#search p"))
    assert page.locator("#no-query li").count() == 0
    assert any("needs data-q" in text for text in messages)
    assert any('got "likes"' in text for text in messages)
    assert page.locator("link[data-ownfeed-css]").count() == 1

    # The script builds the same markup as the server's HTML format.
    for name, query in (("timeline", "limit=5"), ("liked", f"limit={LIKED_COUNT}")):
        path = "/tweets" if name == "timeline" else "/tweets/liked"
        served = requests.get(f"{server.url}{path}?format=html&{query}", timeout=10)
        expected = page.evaluate(DESCRIBE_SERVED, served.text)
        rendered = page.eval_on_selector(f"#{name} ol", DESCRIBE_RENDERED)
        assert rendered == expected, f"the {name} markup differs from tweets.html"

    handles = texts(page, "#timeline .ownfeed-tweet-handle")
    assert set(handles) == {"@sandbox_owner"}
    first_date = page.locator("#timeline a.ownfeed-tweet-date").first
    assert first_date.get_attribute("href").startswith(
        "https://x.com/sandbox_owner/status/"
    )
    assert first_date.get_attribute("rel") == "noopener noreferrer"
    wait_for_images(page, "#timeline .ownfeed-tweet-media img")

    page.click("#timeline .ownfeed-more")
    page.wait_for_function(
        "() => document.querySelectorAll('#timeline li.ownfeed-tweet').length === 10"
    )
    timeline_texts = texts(page, "#timeline p.ownfeed-tweet-text")
    assert POST_SCRIPT in timeline_texts
    assert POST_ATTRIBUTE in timeline_texts
    assert LIKED_SCRIPT in texts(page, "#liked p.ownfeed-tweet-text")
    wait_for_images(page, "#timeline .ownfeed-tweet-media img")

    assert dialogs == []
    assert page.evaluate("window.__xss") == 0
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("#timeline script, #liked script, #search script").count() == 0
    assert page.locator("#timeline b, #liked b").count() == 0
    hosts = {urlsplit(url).hostname for url in requested}
    assert hosts == {"127.0.0.1"}
    assert any("/sandbox/x/pbs/" in url for url in requested)
    context.close()
