"""Property tests: hostile parameters on every public route, and on the callback.

Hypothesis generates query strings, path segments and headers. Whatever it
sends, ownfeed must respond with a documented status and never a 5xx:
- `/images`: 200, 304 or 400, where the error JSON names the parameter;
- `/images/embed`: 200, 304 or 400;
- `/media/...`: 200 for a kept post's configured width, else 404;
- `/healthz` and `/embed.js`: 200;
- the OAuth callback: 303 to the summary, which shows the outcome escaped.

The app runs in real mode with a saved, fresh feed and a token that is not due,
so no request needs Instagram. requests_mock serves the CDN's image URLs and
returns a 500 for every other call, which the tests count as a failure.
"""

from __future__ import annotations

import base64
import re
import secrets
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests_mock
from conftest import TEST_PASSWORD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standin import jpeg_bytes

import images
from feed import Fetched
from posts import normalize_posts
from timeutil import to_iso

MOMENT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CDN = "https://cdn.instagram.test"
WIDTHS = (150, 320, 640, 1080)
PARAMETERS = ("limit", "after", "q", "type", "format")
PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def raw_records() -> list[dict[str, Any]]:
    """Return 40 media records: images, videos and albums with children."""
    records = []
    for number in range(40):
        moment = MOMENT - timedelta(hours=number + 1)
        record: dict[str, Any] = {
            "id": str(17_900_000_000_000_000 + number),
            "media_type": "IMAGE",
            "caption": f"Post {number} café #sun{number % 3} <b>bold</b>",
            "media_url": f"{CDN}/{number}.jpg",
            "permalink": f"https://www.instagram.com/p/P{number}/",
            "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S+0000"),
        }
        if number % 5 == 1:
            record.update(
                media_type="VIDEO",
                media_url=f"{CDN}/{number}.mp4",
                thumbnail_url=f"{CDN}/{number}-cover.jpg",
            )
        if number % 5 == 2:
            child_id = str(18_000_000_000_000_000 + number)
            record.update(
                media_type="CAROUSEL_ALBUM",
                children={
                    "data": [
                        {
                            "id": child_id,
                            "media_type": "IMAGE",
                            "media_url": f"{CDN}/{number}-child.jpg",
                        }
                    ]
                },
            )
        records.append(record)
    return records


POSTS = normalize_posts(raw_records())
POST_IDS = [post["id"] for post in POSTS]
CHILD_PATHS = [
    (post["id"], child["id"]) for post in POSTS for child in post["children"]
]


class Clock:
    """A clock that stays at one moment, so the saved feed never falls due."""

    def __call__(self) -> datetime:
        return MOMENT


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """ownfeed in real mode with a saved fresh feed and an active token."""
    from app import create_app

    folder: Path = tmp_path_factory.mktemp("hostile")
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(folder / "instance"),
            "SECRET_KEY": "hostile-session-key",
            "OWNFEED_SANDBOX": False,
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": "hostile-app-secret",
            # A closed loopback port: a call that escapes requests_mock fails.
            "INSTAGRAM_TOKEN_URL": "http://127.0.0.1:9/oauth/access_token",
            "INSTAGRAM_GRAPH_URL": "http://127.0.0.1:9/graph",
            "INSTAGRAM_REDIRECT_URI": "http://127.0.0.1/admin/callback/instagram",
            "ADMIN_PASSWORD": TEST_PASSWORD,
            "CLOCK": Clock(),
        }
    )
    app.extensions["ownfeed"].token_store.set(
        "instagram",
        {
            "access_token": "IGAA-hostile-token",
            "token_type": "bearer",
            "expires_at": to_iso(MOMENT + timedelta(days=50)),
            "obtained_at": to_iso(MOMENT - timedelta(days=10)),
            "refreshed_at": None,
            "user_id": "17841400000000001",
            "app_user_id": "2764087539",
            "username": "owner.handle",
            "account_type": "BUSINESS",
            "permissions": ["instagram_business_basic"],
            "status": "active",
            "last_error": None,
            "refresh_failures": 0,
        },
    )
    with app.app_context():
        saved = images.instagram_feed().refresh_now(
            lambda: Fetched(list(POSTS), {"username": "owner.handle"})
        )
    assert len(saved.posts) == len(POSTS)
    yield app


@pytest.fixture(scope="module")
def mocked_network() -> Iterator[requests_mock.Mocker]:
    """Serve the CDN's image URLs as a JPEG and count every other call."""
    with requests_mock.Mocker(real_http=False) as mocker:
        mocker.get(
            re.compile(rf"{re.escape(CDN)}/.*"),
            content=jpeg_bytes(1200, 900),
            headers={"Content-Type": "image/jpeg"},
        )
        # Instagram's own API: every call here is a failure the tests count.
        mocker.register_uri(
            requests_mock.ANY,
            re.compile(r"http://127\.0\.0\.1:9/.*"),
            status_code=500,
            json={"error": {"code": 1, "message": "unexpected call"}},
        )
        yield mocker


@pytest.fixture(scope="module")
def visitor(hostile_app, mocked_network) -> Any:
    return hostile_app.test_client()


@pytest.fixture(scope="module")
def admin(hostile_app, mocked_network) -> Any:
    client = hostile_app.test_client()
    page = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post(
        "/admin/login", data={"password": TEST_PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 303
    return client


def graph_calls(mocker: requests_mock.Mocker) -> list[str]:
    """Return the URLs of calls that were not CDN image downloads."""
    return [call.url for call in mocker.request_history if not call.url.startswith(CDN)]


# --- strategies -----------------------------------------------------------------

NASTY = [
    "",
    " ",
    "0",
    "-1",
    "1e3",
    "12.0",
    "١٢",
    "²",
    "9" * 50,
    "%00",
    "\x00",
    "null",
    "[]",
    "{}",
    "<script>alert(1)</script>",
    "'\"><img src=x onerror=alert(1)>",
    "../../etc/passwd",
    "#",
    "-",
    "--",
    "-#",
    "##sun",
    "café",
    "🌅" * 60,
    "東京タワー",
    "a" * 201,
    "a" * 5000,
    "IMAGE",
    "image,image",
    "image,,video",
    " video ",
    "reel",
    "json",
    "JSON",
    "html ",
    "xml",
]
values = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=300),
    st.integers(-(10**6), 10**6).map(str),
)
limits = st.one_of(st.integers(-5, 150).map(str), values)
type_lists = st.lists(
    st.sampled_from(["image", "video", "carousel_album", "IMAGE", "story", ""]),
    max_size=4,
).map(",".join)
cursors = st.one_of(
    st.binary(max_size=60).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.sampled_from(["MjAyNnwx", "fA", "MjAyNi0xMi0wMXwxNzkwMDAwMDAwMDAwMDAwMDA"]),
    values,
)
extra_keys = st.dictionaries(
    st.one_of(
        st.sampled_from(["_external", "_anchor", "callback", "access_token", "x"]),
        st.text(min_size=1, max_size=20),
    ),
    values,
    max_size=3,
)


@st.composite
def feed_queries(draw: st.DrawFn) -> dict[str, str]:
    """Draw a query string: any of the five parameters, plus unknown keys."""
    query = draw(extra_keys)
    chosen = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "limit": limits,
                "after": cursors,
                "q": st.one_of(values, st.text(alphabet="#-é ab東", max_size=40)),
                "type": st.one_of(type_lists, values),
                "format": st.one_of(st.sampled_from(["json", "html"]), values),
            },
        )
    )
    query.update(chosen)
    return query


# Header values a client can send: printable ASCII, no line breaks.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Accept": st.sampled_from(
            ["text/html", "application/json", "*/*", "text/html;q=0.1, */*", "x/y"]
        ),
        "If-None-Match": st.one_of(
            st.sampled_from(['"*"', "*", 'W/"x"']), header_values
        ),
        "Origin": st.sampled_from(["https://owner.example", "null", "http://evil"]),
    },
)


def check_error_json(response: Any) -> dict[str, Any]:
    """Assert a 400's body is the documented error JSON and return its `error`."""
    body = response.get_json()
    assert response.mimetype == "application/json"
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == "invalid_parameter"
    assert error["parameter"] in PARAMETERS
    check_parameter_message(error["message"], error["parameter"])
    return error


def check_parameter_message(message: str, parameter: str) -> None:
    """Assert the message reads "Parameter NAME PROBLEM: got VALUE. Use VALID."."""
    assert message.startswith(f"Parameter {parameter} "), message
    assert ": got " in message, message
    assert ". Use " in message, message
    # A long value is cut: the whole message stays short whatever was sent.
    assert len(message) < 300, message


# --- properties -----------------------------------------------------------------


@PROPERTY_SETTINGS
@given(query=feed_queries(), sent_headers=headers)
def test_hostile_images_documented_status(
    visitor: Any, mocked_network: Any, query: dict[str, str], sent_headers: dict
) -> None:
    response = visitor.get("/images", query_string=query, headers=sent_headers)

    assert response.status_code in (200, 304, 400), response.status_code
    if response.status_code == 400:
        check_error_json(response)
    if response.status_code == 200:
        assert response.mimetype in ("application/json", "text/html")
        assert "<script>" not in response.get_data(as_text=True)
    assert graph_calls(mocked_network) == []


@PROPERTY_SETTINGS
@given(query=feed_queries())
def test_hostile_images_json_shape(visitor: Any, query: dict[str, str]) -> None:
    query["format"] = "json"

    response = visitor.get("/images", query_string=query)

    assert response.status_code in (200, 400)
    if response.status_code == 200:
        body = response.get_json()
        assert set(body) == {"data", "paging", "account", "fetched_at", "stale"}
        assert len(body["data"]) <= 100
        assert body["stale"] is False
        next_url = body["paging"]["next"]
        assert next_url is None or urlsplit(next_url).path == "/images"


@PROPERTY_SETTINGS
@given(query=feed_queries(), sent_headers=headers)
def test_hostile_embed_documented_status(
    visitor: Any, query: dict[str, str], sent_headers: dict
) -> None:
    response = visitor.get("/images/embed", query_string=query, headers=sent_headers)

    assert response.status_code in (200, 304, 400), response.status_code
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]
    if response.status_code == 400:
        # An iframe shows the body to the visitor, so the error is a page.
        page = response.get_data(as_text=True)
        assert response.mimetype == "text/html"
        assert page.startswith("<!doctype html>")
        assert "<p>Parameter " in page
        assert "<script>" not in page
        assert "<img src=x" not in page


PUBLIC_PREFIXES = ["/images", "/images/embed", "/embed.js", "/media", "/healthz"]
PUBLIC_PREFIXES += ["/tweets", "/tweets/search", "/tweets/liked", "/tweets/embed"]
EMBED_PAGES = ("/images/embed", "/tweets/embed")
OTHER_METHODS = ["POST", "PUT", "DELETE", "PATCH"]


@PROPERTY_SETTINGS
@given(
    prefix=st.sampled_from(PUBLIC_PREFIXES),
    segment=st.none() | st.one_of(st.sampled_from(NASTY), st.text(max_size=60)),
    method=st.sampled_from(["GET", *OTHER_METHODS]),
)
def test_hostile_public_path_errors_json(
    visitor: Any, prefix: str, segment: str | None, method: str
) -> None:
    if segment is None and method == "GET":
        # A GET of the route itself is served, not an error.
        segment = ""
    path = prefix if segment is None else f"{prefix}/x-{quote(segment, safe='')}"

    response = visitor.open(path, method=method)

    if response.status_code == 308:
        # Werkzeug merges the doubled slash of a decoded "%2F" and redirects.
        assert "//" in path.replace("%2F", "/")
        return
    assert response.status_code in (404, 405), (path, response.status_code)
    assert response.headers["Cache-Control"] == "no-store"
    if response.status_code == 405:
        assert "GET" in response.headers["Allow"]
    if path in EMBED_PAGES:
        assert response.mimetype == "text/html"
        assert "frame-ancestors" in response.headers["Content-Security-Policy"]
        return
    error = response.get_json()["error"]
    expected = {404: "not_found", 405: "method_not_allowed"}[response.status_code]
    assert response.mimetype == "application/json"
    assert error["code"] == expected
    assert error["message"]


segments = st.one_of(
    st.sampled_from(POST_IDS),
    st.sampled_from(NASTY),
    st.text(min_size=1, max_size=40),
    st.integers(0, 10**20).map(str),
)
widths = st.one_of(st.sampled_from(WIDTHS), st.integers(0, 5000))


@PROPERTY_SETTINGS
@given(post_id=segments, width=widths, child=st.none() | segments)
def test_hostile_media_paths(
    visitor: Any, mocked_network: Any, post_id: str, width: int, child: str | None
) -> None:
    parts = [quote(post_id, safe="")]
    if child is not None:
        parts.append(quote(child, safe=""))
    path = f"/media/{'/'.join(parts)}/{width}.jpg"

    response = visitor.get(path)
    response.close()

    kept = post_id in POST_IDS and (child is None or (post_id, child) in CHILD_PATHS)
    if response.status_code == 308:
        # Werkzeug merges the doubled slash of an empty segment ("%2F" decodes
        # to "/") and redirects to that path.
        assert "//" in path.replace("%2F", "/")
        assert urlsplit(response.headers["Location"]).path.startswith("/media/")
        return
    expected = 200 if kept and width in WIDTHS else 404
    assert response.status_code == expected, path
    if expected == 200:
        assert response.mimetype == "image/jpeg"
    assert graph_calls(mocked_network) == []


@PROPERTY_SETTINGS
@given(post_index=st.integers(0, len(CHILD_PATHS) - 1), width=st.sampled_from(WIDTHS))
def test_hostile_media_child_served(visitor: Any, post_index: int, width: int) -> None:
    post_id, child_id = CHILD_PATHS[post_index]

    response = visitor.get(f"/media/{post_id}/{child_id}/{width}.jpg")
    response.close()

    assert response.status_code == 200


@PROPERTY_SETTINGS
@given(query=extra_keys, sent_headers=headers)
def test_hostile_healthz_and_script(
    visitor: Any, query: dict[str, str], sent_headers: dict
) -> None:
    health = visitor.get("/healthz", query_string=query, headers=sent_headers)
    script = visitor.get("/embed.js", query_string=query, headers=sent_headers)
    script.close()

    assert health.status_code == 200
    assert health.get_json()["status"] == "ok"
    assert script.status_code in (200, 304)
    if script.status_code == 200:
        assert script.mimetype == "text/javascript"


# Up to 300 characters: a longer error_description overflows the session
# cookie, which test_hostile_callback_long_description covers.
callback_values = st.one_of(
    st.sampled_from([value for value in NASTY if len(value) <= 300]),
    st.text(max_size=300),
)


def start_authorization(admin: Any) -> str:
    """Press Generate and return the state of the authorization it started."""
    page = admin.get("/admin/generate").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    started = admin.post("/admin/generate/instagram", data={"csrf_token": token})
    assert started.status_code == 303
    return parse_qs(urlsplit(started.headers["Location"]).query)["state"][0]


def last_attempt(page: str) -> str | None:
    """Return the HTML inside the summary's last-attempt paragraph."""
    match = re.search(r'id="last-attempt">(.*?)</p>', page, re.DOTALL)
    return match.group(1) if match else None


@PROPERTY_SETTINGS
@given(
    query=st.fixed_dictionaries(
        {},
        optional={
            "code": st.one_of(
                st.sampled_from([" ", "\t", "#_", "#_#_", " #_ ", "abc#_"]),
                callback_values,
            ),
            "state": callback_values,
            "error": callback_values,
            "error_description": callback_values,
            "error_reason": values,
        },
    ),
    extra=extra_keys,
    valid_state=st.booleans(),
)
def test_hostile_callback_redirects_to_summary(
    admin: Any,
    mocked_network: Any,
    query: dict[str, str],
    extra: dict[str, str],
    valid_state: bool,
) -> None:
    sent = {**extra, **query}
    if valid_state:
        sent["state"] = start_authorization(admin)
    calls_before = len(graph_calls(mocked_network))

    response = admin.get("/admin/callback/instagram", query_string=sent)
    summary = admin.get("/admin/summary")
    outcome = last_attempt(summary.get_data(as_text=True))
    calls = graph_calls(mocked_network)[calls_before:]

    assert response.status_code == 303
    assert urlsplit(response.headers["Location"]).path == "/admin/summary"
    assert summary.status_code == 200
    assert outcome is not None
    # The outcome is text: any "<" of the provider's text arrives escaped.
    assert "<" not in outcome
    # Only a valid state with a code and no error reaches the code exchange.
    exchanged = valid_state and "error" not in sent and bool(sent.get("code"))
    assert len(calls) <= int(exchanged)


def test_hostile_callback_long_description(admin: Any) -> None:
    # 4,000 random characters in error_description, with a valid state: the
    # session cookie would outgrow the 4,093 bytes browsers keep.
    state = start_authorization(admin)
    description = secrets.token_urlsafe(3000)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = admin.get(
            "/admin/callback/instagram",
            query_string={
                "state": state,
                "error": "access_denied",
                "error_description": description,
            },
        )
    cookie = response.headers.get("Set-Cookie", "")

    assert response.status_code == 303
    assert [str(warning.message) for warning in caught] == []
    assert len(cookie) <= 4093
