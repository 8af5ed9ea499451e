"""Route tests for `/images` and `/images/embed` against a mocked Graph API."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import requests_mock as requests_mock_module
from flask import request

import images
from feed import Snapshot
from timeutil import to_iso

GRAPH_URL = "https://graph.instagram.test"
MEDIA_PATH = "/v25.0/me/media"
MEDIA_URL = f"{GRAPH_URL}{MEDIA_PATH}"
ACCESS_TOKEN = "IGAA-feed-token-never-shown"
CLIENT_SECRET = "app-secret-never-shown"
TTL = 1800
OWNER = "https://owner.example"
ITEM_KEYS = {
    "id",
    "media_type",
    "caption",
    "permalink",
    "timestamp",
    "media_url",
    "thumbnail_url",
    "sizes",
    "children",
}
CHILD_KEYS = {"id", "media_type", "media_url", "thumbnail_url", "sizes"}
FIRST_MOMENT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SCRIPT_CAPTION = "<script>alert(1)</script>"
ATTRIBUTE_CAPTION = '"><img src=x onerror=alert(1)>'


class Clock:
    """A settable clock for the app, starting at a fixed moment."""

    def __init__(self) -> None:
        self.moment = FIRST_MOMENT

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


# --- a fake Graph API -----------------------------------------------------


def raw_post(number: int, **fields: Any) -> dict[str, Any]:
    """Return an Instagram media record. A higher `number` is an older post."""
    moment = datetime(2026, 11, 30, tzinfo=UTC) - timedelta(hours=number)
    record = {
        "id": str(17_900_000_000_000_000 + number),
        "media_type": "IMAGE",
        "caption": f"Post number {number}",
        "media_url": f"https://cdn.instagram.test/{number}.jpg?oe=7FFFFFFF",
        "permalink": f"https://www.instagram.com/p/P{number}/",
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S+0000"),
        "username": "owner.handle",
    }
    record.update(fields)
    return record


def post_id(number: int) -> str:
    return str(17_900_000_000_000_000 + number)


def album_post(number: int, **fields: Any) -> dict[str, Any]:
    children = [
        {
            "id": f"18{number:017d}",
            "media_type": "VIDEO",
            "media_url": f"https://cdn.instagram.test/{number}-0.mp4",
            "thumbnail_url": f"https://cdn.instagram.test/{number}-0-cover.jpg",
        },
        {
            "id": f"19{number:017d}",
            "media_type": "IMAGE",
            "media_url": f"https://cdn.instagram.test/{number}-1.jpg",
        },
    ]
    return raw_post(
        number,
        media_type="CAROUSEL_ALBUM",
        media_url=children[0]["media_url"],
        children={"data": children},
        **fields,
    )


def video_post(number: int, **fields: Any) -> dict[str, Any]:
    return raw_post(
        number,
        media_type="VIDEO",
        media_url=f"https://cdn.instagram.test/{number}.mp4",
        thumbnail_url=f"https://cdn.instagram.test/{number}-cover.jpg",
        **fields,
    )


class FakeGraph:
    """Serves `posts` (newest first) at /me/media in pages linked by `paging.next`."""

    def __init__(self, mocker: requests_mock_module.Mocker) -> None:
        self.mocker = mocker
        self.posts: list[dict[str, Any]] = []
        self.serve()

    def serve(self) -> None:
        """Serve media requests from `posts` again after `fail`."""
        self.mocker.get(MEDIA_URL, json=self._page)

    def fail(self, **response: Any) -> None:
        """Make every media request return `response` (requests_mock keywords)."""
        self.mocker.get(MEDIA_URL, **response)

    def _page(self, request: Any, context: Any) -> dict[str, Any]:
        query = parse_qs(urlsplit(request.url).query)
        start = int(query.get("after", ["0"])[0])
        limit = int(query.get("limit", ["25"])[0])
        body: dict[str, Any] = {
            "data": self.posts[start : start + limit],
            "paging": {"cursors": {"before": "QVFIb", "after": f"QVFI{start}"}},
        }
        if start + limit < len(self.posts):
            body["paging"]["next"] = (
                f"{MEDIA_URL}?access_token={ACCESS_TOKEN}&fields=id"
                f"&limit={limit}&after={start + limit}"
            )
        return body

    def calls(self) -> list[Any]:
        """Return every request made to Instagram's Graph API so far."""
        return [
            request
            for request in self.mocker.request_history
            if request.url.startswith(GRAPH_URL)
        ]


# --- fixtures and helpers -------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_feed_app(make_app, clock):
    """Return a factory of apps for a real Instagram app at test endpoints."""

    def factory(**overrides: Any):
        config = {
            "OWNFEED_SANDBOX": False,
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": CLIENT_SECRET,
            "INSTAGRAM_REDIRECT_URI": "https://owner.example/admin/callback/instagram",
            "INSTAGRAM_AUTHORIZE_URL": "https://www.instagram.test/oauth/authorize",
            "INSTAGRAM_TOKEN_URL": "https://api.instagram.test/oauth/access_token",
            "INSTAGRAM_GRAPH_URL": GRAPH_URL,
            "ADMIN_PASSWORD": "feed test password",
            "FEED_CACHE_SECONDS": TTL,
            "IMAGES_ALLOWED_ORIGINS": [OWNER],
            "CLOCK": clock,
            # These tests check the feed's own URLs; test_media.py covers the proxy.
            "MEDIA_PROXY": False,
        }
        config.update(overrides)
        return make_app(**config)

    return factory


@pytest.fixture
def graph(requests_mock) -> FakeGraph:
    return FakeGraph(requests_mock)


@pytest.fixture
def real_app(make_feed_app):
    return make_feed_app()


@pytest.fixture
def client(real_app):
    return real_app.test_client()


def connect(app: Any, clock: Clock) -> None:
    """Store an active Instagram token record, as the admin flow would."""
    app.extensions["ownfeed"].token_store.set(
        "instagram",
        {
            "access_token": ACCESS_TOKEN,
            "token_type": "bearer",
            "expires_at": to_iso(clock() + timedelta(days=50)),
            "obtained_at": to_iso(clock() - timedelta(days=10)),
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


@pytest.fixture
def connected(real_app, clock, graph) -> FakeGraph:
    """The real app with a stored token, and the fake Graph API it reads."""
    connect(real_app, clock)
    return graph


def settle(app: Any) -> None:
    """Wait for the feed's background fetch, if one was started."""
    with app.app_context():
        images.instagram_feed().wait_for_background()


def feed_snapshot(app: Any) -> Any:
    with app.app_context():
        return images.instagram_feed().snapshot()


def get_json(client: Any, url: str, **headers: str) -> dict[str, Any]:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def walk_pages(client: Any, url: str) -> list[str]:
    """Follow `paging.next` from `url` until it is null and return the ids seen."""
    seen: list[str] = []
    for _ in range(1000):
        body = get_json(client, url)
        seen += [item["id"] for item in body["data"]]
        url = body["paging"]["next"]
        if url is None:
            return seen
    raise AssertionError("paging.next never became null")


def expire_feed(app: Any, clock: Clock) -> None:
    """Move past the cache time and let one request refresh the feed."""
    clock.advance(TTL + 1)
    app.test_client().get("/images")
    settle(app)


class ImageTags(HTMLParser):
    """Collects the attributes of every `<img>` tag in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def image_tags(page: str) -> list[dict[str, str | None]]:
    parser = ImageTags()
    parser.feed(page)
    return parser.images


# --- the JSON schema ------------------------------------------------------


def test_images_json_schema(client, connected, clock):
    connected.posts = [raw_post(1), video_post(2), album_post(3)]

    body = get_json(client, "/images")

    assert set(body) == {"data", "paging", "account", "fetched_at", "stale"}
    assert body["account"] == {"username": "owner.handle"}
    assert body["fetched_at"] == "2026-12-01T12:00:00+00:00"
    assert body["stale"] is False
    assert body["paging"] == {"next": None}
    assert [item["media_type"] for item in body["data"]] == [
        "IMAGE",
        "VIDEO",
        "CAROUSEL_ALBUM",
    ]
    for item in body["data"]:
        assert set(item) == ITEM_KEYS
        assert item["timestamp"].endswith("+00:00")
        assert isinstance(item["children"], list)


def test_images_json_item_values(client, connected):
    connected.posts = [raw_post(1), video_post(2), album_post(3)]

    image, video, album = get_json(client, "/images")["data"]

    assert image["id"] == post_id(1)
    assert image["caption"] == "Post number 1"
    assert image["permalink"] == "https://www.instagram.com/p/P1/"
    assert image["timestamp"] == "2026-11-29T23:00:00+00:00"
    assert image["thumbnail_url"] == image["media_url"]
    assert image["children"] == []
    assert video["thumbnail_url"] == "https://cdn.instagram.test/2-cover.jpg"
    assert album["thumbnail_url"] == "https://cdn.instagram.test/3-0-cover.jpg"
    assert [set(child) for child in album["children"]] == [CHILD_KEYS, CHILD_KEYS]


def test_images_token_absent_from_response(client, connected):
    connected.posts = [raw_post(1)]

    text = client.get("/images").get_data(as_text=True)

    assert ACCESS_TOKEN not in text


# --- Graph calls ----------------------------------------------------------


@pytest.mark.parametrize("total", [1, 99, 100, 101, 250, 500])
def test_images_graph_calls_per_feed(client, connected, total):
    connected.posts = [
        album_post(n) if n % 3 == 0 else raw_post(n) for n in range(total)
    ]

    client.get("/images")
    client.get("/images?limit=100")
    calls = connected.calls()

    assert len(calls) == math.ceil(total / 100)
    assert all(urlsplit(call.url).path == MEDIA_PATH for call in calls)


def test_images_graph_first_call_query(client, connected):
    connected.posts = [album_post(1)]

    client.get("/images")
    query = parse_qs(urlsplit(connected.calls()[0].url).query)

    assert query["limit"] == ["100"]
    assert "children{id,media_type,media_url,thumbnail_url}" in query["fields"][0]
    assert query["access_token"] == [ACCESS_TOKEN]


def test_images_feed_max_posts(make_feed_app, clock, graph):
    app = make_feed_app(FEED_MAX_POSTS=150)
    connect(app, clock)
    graph.posts = [raw_post(n) for n in range(500)]
    client = app.test_client()

    seen = walk_pages(client, "/images?limit=100")

    assert len(graph.calls()) == 2
    assert seen == [post_id(n) for n in range(150)]


def test_images_feed_max_posts_limits_search(make_feed_app, clock, graph):
    app = make_feed_app(FEED_MAX_POSTS=100)
    connect(app, clock)
    graph.posts = [raw_post(n) for n in range(500)]
    graph.posts[200] = raw_post(200, caption="needle")

    body = get_json(app.test_client(), "/images?q=needle")

    assert body["data"] == []
    assert len(graph.calls()) == 1


def test_images_fresh_feed_not_refetched(client, connected, clock):
    connected.posts = [raw_post(n) for n in range(5)]

    client.get("/images")
    clock.advance(TTL - 1)
    client.get("/images?limit=3")
    client.get("/images?format=html")

    assert len(connected.calls()) == 1


# --- filters --------------------------------------------------------------

FILTER_POSTS = {
    1: raw_post(1, caption="Café au lait #Morning"),
    2: video_post(2, caption="Sunny day at the beach #sunset"),
    3: album_post(3, caption="Rainy cafés downtown"),
    4: raw_post(4, caption="Just #sun"),
    5: raw_post(5, caption=None),
    6: video_post(6, caption="Evening over the sea #Sun"),
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("q=cafe", [1, 3]),
        ("q=CAF%C3%89", [1, 3]),
        ("q=sun", [2, 4, 6]),
        ("q=%23sun", [4, 6]),
        ("q=%23SUN", [4, 6]),
        ("q=%23sunset", [2]),
        ("q=cafe+rainy", [3]),
        ("q=sun+-beach", [4, 6]),
        ("q=sun+-%23sun", [2]),
        ("q=-cafe", [2, 4, 5, 6]),
        ("q=nothing", []),
        ("type=video", [2, 6]),
        ("type=image,carousel_album", [1, 3, 4, 5]),
        ("type=VIDEO", [2, 6]),
        ("q=sun&type=video", [2, 6]),
        ("q=cafe&type=image", [1]),
        ("q=", [1, 2, 3, 4, 5, 6]),
        ("q=-", [1, 2, 3, 4, 5, 6]),
        ("q=%23+-%23", [1, 2, 3, 4, 5, 6]),
        ("q=%00", [1, 2, 3, 4, 5, 6]),
        ("q=...+%E2%80%94", [1, 2, 3, 4, 5, 6]),
    ],
)
def test_images_filters(client, connected, query, expected):
    connected.posts = list(FILTER_POSTS.values())

    body = get_json(client, f"/images?limit=100&{query}")

    assert [item["id"] for item in body["data"]] == [post_id(n) for n in expected]


def test_images_filter_before_paging(client, connected):
    connected.posts = [raw_post(n) for n in range(500)]
    connected.posts[450] = raw_post(450, caption="The only needle here")

    body = get_json(client, "/images?q=needle&limit=1")

    assert [item["id"] for item in body["data"]] == [post_id(450)]
    assert body["paging"]["next"] is None


def test_images_type_filter_before_paging(client, connected):
    connected.posts = [raw_post(n) for n in range(500)]
    connected.posts[480] = video_post(480)

    body = get_json(client, "/images?type=video&limit=1")

    assert [item["id"] for item in body["data"]] == [post_id(480)]


def test_images_filtered_paging_keeps_query(client, connected):
    connected.posts = [raw_post(n, caption=f"sun {n}") for n in range(10)]

    body = get_json(client, "/images?q=sun&type=image&limit=4")
    query = parse_qs(urlsplit(body["paging"]["next"]).query)

    assert query["q"] == ["sun"]
    assert query["type"] == ["image"]
    assert query["limit"] == ["4"]
    assert "after" in query


# --- paging ---------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 12, 100])
def test_images_paging_visits_every_post_once(client, connected, limit):
    connected.posts = [raw_post(n) for n in range(250)]

    seen = walk_pages(client, f"/images?limit={limit}")

    assert seen == [post_id(n) for n in range(250)]


def test_images_paging_default_limit(client, connected):
    connected.posts = [raw_post(n) for n in range(30)]

    body = get_json(client, "/images")

    assert len(body["data"]) == 12
    assert body["paging"]["next"].startswith("http://localhost/images?")


def test_images_paging_filtered_once(client, connected):
    connected.posts = [
        raw_post(n, caption="sun" if n % 3 == 0 else "rain") for n in range(100)
    ]

    seen = walk_pages(client, "/images?q=sun&limit=5")

    assert seen == [post_id(n) for n in range(0, 100, 3)]


@pytest.mark.parametrize("deleted", [9, 12])
def test_images_cursor_survives_refresh(real_app, connected, clock, deleted):
    client = real_app.test_client()
    connected.posts = [raw_post(n) for n in range(30)]
    first_page = get_json(client, "/images?limit=10")
    held_next = first_page["paging"]["next"]

    # Three new posts at the top, and one post deleted.
    connected.posts = [raw_post(n) for n in (-3, -2, -1, *range(30)) if n != deleted]
    expire_feed(real_app, clock)
    second_page = get_json(client, held_next)

    assert get_json(client, "/images?limit=1")["data"][0]["id"] == post_id(-3)
    assert [item["id"] for item in second_page["data"]] == [
        post_id(n) for n in range(10, 21) if n != deleted
    ][:10]


def test_images_cursor_refresh_to_end(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(n) for n in range(30)]
    held_next = get_json(client, "/images?limit=10")["paging"]["next"]

    connected.posts = [raw_post(n) for n in (-1, *range(30)) if n != 15]
    expire_feed(real_app, clock)
    seen = walk_pages(client, held_next)

    assert seen == [post_id(n) for n in range(10, 30) if n != 15]


@pytest.mark.parametrize(
    "extra",
    ["_scheme=javascript", "_external=0", "_anchor=x", "_method=POST", "endpoint=x"],
)
def test_images_paging_next_url_for_keywords(client, connected, extra):
    connected.posts = [raw_post(n) for n in range(5)]

    response = client.get(f"/images?limit=1&{extra}")
    next_url = response.get_json()["paging"]["next"]

    assert response.status_code == 200
    assert next_url.startswith("http://localhost/images?")
    assert "#" not in next_url


@pytest.mark.parametrize(
    ("query_string", "kept"),
    [
        (b"limit=1&q=p%C3%B6st+-%23none", "limit=1&q=p%C3%B6st+-%23none"),
        (b"limit=1&aft%65r=&q=post", "limit=1&q=post"),
        (b"limit=1&after&q=post&", "limit=1&q=post"),
        (b"limit=1&q=p\xc3\xb6st", "limit=1&q=p%C3%B6st"),
    ],
)
def test_images_paging_next_url_keeps_other_parameters(
    client, connected, query_string, kept
):
    connected.posts = [raw_post(n) for n in range(5)]
    first = client.get("/images?limit=1").get_json()["paging"]["next"]
    cursor = parse_qs(urlsplit(first).query)["after"][0]
    query_string = query_string.replace(b"after&", f"after={cursor}&".encode())

    response = client.get(
        "/images",
        base_url="https://feed.example.org/my site",
        environ_overrides={"QUERY_STRING": query_string.decode("latin-1")},
    )
    next_url = response.get_json()["paging"]["next"]

    assert response.status_code == 200
    base, _, query = next_url.partition("?")
    assert base == "https://feed.example.org/my%20site/images"
    assert query.rpartition("&after=")[0] == kept
    assert query.count("after=") == 1


@pytest.mark.parametrize(
    "query_string",
    [
        b"",
        b"q=sun+beach&limit=2",
        b"q=%23tag&q=second&limit=",
        b"q=caf%C3%A9+%2B1",
        b"q=%FF%FE&type=image",
        b"q=caf\xc3\xa9",
        b"&&limit&=orphan&a=b=c&",
        b"q=a;b&x=%zz",
    ],
)
def test_first_parameters_decode_as_werkzeug_args(real_app, query_string):
    environ = {"QUERY_STRING": query_string.decode("latin-1")}
    with real_app.test_request_context("/images", environ_overrides=environ):
        expected = dict(request.args.items())

        assert images.first_parameters() == expected


# --- ETag and caching -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/images", "/images?format=html", "/images?q=post&limit=2", "/images/embed"],
)
def test_images_etag_and_304(client, connected, url):
    connected.posts = [raw_post(n) for n in range(5)]

    first = client.get(url)
    etag = first.headers.get("ETag")
    repeat = client.get(url, headers={"If-None-Match": etag})

    assert first.status_code == 200
    assert etag is not None
    assert repeat.status_code == 304
    assert repeat.get_data() == b""
    assert repeat.headers["ETag"] == etag


def test_images_etag_weak_and_list_match(client, connected):
    connected.posts = [raw_post(1)]
    etag = client.get("/images").headers["ETag"]

    weak = client.get("/images", headers={"If-None-Match": f"W/{etag}"})
    listed = client.get("/images", headers={"If-None-Match": f'"other", {etag}'})

    assert weak.status_code == 304
    assert listed.status_code == 304


def test_images_etag_mismatch_200(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images", headers={"If-None-Match": '"not-the-etag"'})

    assert response.status_code == 200
    assert response.get_json()["data"]


def test_images_etag_differs_by_format(client, connected):
    connected.posts = [raw_post(1)]

    json_etag = client.get("/images").headers["ETag"]
    html_etag = client.get("/images?format=html").headers["ETag"]

    assert json_etag != html_etag


def test_images_etag_changes_with_feed(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(n) for n in range(5)]
    first = client.get("/images")
    old_etag = first.headers["ETag"]

    connected.posts = [raw_post(-1), *connected.posts]
    expire_feed(real_app, clock)
    second = client.get("/images", headers={"If-None-Match": old_etag})

    assert second.status_code == 200
    assert second.headers["ETag"] != old_etag
    assert second.get_data() != first.get_data()
    assert second.get_json()["data"][0]["id"] == post_id(-1)


def test_images_cache_control_public_short(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images")
    directives = response.cache_control

    assert directives.public is True
    assert directives.max_age is not None
    assert 0 < directives.max_age <= 300


def test_images_cache_control_on_304(client, connected):
    connected.posts = [raw_post(1)]
    etag = client.get("/images").headers["ETag"]

    response = client.get("/images", headers={"If-None-Match": etag})

    assert response.cache_control.public is True


# --- CORS -----------------------------------------------------------------


def test_images_cors_allowed_origin_echoed(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images", headers={"Origin": OWNER})

    assert response.headers["Access-Control-Allow-Origin"] == OWNER
    assert "Origin" in response.headers["Vary"]


def test_images_cors_other_origin_refused(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images", headers={"Origin": "https://evil.example"})

    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers["Vary"]


def test_images_cors_no_origins_configured(make_feed_app, clock, graph):
    app = make_feed_app(IMAGES_ALLOWED_ORIGINS=[])
    connect(app, clock)
    graph.posts = [raw_post(1)]

    response = app.test_client().get("/images", headers={"Origin": OWNER})

    assert "Access-Control-Allow-Origin" not in response.headers


def test_images_cors_any_origin(make_feed_app, clock, graph):
    app = make_feed_app(IMAGES_ALLOWED_ORIGINS=["*"])
    connect(app, clock)
    graph.posts = [raw_post(1)]

    response = app.test_client().get(
        "/images", headers={"Origin": "https://anyone.example"}
    )

    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_images_cors_on_errors(client, connected):
    response = client.get("/images?limit=0", headers={"Origin": OWNER})

    assert response.status_code == 400
    assert response.headers["Access-Control-Allow-Origin"] == OWNER


# --- invalid parameters ---------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter", "hint"),
    [
        ("limit=0", "limit", "1 to 100"),
        ("limit=101", "limit", "1 to 100"),
        ("limit=-1", "limit", "1 to 100"),
        ("limit=abc", "limit", "1 to 100"),
        ("limit=1.5", "limit", "1 to 100"),
        ("limit=%C2%B2", "limit", "1 to 100"),
        ("limit=" + "1" * 5000, "limit", "1 to 100"),
        ("after=garbage", "after", "paging.next"),
        ("after=%25%25%25", "after", "paging.next"),
        ("after=" + "A" * 30, "after", "paging.next"),
        ("q=" + "a" * 201, "q", "200"),
        ("type=reel", "type", "image, video and carousel_album"),
        ("type=image,reel", "type", "image, video and carousel_album"),
        ("format=xml", "format", "json or html"),
    ],
)
def test_images_invalid_parameter(client, connected, query, parameter, hint):
    connected.posts = [raw_post(1)]

    response = client.get(f"/images?{query}")
    error = response.get_json()["error"]

    assert response.status_code == 400
    assert response.mimetype == "application/json"
    assert error["code"] == "invalid_parameter"
    assert error["parameter"] == parameter
    assert hint in error["message"]
    assert connected.calls() == []


def test_images_query_of_200_characters_accepted(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images?q=" + "a" * 200)

    assert response.status_code == 200


@pytest.mark.parametrize("limit", ["1", "100", "007"])
def test_images_limit_bounds_accepted(client, connected, limit):
    connected.posts = [raw_post(n) for n in range(150)]

    body = get_json(client, f"/images?limit={limit}")

    assert len(body["data"]) == int(limit)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "limit=0",
            "Parameter limit is invalid: got '0'. Use a whole number from 1 to 100.",
        ),
        (
            "limit=" + "9" * 30,
            "Parameter limit is invalid: got '99999999999999999999'... "
            "(30 characters). Use a whole number from 1 to 100.",
        ),
        (
            "after=garbage",
            "Parameter after is invalid: got 'garbage'. Use the cursor from a "
            "previous response's paging.next.",
        ),
        (
            "after=" + "A" * 30,
            "Parameter after is invalid: got 'AAAAAAAAAAAAAAAAAAAA'... "
            "(30 characters). Use the cursor from a previous response's paging.next.",
        ),
        (
            "format=xml",
            "Parameter format is invalid: got 'xml'. Use json or html.",
        ),
        (
            "type=image,Reel",
            "Parameter type contains an invalid value: got 'Reel'. Use a "
            "comma-separated list of image, video and carousel_album.",
        ),
        (
            "q=" + "b" * 201,
            "Parameter q is too long: got 'bbbbbbbbbbbbbbbbbbbb'... "
            "(201 characters). Use at most 200 characters of search terms.",
        ),
    ],
)
def test_images_parameter_message_form(client, connected, query, message):
    connected.posts = [raw_post(1)]

    response = client.get(f"/images?{query}")

    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("value", "mimetype"),
    [("HTML", "text/html"), ("Html", "text/html"), ("JSON", "application/json")],
)
def test_images_format_case_insensitive(client, connected, value, mimetype):
    connected.posts = [raw_post(1)]

    response = client.get(f"/images?format={value}")

    assert response.status_code == 200
    assert response.mimetype == mimetype


def test_images_embed_invalid_parameter(client, connected):
    response = client.get("/images/embed?limit=abc")
    page = response.get_data(as_text=True)

    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "Parameter limit is invalid: got &#39;abc&#39;." in page
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Security-Policy"] == images_embed_policy(client)


def test_images_embed_error_page_escapes_value(client, connected):
    response = client.get("/images/embed", query_string={"type": "<b>x</b>"})
    page = response.get_data(as_text=True)

    assert response.status_code == 400
    assert "<b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]


def images_embed_policy(client: Any) -> str:
    with client.application.test_request_context():
        return images.embed_policy()


# --- errors outside the routes ----------------------------------------------


@pytest.mark.parametrize("path", ["/images", "/healthz", "/embed.js"])
def test_public_path_wrong_method_json_405(client, path):
    response = client.post(path)
    error = response.get_json()["error"]

    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert error["code"] == "method_not_allowed"
    assert f"Method POST is not allowed on '{path}'" in error["message"]
    assert "GET" in response.headers["Allow"]
    assert response.headers["Cache-Control"] == "no-store"


def test_images_embed_wrong_method_html_405(client):
    response = client.delete("/images/embed")

    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert "Method DELETE is not allowed" in response.get_data(as_text=True)
    assert "GET" in response.headers["Allow"]
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", ["/images/nothing", "/healthz/x", "/embed.js/x"])
def test_public_path_unknown_json_404(client, path):
    response = client.get(path)
    error = response.get_json()["error"]

    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert error["code"] == "not_found"
    assert f"No public route matches '{path}'" in error["message"]
    assert "/images/embed" in error["message"]
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/nothing", "/imagesx", "/admin/nothing"])
def test_other_path_unknown_keeps_html_404(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "Not Found" in response.get_data(as_text=True)


def test_admin_wrong_method_keeps_html_405(client):
    response = client.put("/admin/generate")

    assert response.status_code == 405
    assert response.mimetype == "text/html"


# --- not connected --------------------------------------------------------


def test_images_not_connected_json(client, graph):
    response = client.get("/images")
    error = response.get_json()["error"]

    assert response.status_code == 503
    assert error["code"] == "not_connected"
    assert error["message"]
    assert graph.calls() == []


@pytest.mark.parametrize("url", ["/images?format=html", "/images/embed"])
def test_images_not_connected_html_empty_grid(client, graph, url):
    response = client.get(url)
    page = response.get_data(as_text=True)

    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert 'class="ownfeed-grid"' in page
    assert "ownfeed-item" not in page
    assert "connect" not in page.lower()
    assert "error" not in page.lower()


def test_images_not_connected_no_store(client, graph):
    response = client.get("/images")

    assert response.cache_control.no_store is True


def test_images_disconnected_serves_saved_feed(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(n) for n in range(3)]
    client.get("/images")

    real_app.extensions["ownfeed"].token_store.delete("instagram")
    clock.advance(60)
    body = get_json(client, "/images")

    assert len(body["data"]) == 3
    assert body["stale"] is False
    assert len(connected.calls()) == 1


# --- upstream failures ----------------------------------------------------

GRAPH_ERROR_190 = {
    "error": {
        "message": "Error validating access token: The session has been invalidated.",
        "type": "OAuthException",
        "code": 190,
        "error_subcode": 460,
        "fbtrace_id": "AbCdEf",
    }
}
GRAPH_ERROR_4 = {
    "error": {
        "message": "Application request limit reached",
        "type": "OAuthException",
        "code": 4,
        "fbtrace_id": "AbCdEf",
    }
}
FAILURES = {
    "http_500": ({"status_code": 500, "text": "Internal Server Error"}, "upstream"),
    "timeout": ({"exc": requests.ConnectTimeout}, "upstream"),
    "connection": ({"exc": requests.ConnectionError}, "upstream"),
    "invalid_json": ({"status_code": 200, "text": '{"data": [{"id": '}, "upstream"),
    "wrong_shape": ({"status_code": 200, "json": {"data": "none"}}, "upstream"),
    "code_190": ({"status_code": 400, "json": GRAPH_ERROR_190}, "reauth"),
    "code_4": ({"status_code": 400, "json": GRAPH_ERROR_4}, "rate"),
}
SAVED_CODES = {
    "upstream": "upstream_unavailable",
    "reauth": "reauthorization_required",
    "rate": "rate_limited",
}
PUBLIC_CODES = {
    "upstream": "upstream_unavailable",
    "reauth": "reauthorization_required",
    "rate": "upstream_unavailable",
}


@pytest.mark.parametrize("failure", FAILURES)
def test_images_failure_serves_stale_feed(real_app, connected, clock, failure):
    response_options, kind = FAILURES[failure]
    client = real_app.test_client()
    connected.posts = [raw_post(n) for n in range(3)]
    fetched_at = get_json(client, "/images")["fetched_at"]

    connected.fail(**response_options)
    expire_feed(real_app, clock)
    body = get_json(client, "/images")
    snapshot = feed_snapshot(real_app)

    assert [item["id"] for item in body["data"]] == [post_id(n) for n in range(3)]
    assert body["stale"] is True
    assert body["fetched_at"] == fetched_at
    assert snapshot.last_error["code"] == SAVED_CODES[kind]
    assert snapshot.last_error["at"] == to_iso(clock())
    assert ACCESS_TOKEN not in snapshot.last_error["message"]


def test_images_failure_not_stale_within_ttl(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(1)]
    client.get("/images")

    connected.fail(status_code=500, text="Internal Server Error")
    clock.advance(TTL - 10)
    body = get_json(client, "/images")

    assert body["stale"] is False


def test_images_code_190_marks_token(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(1)]
    client.get("/images")

    connected.fail(status_code=400, json=GRAPH_ERROR_190)
    expire_feed(real_app, clock)
    calls = len(connected.calls())
    clock.advance(TTL * 4)
    body = get_json(client, "/images")
    record = real_app.extensions["ownfeed"].token_store.get("instagram")

    assert record["status"] == "reauthorization_required"
    assert record["last_error"]["code"] == "190/460"
    assert record["access_token"] == ACCESS_TOKEN
    assert body["stale"] is True
    assert len(connected.calls()) == calls


def test_images_rate_limit_waits_for_retry_after(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(1)]
    client.get("/images")

    connected.fail(status_code=400, json=GRAPH_ERROR_4, headers={"Retry-After": "600"})
    expire_feed(real_app, clock)
    calls_after_failure = len(connected.calls())
    clock.advance(599)
    client.get("/images")
    settle(real_app)
    calls_before_retry_at = len(connected.calls())
    clock.advance(2)
    client.get("/images")
    settle(real_app)

    assert calls_after_failure == 2
    assert calls_before_retry_at == 2
    assert len(connected.calls()) == 3


def test_images_rate_limit_default_wait(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(1)]
    client.get("/images")

    connected.fail(status_code=400, json=GRAPH_ERROR_4)
    expire_feed(real_app, clock)
    snapshot = feed_snapshot(real_app)

    assert snapshot.retry_at - snapshot.failed_at == timedelta(seconds=900)


def test_images_failure_recovers(real_app, connected, clock):
    client = real_app.test_client()
    connected.posts = [raw_post(1)]
    client.get("/images")
    connected.fail(status_code=500, text="Internal Server Error")
    expire_feed(real_app, clock)

    connected.posts = [raw_post(0), raw_post(1)]
    connected.serve()
    clock.advance(61)
    client.get("/images")
    settle(real_app)
    body = get_json(client, "/images")

    assert body["stale"] is False
    assert [item["id"] for item in body["data"]] == [post_id(0), post_id(1)]
    assert feed_snapshot(real_app).last_error is None


@pytest.mark.parametrize("failure", FAILURES)
def test_images_failure_unsaved_503(client, connected, failure):
    response_options, kind = FAILURES[failure]
    connected.fail(**response_options)

    response = client.get("/images")
    error = response.get_json()["error"]

    assert response.status_code == 503
    assert error["code"] == PUBLIC_CODES[kind]
    assert error["message"]
    assert ACCESS_TOKEN not in response.get_data(as_text=True)


def test_images_rate_limit_unsaved_retry_after(client, connected):
    connected.fail(status_code=400, json=GRAPH_ERROR_4, headers={"Retry-After": "600"})

    response = client.get("/images")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "600"


def test_images_failure_unsaved_html(client, connected):
    connected.fail(status_code=500, text="Internal Server Error")

    response = client.get("/images?format=html")
    page = response.get_data(as_text=True)

    assert response.status_code == 503
    assert "ownfeed-item" not in page
    assert "Instagram" not in page


def test_images_code_190_unsaved_no_retry(client, connected, clock):
    connected.fail(status_code=400, json=GRAPH_ERROR_190)
    client.get("/images")

    clock.advance(TTL * 4)
    response = client.get("/images")

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "reauthorization_required"
    assert len(connected.calls()) == 1


def test_images_failure_unsaved_backs_off(client, connected, clock):
    connected.fail(status_code=500, text="Internal Server Error")
    client.get("/images")

    clock.advance(30)
    response = client.get("/images")

    assert response.status_code == 503
    assert len(connected.calls()) == 1


# --- HTML -----------------------------------------------------------------


@pytest.mark.parametrize("url", ["/images?format=html", "/images/embed"])
def test_images_html_escapes_captions(client, connected, url):
    connected.posts = [
        raw_post(1, caption=SCRIPT_CAPTION),
        raw_post(2, caption=ATTRIBUTE_CAPTION),
    ]

    page = client.get(url).get_data(as_text=True)

    assert SCRIPT_CAPTION not in page
    assert ATTRIBUTE_CAPTION not in page
    assert "<script" not in page
    assert "onerror=alert(1)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_images_html_alt_first_line(client, connected):
    connected.posts = [
        raw_post(1, caption="Harbour at dawn\nSecond line #sea"),
        video_post(2, caption="  \n"),
    ]

    tags = image_tags(client.get("/images?format=html").get_data(as_text=True))

    assert [tag["alt"] for tag in tags] == [
        "Harbour at dawn",
        "Instagram video from 2026-11-29",
    ]


def test_images_html_images_lazy_with_size(client, connected):
    connected.posts = [raw_post(1), video_post(2), album_post(3)]

    tags = image_tags(client.get("/images?format=html").get_data(as_text=True))

    assert len(tags) == 3
    for tag in tags:
        assert tag["loading"] == "lazy"
        assert (tag["width"] or "").isdigit()
        assert (tag["height"] or "").isdigit()


def test_images_html_uses_stills_never_video(client, connected):
    connected.posts = [raw_post(1), video_post(2), album_post(3)]

    tags = image_tags(client.get("/images?format=html").get_data(as_text=True))

    assert [tag["src"] for tag in tags] == [
        "https://cdn.instagram.test/1.jpg?oe=7FFFFFFF",
        "https://cdn.instagram.test/2-cover.jpg",
        "https://cdn.instagram.test/3-0-cover.jpg",
    ]


def test_images_html_without_still_has_no_img(client, connected):
    record = raw_post(1)
    del record["media_url"]
    connected.posts = [record]

    page = client.get("/images?format=html").get_data(as_text=True)

    assert image_tags(page) == []
    assert "ownfeed-item" in page


def test_images_html_more_link(client, connected):
    connected.posts = [raw_post(n) for n in range(5)]

    page = client.get("/images?format=html&limit=2").get_data(as_text=True)

    assert 'class="ownfeed-more" href="http://localhost/images?' in page
    assert "format=html" in page


@pytest.mark.parametrize(
    ("accept", "mimetype"),
    [
        ("text/html", "text/html"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "text/html"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        (None, "application/json"),
    ],
)
def test_images_format_from_accept(client, connected, accept, mimetype):
    connected.posts = [raw_post(1)]
    headers = {"Accept": accept} if accept else {}

    response = client.get("/images", headers=headers)

    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert "Accept" in response.headers["Vary"]


def test_images_format_parameter_beats_accept(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images?format=json", headers={"Accept": "text/html"})

    assert response.mimetype == "application/json"


# --- the embed page -------------------------------------------------------


def test_embed_whole_page(client, connected):
    connected.posts = [raw_post(1)]

    response = client.get("/images/embed")
    page = response.get_data(as_text=True)

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert page.lower().startswith("<!doctype html>")
    assert len(image_tags(page)) == 1


@pytest.mark.parametrize(
    ("origins", "ancestors"),
    [
        ([], "frame-ancestors 'self'"),
        ([OWNER], f"frame-ancestors 'self' {OWNER}"),
        (
            [OWNER, "https://blog.example"],
            f"frame-ancestors 'self' {OWNER} https://blog.example",
        ),
        (["*"], "frame-ancestors *"),
    ],
)
def test_embed_csp_frame_ancestors(make_feed_app, clock, graph, origins, ancestors):
    app = make_feed_app(IMAGES_ALLOWED_ORIGINS=origins)
    connect(app, clock)
    graph.posts = [raw_post(1)]

    response = app.test_client().get("/images/embed")
    policy = response.headers["Content-Security-Policy"]
    directives = {part.split()[0]: part.strip() for part in policy.split(";")}

    assert directives["frame-ancestors"] == ancestors


def test_embed_csp_blocks_scripts(client, connected):
    connected.posts = [raw_post(1)]

    policy = client.get("/images/embed").headers["Content-Security-Policy"]

    assert "default-src 'none'" in policy
    assert "script-src" not in policy


def test_embed_csp_on_503(client, graph):
    response = client.get("/images/embed")

    assert response.status_code == 503
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]


def _snapshot_of(posts: list[dict]) -> Snapshot:
    return Snapshot(
        posts=posts,
        account={"username": "owner.handle"},
        fetched_at=datetime(2026, 12, 1, 8, 0, tzinfo=UTC),
        last_error=None,
        failed_at=None,
        retry_at=None,
        failures=0,
        version="v1",
    )


def test_json_body_matches_document():
    posts = [
        {"id": "1", "caption": 'Café «quoted» "and" \\ 東京 🌅', "children": []},
        {"id": "2", "caption": None, "children": [{"id": "3"}]},
    ]
    snapshot = _snapshot_of(posts)
    rewritten: list[str] = []

    def rewrite(post: dict) -> dict:
        rewritten.append(post["id"])
        return dict(post, sizes={})

    first, first_etag = images.json_feed_body(
        snapshot, [0, 1], "https://x.test/images?after=a", True, rewrite, ("v",)
    )
    second, second_etag = images.json_feed_body(
        snapshot, [1, 0], None, False, rewrite, ("v",), {"query": "q"}
    )

    expected = {
        "data": [dict(post, sizes={}) for post in posts],
        "paging": {"next": "https://x.test/images?after=a"},
        "account": {"username": "owner.handle"},
        "fetched_at": "2026-12-01T08:00:00+00:00",
        "stale": True,
    }
    whole = json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    assert first == whole
    assert json.loads(second) == dict(
        expected,
        data=expected["data"][::-1],
        paging={"next": None},
        stale=False,
        query="q",
    )
    assert rewritten == ["1", "2"]
    assert first_etag != second_etag


def test_json_feed_body_etag_follows_body():
    posts = [{"id": "1", "caption": "a"}, {"id": "2", "caption": "b"}]

    def body_and_etag(page: list[int], stale: bool, version: str = "v1") -> tuple:
        snapshot = _snapshot_of(posts)
        snapshot.version = version
        return images.json_feed_body(snapshot, page, None, stale, dict, ("v",))

    same = [body_and_etag([0, 1], False), body_and_etag([0, 1], False, "v2")]
    others = [
        body_and_etag([0], False),
        body_and_etag([1, 0], False),
        body_and_etag([0, 1], True),
    ]

    assert same[0] == same[1]
    etags = {same[0][1]} | {etag for _, etag in others}
    assert len(etags) == 4
    assert len(same[0][1]) == 32


# --- rendered cache -------------------------------------------------------


def _rendered(body: bytes) -> images.Rendered:
    return images.Rendered("v1", False, "json", body, "etag", None)


def test_rendered_cache_keeps_second_miss():
    cache = images.RenderedCache(4)

    cache.put(("a",), _rendered(b"first"))
    after_one = cache.get(("a",))
    cache.put(("a",), _rendered(b"second"))
    after_two = cache.get(("a",))

    assert after_one is None
    assert after_two is not None
    assert after_two.body == b"second"


def test_rendered_cache_replaces_kept_entry():
    cache = images.RenderedCache(4)
    cache.put(("a",), _rendered(b"one"))
    cache.put(("a",), _rendered(b"two"))

    cache.put(("a",), _rendered(b"three"))

    assert cache.get(("a",)).body == b"three"


def test_rendered_cache_bounds_single_misses():
    cache = images.RenderedCache(4)
    for number in range(10):
        cache.put((number,), _rendered(b"once"))

    cache.put((0,), _rendered(b"again"))

    assert list(cache.missed_once) == [(7,), (8,), (9,), (0,)]
    assert cache.get((0,)) is None
    assert len(cache.entries) == 0


def test_rendered_cache_survives_one_off_searches(client, connected, monkeypatch):
    connected.posts = [raw_post(n) for n in range(30)]
    client.get("/images")
    client.get("/images")
    renders: list[list[int]] = []
    real_body = images.json_feed_body

    def counting_body(snapshot, page, *args, **kwargs):
        renders.append(page)
        return real_body(snapshot, page, *args, **kwargs)

    monkeypatch.setattr(images, "json_feed_body", counting_body)
    for number in range(images.RENDERED_CACHE_SIZE + 10):
        assert client.get(f"/images?q=number+{number}").status_code == 200
    searched = len(renders)
    again = client.get("/images")

    assert searched == images.RENDERED_CACHE_SIZE + 10
    assert again.status_code == 200
    assert len(renders) == searched
