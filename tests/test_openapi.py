"""docs/openapi.yaml against a running ownfeed, checked by schemathesis.

One server in sandbox mode serves every case. It is connected through the admin
flow with requests (Generate, Allow on the sandbox's authorize page, the
callback), so `/images` has posts. Schemathesis then generates requests for
each operation in the description and checks that none gets a 5xx and that
every response matches the documented status codes' schemas.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest
import requests
import schemathesis
from conftest import ROOT, LiveServer, start_server
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

SCHEMA_PATH = ROOT / "docs" / "openapi.yaml"
schema = schemathesis.openapi.from_path(SCHEMA_PATH)
# Upper bound, in seconds, for the first feed fetch after connecting.
FEED_WAIT_SECONDS = 30.0


class FormFields(HTMLParser):
    """Collects the name and value of every `<input>` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "input" and named.get("name"):
            self.fields[named["name"]] = named.get("value") or ""


def form_fields(page: str) -> dict[str, str]:
    parser = FormFields()
    parser.feed(page)
    return parser.fields


def connect_sandbox(url: str) -> None:
    """Connect the sandbox account through the admin flow, as a browser would."""
    session = requests.Session()
    page = session.get(f"{url}/admin/generate", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    started = session.post(
        f"{url}/admin/generate/instagram",
        data={"csrf_token": token},
        allow_redirects=False,
        timeout=10,
    )
    assert started.status_code == 303
    authorize = session.get(started.headers["Location"], timeout=10)
    fields = form_fields(authorize.text)
    fields["decision"] = "allow"
    done = session.post(f"{url}/sandbox/oauth/authorize", data=fields, timeout=30)
    assert done.status_code == 200
    assert urlsplit_path(done.url) == "/admin/summary"


def urlsplit_path(url: str) -> str:
    return requests.utils.urlparse(url).path


def wait_for_feed(url: str) -> None:
    deadline = time.monotonic() + FEED_WAIT_SECONDS
    while time.monotonic() < deadline:
        response = requests.get(f"{url}/images", timeout=10)
        if response.status_code == 200 and response.json()["data"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"/images had no posts after {FEED_WAIT_SECONDS} s")


@pytest.fixture(scope="module")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """ownfeed on the sandbox under `flask run`, connected, with a fetched feed."""
    folder = tmp_path_factory.mktemp("openapi")
    server = start_server(
        folder, {"OWNFEED_SANDBOX": "1", "SANDBOX_POST_COUNT": "40"}, name="openapi"
    )
    try:
        connect_sandbox(server.url)
        wait_for_feed(server.url)
        yield server
    finally:
        server.stop()


def test_openapi_describes_public_routes() -> None:
    paths = set(schema.raw_schema["paths"])

    assert paths == {
        "/images",
        "/images/embed",
        "/embed.js",
        "/media/{post_id}/{width}.jpg",
        "/media/{post_id}/{child_id}/{width}.jpg",
        "/healthz",
        "/tweets",
        "/tweets/search",
        "/tweets/liked",
        "/tweets/embed",
    }


def test_openapi_sample_matches(sandbox_server: LiveServer) -> None:
    # A known-good request validates, so the generated cases below test the
    # server and not a description that rejects everything.
    operation = schema["/images"]["GET"]
    case = operation.Case(query={"limit": 5})

    response = case.call_and_validate(
        base_url=sandbox_server.url,
        checks=[not_a_server_error, response_schema_conformance],
    )

    assert response.status_code == 200
    assert len(response.json()["data"]) == 5


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_openapi_conformance(case: Any, sandbox_server: LiveServer) -> None:
    case.call_and_validate(
        base_url=sandbox_server.url,
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )
