"""Route tests for `/media`: downloading, checking, resizing, renewing and evicting.

Images are real files made with Pillow. The Graph API and the CDN are served in
process by requests_mock, except in the concurrency test, where a slow image server
on 127.0.0.1 counts the downloads.
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests_mock as requests_mock_module
from flask.testing import FlaskClient
from PIL import Image

import images
import media
import media_sources
from feed import Fetched
from posts import normalize_posts
from timeutil import to_iso

GRAPH_URL = "https://graph.instagram.test"
API_URL = f"{GRAPH_URL}/v25.0"
CDN_URL = "https://cdn.instagram.test"
ACCESS_TOKEN = "IGAA-media-token-never-shown"
WIDTHS = (150, 320, 640, 1080)
TTL = 1800
FIRST_MOMENT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# The `oe` value of links that expire long after every test's clock.
FAR_EXPIRY = "7FFFFFFF"
EXPIRED_TEXT = "URL signature expired"
RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


class Clock:
    """A settable clock for the app, starting at a fixed moment."""

    def __init__(self) -> None:
        self.moment = FIRST_MOMENT

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


# --- images ---------------------------------------------------------------


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    output = io.BytesIO()
    image.save(output, image_format, **options)
    return output.getvalue()


def halves(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Return an image red on its left half and blue on its right half."""
    width, height = size
    image = Image.new(mode, size, BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def jpeg(size: tuple[int, int] = (1200, 900)) -> bytes:
    return encode(halves(size), "JPEG", quality=90)


def noise_png(side: int, seed: int) -> bytes:
    """Return a PNG of random pixels, which compresses to about 3 bytes a pixel."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    return encode(Image.frombytes("RGB", (side, side), pixels), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """Return a PNG that claims `width` x `height` pixels but contains one row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\x00" * width)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def decode(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as image:
        image.load()
        decoded = image.copy()
        decoded.format = image.format
        return decoded


def is_colour(pixel: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    """Tell whether a decoded JPEG pixel is `expected`, allowing for compression."""
    return all(abs(got - want) <= 24 for got, want in zip(pixel, expected, strict=True))


# --- a fake Instagram: the Graph API and the CDN --------------------------


def post_id(number: int) -> str:
    return str(17_900_000_000_000_000 + number)


def child_id(number: int, index: int) -> str:
    return f"1{index + 8}{number:017d}"


def cdn_url(name: str, expiry: str = FAR_EXPIRY, signature: str = "a1") -> str:
    return f"{CDN_URL}/{name}?oe={expiry}&oh={signature}"


def raw_post(number: int, **fields: Any) -> dict[str, Any]:
    """Return an Instagram media record. A higher `number` is an older post."""
    moment = datetime(2026, 11, 30, tzinfo=UTC) - timedelta(hours=number)
    record = {
        "id": post_id(number),
        "media_type": "IMAGE",
        "caption": f"Post number {number}",
        "media_url": cdn_url(f"{number}.jpg"),
        "permalink": f"https://www.instagram.com/p/P{number}/",
        "timestamp": moment.strftime("%Y-%m-%dT%H:%M:%S+0000"),
        "username": "owner.handle",
    }
    record.update(fields)
    return record


def video_post(number: int) -> dict[str, Any]:
    return raw_post(
        number,
        media_type="VIDEO",
        media_url=cdn_url(f"{number}.mp4"),
        thumbnail_url=cdn_url(f"{number}-cover.jpg"),
    )


def album_post(number: int) -> dict[str, Any]:
    """Return an album of a video (with its cover) and an image."""
    children = [
        {
            "id": child_id(number, 0),
            "media_type": "VIDEO",
            "media_url": cdn_url(f"{number}-0.mp4"),
            "thumbnail_url": cdn_url(f"{number}-0-cover.jpg"),
        },
        {
            "id": child_id(number, 1),
            "media_type": "IMAGE",
            "media_url": cdn_url(f"{number}-1.jpg"),
        },
    ]
    return raw_post(
        number,
        media_type="CAROUSEL_ALBUM",
        media_url=children[0]["media_url"],
        children={"data": children},
    )


def bare_post(number: int) -> dict[str, Any]:
    """Return an image post whose media_url Instagram withheld."""
    record = raw_post(number)
    del record["media_url"]
    return record


class FakeInstagram:
    """The Graph API's `/me/media` and `/{media-id}`, and the CDN, for requests_mock.

    `posts` are the raw records the API returns. `files` maps a CDN URL to the
    requests_mock keywords of its response. Other CDN URLs return 404.
    """

    def __init__(self, mocker: requests_mock_module.Mocker) -> None:
        self.mocker = mocker
        self.posts: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, Any]] = {}
        # The Graph error `/{media-id}` returns for ids not in `posts`.
        self.missing_error = {
            "message": "Unsupported get request. Object with ID does not exist, "
            "cannot be loaded due to missing permissions, or does not support "
            "this operation.",
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": "AbCdEfGhIjKlMnOpQrStUvW",
        }
        mocker.get(f"{API_URL}/me/media", json=self._page)
        mocker.get(re.compile(rf"^{re.escape(API_URL)}/[0-9]+(\?|$)"), json=self._one)
        mocker.get(re.compile(rf"^{re.escape(CDN_URL)}/"), content=self._file)

    def serve(self, url: str, body: bytes, content_type: str = "image/jpeg") -> None:
        """Serve `body` at the CDN URL `url`."""
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self.files[url] = {"content": body, "headers": headers}

    def expire(self, url: str) -> None:
        """Make the CDN return 403 for `url`, as for a link past its `oe` time."""
        self.files[url] = {
            "status_code": 403,
            "content": EXPIRED_TEXT.encode(),
            "headers": {"Content-Type": "text/plain"},
        }

    def _page(self, request: Any, context: Any) -> dict[str, Any]:
        return {"data": self.posts, "paging": {"cursors": {"after": "QVFI"}}}

    def _one(self, request: Any, context: Any) -> dict[str, Any]:
        requested_id = urlsplit(request.url).path.rsplit("/", 1)[-1]
        for record in self.posts:
            if record["id"] == requested_id:
                return record
        context.status_code = 400
        return {"error": self.missing_error}

    def _file(self, request: Any, context: Any) -> bytes:
        response = self.files.get(request.url)
        if response is None:
            context.status_code = 404
            return b"Not Found"
        context.status_code = response.get("status_code", 200)
        context.headers.update(response.get("headers", {}))
        return response["content"]

    def media_calls(self) -> list[Any]:
        """Return the Graph API requests for one media object (renewals)."""
        return [
            request
            for request in self.mocker.request_history
            if request.url.startswith(API_URL)
            and not urlsplit(request.url).path.endswith("/me/media")
        ]

    def feed_calls(self) -> list[Any]:
        return [
            request
            for request in self.mocker.request_history
            if urlsplit(request.url).path.endswith("/me/media")
        ]

    def cdn_calls(self, url: str | None = None) -> list[Any]:
        return [
            request
            for request in self.mocker.request_history
            if request.url.startswith(CDN_URL) and (url is None or request.url == url)
        ]


# --- fixtures and helpers -------------------------------------------------


class BufferedClient(FlaskClient):
    """A test client that reads every body and closes it, so no file stays open."""

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> Any:
        return super().open(*args, buffered=buffered, **kwargs)


@pytest.fixture(autouse=True)
def forget_renewals(monkeypatch) -> None:
    """Start every test with no recent link renewal, whatever the order of tests."""
    monkeypatch.setattr(media_sources, "_last_heal", {})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_media_app(make_app, clock):
    """Return a factory of apps for a real Instagram app at test endpoints."""

    def factory(**overrides: Any):
        config = {
            "OWNFEED_SANDBOX": False,
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": "app-secret-never-shown",
            "INSTAGRAM_REDIRECT_URI": "https://owner.example/admin/callback/instagram",
            "INSTAGRAM_AUTHORIZE_URL": "https://www.instagram.test/oauth/authorize",
            "INSTAGRAM_TOKEN_URL": "https://api.instagram.test/oauth/access_token",
            "INSTAGRAM_GRAPH_URL": GRAPH_URL,
            "ADMIN_PASSWORD": "media test password",
            "FEED_CACHE_SECONDS": TTL,
            "CLOCK": clock,
            "MEDIA_PROXY": True,
            "MEDIA_WIDTHS": WIDTHS,
        }
        config.update(overrides)
        created = make_app(**config)
        created.test_client_class = BufferedClient
        return created

    return factory


@pytest.fixture
def app(make_media_app, clock):
    """The real-mode app with a stored token, MEDIA_PROXY on."""
    created = make_media_app()
    connect(created, clock)
    return created


@pytest.fixture
def instagram(requests_mock) -> FakeInstagram:
    return FakeInstagram(requests_mock)


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


def publish(
    client: Any, instagram: FakeInstagram, records: list[dict[str, Any]]
) -> None:
    """Give the fake API `records` and let one `/images` request keep them."""
    instagram.posts = records
    response = client.get("/images?format=json")
    assert response.status_code == 200, response.get_data(as_text=True)


def seed_feed(app: Any, records: list[dict[str, Any]]) -> None:
    """Save `records` as the kept feed without any HTTP call."""
    with app.app_context():
        fetched = Fetched(normalize_posts(records), {"username": "owner.handle"})
        images.instagram_feed().refresh_now(lambda: fetched)


def media_folder(app: Any) -> Path:
    return Path(app.instance_path) / "media"


def kept_files(app: Any) -> list[str]:
    """Return every file under instance/media except lock files, temporary included."""
    folder = media_folder(app)
    if not folder.exists():
        return []
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.suffix != ".lock"
    )


def feed_text(app: Any) -> str:
    return (Path(app.instance_path) / "feed-instagram.json").read_text("utf-8")


def media_path(number: int, width: int, index: int | None = None) -> str:
    if index is None:
        return f"/media/{post_id(number)}/{width}.jpg"
    return f"/media/{post_id(number)}/{child_id(number, index)}/{width}.jpg"


def get_image(client: Any, path: str, **headers: str) -> Image.Image:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "image/jpeg"
    return decode(response.data)


# --- resizing -------------------------------------------------------------


SOURCES = {
    "jpeg": ("image/jpeg", lambda: encode(halves((1200, 900)), "JPEG", quality=90)),
    "png": ("image/png", lambda: encode(halves((1200, 900), "RGBA"), "PNG")),
    "webp": ("image/webp", lambda: encode(halves((1200, 900)), "WEBP", quality=90)),
}


@pytest.mark.parametrize("source_format", sorted(SOURCES))
def test_media_resizes_to_each_width(client, instagram, source_format):
    content_type, make = SOURCES[source_format]
    instagram.serve(cdn_url("1.jpg"), make(), content_type)
    publish(client, instagram, [raw_post(1)])

    for width in WIDTHS:
        image = get_image(client, media_path(1, width))
        assert image.format == "JPEG"
        assert image.width == width
        assert image.height == round(900 * width / 1200)
        assert is_colour(image.getpixel((2, 2)), RED)
        assert is_colour(image.getpixel((width - 3, 2)), BLUE)


def test_media_keeps_one_download_for_all_widths(app, client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])

    for width in WIDTHS:
        get_image(client, media_path(1, width))

    assert len(instagram.cdn_calls()) == 1
    assert kept_files(app) == sorted(
        [f"{post_id(1)}/post/{width}.jpg" for width in WIDTHS]
        + [f"{post_id(1)}/post/source"]
    )


def test_media_paths_kept_between_requests(app):
    folder = Path(app.instance_path) / "media" / post_id(1)

    first = media._image_paths(app.instance_path, post_id(1), None, 320)
    again = media._image_paths(app.instance_path, post_id(1), None, 320)
    child = media._image_paths(app.instance_path, post_id(1), "7", 640)

    assert first == (folder / "post", folder / "post" / "320.jpg")
    assert child == (folder / "7", folder / "7" / "640.jpg")
    assert again[1] is first[1]


def test_media_never_enlarges(client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg((200, 100)))
    publish(client, instagram, [raw_post(1)])

    large = get_image(client, media_path(1, 640))
    small = get_image(client, media_path(1, 150))

    assert large.size == (200, 100)
    assert small.size == (150, 75)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_media_transparency_flattened_on_white(client, instagram, mode):
    image = Image.new("RGBA", (400, 200), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (200, 0, 400, 200))
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        image.info["transparency"] = image.getpixel((0, 0))
    instagram.serve(cdn_url("1.jpg"), encode(image, "PNG"), "image/png")
    publish(client, instagram, [raw_post(1)])

    flat = get_image(client, media_path(1, 320))

    assert flat.mode == "RGB"
    assert is_colour(flat.getpixel((10, 10)), WHITE)
    if mode != "LA":
        assert is_colour(flat.getpixel((310, 10)), RED)


def test_media_exif_orientation_upright(client, instagram):
    # Stored 400x200 with a red top-left quadrant. Orientation 6 means "turn 90
    # degrees clockwise to show", which moves that quadrant to the top right.
    stored = Image.new("RGB", (400, 200), BLUE)
    stored.paste(RED, (0, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    instagram.serve(cdn_url("1.jpg"), encode(stored, "JPEG", exif=exif.tobytes()))
    publish(client, instagram, [raw_post(1)])

    upright = get_image(client, media_path(1, 150))
    full = get_image(client, media_path(1, 1080))

    assert upright.size == (150, 300)
    assert is_colour(upright.getpixel((145, 5)), RED)
    assert is_colour(upright.getpixel((5, 5)), BLUE)
    assert is_colour(upright.getpixel((145, 295)), BLUE)
    assert full.size == (200, 400)
    assert upright.getexif().get(0x0112) in (None, 1)


def test_media_album_child_and_video_cover(client, instagram):
    instagram.serve(cdn_url("2-cover.jpg"), jpeg((300, 600)))
    instagram.serve(cdn_url("3-0-cover.jpg"), jpeg((500, 500)))
    instagram.serve(cdn_url("3-1.jpg"), jpeg((800, 400)))
    publish(client, instagram, [video_post(2), album_post(3)])

    cover = get_image(client, media_path(2, 150))
    album = get_image(client, media_path(3, 150))
    first = get_image(client, media_path(3, 150, index=0))
    second = get_image(client, media_path(3, 150, index=1))

    assert cover.size == (150, 300)
    assert album.size == (150, 150)
    assert first.size == (150, 150)
    assert second.size == (150, 75)


# --- downloads that are rejected ------------------------------------------


def assert_rejected(app: Any, response: Any, words: str) -> None:
    assert response.status_code == 502
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "upstream_unavailable"
    assert words in response.get_json()["error"]["message"]
    assert response.headers["Cache-Control"] == "no-store"
    assert kept_files(app) == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (jpeg()[:5000], "could not be decoded"),
        (jpeg()[:200], "could not be decoded"),
        (random.Random(7).randbytes(5000), "not a JPEG, PNG or WebP image"),
        (b"", "not a JPEG, PNG or WebP image"),
    ],
    ids=["truncated", "header-only", "random-bytes", "empty"],
)
def test_media_corrupt_image_rejected(app, client, instagram, body, words):
    instagram.serve(cdn_url("1.jpg"), body)
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, words)
    assert "BytesIO" not in response.get_data(as_text=True)


def test_media_corrupt_image_retried_later(app, client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg()[:5000])
    publish(client, instagram, [raw_post(1)])
    client.get(media_path(1, 320))
    instagram.serve(cdn_url("1.jpg"), jpeg())

    image = get_image(client, media_path(1, 320))

    assert image.size == (320, 240)


def test_media_gif_rejected(app, client, instagram):
    gif = encode(halves((100, 100)), "GIF")
    instagram.serve(cdn_url("1.jpg"), gif, "image/gif")
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, "The image format GIF is not accepted")


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ((8000, 8000), "8000x8000, too large"),
        ((10000, 10000), "too large"),
        ((20000, 20000), "too large"),
    ],
    ids=["over-limit", "pillow-warning", "decompression-bomb"],
)
def test_media_too_many_pixels_rejected(app, client, instagram, size, words):
    instagram.serve(cdn_url("1.jpg"), png_header_only(*size), "image/png")
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, words)


def test_media_content_length_over_limit(app, client, instagram):
    # The declared length is checked before any of the body is read.
    instagram.files[cdn_url("1.jpg")] = {
        "content": jpeg(),
        "headers": {
            "Content-Type": "image/jpeg",
            "Content-Length": str(media.MAX_DOWNLOAD_BYTES + 1),
        },
    }
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, f"over the {media.MAX_DOWNLOAD_BYTES} limit")


def test_media_chunked_body_over_limit(app, client, instagram, monkeypatch):
    monkeypatch.setattr(media, "MAX_DOWNLOAD_BYTES", 100_000)
    body = noise_png(200, seed=1)
    assert len(body) > 100_000
    # A body stream with no Content-Length, as with chunked transfer encoding.
    instagram.files[cdn_url("1.jpg")] = {
        "content": body,
        "headers": {"Content-Type": "image/png"},
    }
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, "over the 100000 byte limit")


def test_media_download_limit_argument(requests_mock):
    requests_mock.get(
        cdn_url("1.jpg"), content=jpeg(), headers={"Content-Type": "image/jpeg"}
    )

    with pytest.raises(media.MediaError, match="over the 1000 byte limit"):
        media.download_image(cdn_url("1.jpg"), max_bytes=1000)


def test_media_html_content_type_rejected(app, client, instagram):
    page = b"<!doctype html><title>Log in</title>"
    instagram.serve(cdn_url("1.jpg"), page, "text/html; charset=utf-8")
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, "text/html")


def test_media_cdn_error_rejected(app, client, instagram):
    instagram.files[cdn_url("1.jpg")] = {"status_code": 500, "content": b"oops"}
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    assert_rejected(app, response, "The CDN returned HTTP 500")


def test_media_non_http_url_never_requested(app, client, instagram):
    publish(client, instagram, [raw_post(1, media_url="file:///etc/passwd")])

    response = client.get(media_path(1, 320))

    assert response.status_code == 404
    assert kept_files(app) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://cdn.test/1.jpg", ""])
def test_media_download_non_http_url(requests_mock, url):
    with pytest.raises(media.MediaError, match="not http"):
        media.download_image(url)

    assert requests_mock.request_history == []


# --- renewing expired links -----------------------------------------------


def test_media_expired_link_renewed(app, client, instagram):
    old_url = cdn_url("1.jpg", expiry="6930B2A0", signature="old")
    new_url = cdn_url("1.jpg", expiry="6942D7A0", signature="new")
    publish(client, instagram, [raw_post(1, media_url=old_url)])
    instagram.expire(old_url)
    instagram.posts = [raw_post(1, media_url=new_url)]
    instagram.serve(new_url, jpeg())

    image = get_image(client, media_path(1, 320))
    get_image(client, media_path(1, 640))

    assert image.size == (320, 240)
    assert len(instagram.media_calls()) == 1
    assert len(instagram.feed_calls()) == 1
    assert len(instagram.cdn_calls(old_url)) == 1
    assert len(instagram.cdn_calls(new_url)) == 1
    assert new_url in feed_text(app)
    assert old_url not in feed_text(app)


def test_media_renewal_sends_token_to_graph_only(app, client, instagram):
    old_url = cdn_url("1.jpg", signature="old")
    new_url = cdn_url("1.jpg", signature="new")
    publish(client, instagram, [raw_post(1, media_url=old_url)])
    instagram.expire(old_url)
    instagram.posts = [raw_post(1, media_url=new_url)]
    instagram.serve(new_url, jpeg())

    client.get(media_path(1, 320))

    renewal = instagram.media_calls()[0]
    assert urlsplit(renewal.url).path == f"/v25.0/{post_id(1)}"
    assert parse_qs(urlsplit(renewal.url).query)["access_token"] == [ACCESS_TOKEN]
    assert all(ACCESS_TOKEN not in call.url for call in instagram.cdn_calls())


def test_media_expired_child_link_renewed(app, client, instagram):
    record = album_post(3)
    publish(client, instagram, [record])
    instagram.expire(cdn_url("3-1.jpg"))
    renewed = album_post(3)
    renewed["children"]["data"][1]["media_url"] = cdn_url("3-1.jpg", signature="new")
    instagram.posts = [renewed]
    instagram.serve(cdn_url("3-1.jpg", signature="new"), jpeg((800, 400)))

    image = get_image(client, media_path(3, 320, index=1))

    assert image.size == (320, 160)
    assert len(instagram.media_calls()) == 1
    assert cdn_url("3-1.jpg", signature="new") in feed_text(app)


def test_media_album_renewed_once(app, client, instagram):
    publish(client, instagram, [album_post(3)])
    renewed = album_post(3)
    for child in renewed["children"]["data"]:
        child["thumbnail_url"] = child["media_url"] = cdn_url("3.jpg", signature="new")
    instagram.posts = [renewed]
    instagram.serve(cdn_url("3.jpg", signature="new"), jpeg((600, 600)))

    first = get_image(client, media_path(3, 320, index=0))
    second = get_image(client, media_path(3, 320, index=1))

    assert first.size == (320, 320)
    assert second.size == (320, 320)
    assert len(instagram.media_calls()) == 1


def test_media_deleted_post_removed(app, client, instagram):
    publish(client, instagram, [raw_post(1), raw_post(2)])
    instagram.posts = [raw_post(2)]

    response = client.get(media_path(1, 320))
    again = client.get(media_path(1, 150))
    listed = client.get("/images?format=json").get_json()["data"]

    assert response.status_code == 404
    assert again.status_code == 404
    assert len(instagram.media_calls()) == 1
    assert post_id(1) not in feed_text(app)
    assert post_id(2) in feed_text(app)
    assert [item["id"] for item in listed] == [post_id(2)]
    assert kept_files(app) == []


def test_media_deleted_post_files_not_served(app, client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1), raw_post(2)])
    get_image(client, media_path(1, 320))

    instagram.posts = [raw_post(2)]
    with app.app_context():
        images.instagram_feed().remove_post(post_id(1))

    assert client.get(media_path(1, 320)).status_code == 404


def test_media_invalid_parameter_keeps_post(app, client, instagram):
    # Code 100 without subcode 33 means a malformed request, such as a bad
    # `fields` value, not a missing post, so the post must stay in the feed.
    publish(client, instagram, [raw_post(1)])
    instagram.expire(cdn_url("1.jpg"))
    instagram.posts = []
    instagram.missing_error = {
        "message": "Tried accessing nonexisting field (colour)",
        "type": "OAuthException",
        "code": 100,
        "fbtrace_id": "AbCdEfGhIjKlMnOpQrStUvW",
    }

    response = client.get(media_path(1, 320))

    assert response.status_code == 502
    assert post_id(1) in feed_text(app)


def test_media_renewal_at_most_once(app, client, instagram):
    # A link that still fails after renewal must not turn visits into API calls.
    publish(client, instagram, [raw_post(1)])
    instagram.expire(cdn_url("1.jpg"))

    first = client.get(media_path(1, 320))
    second = client.get(media_path(1, 320))
    third = client.get(media_path(1, 150))

    assert first.status_code == 502
    assert second.status_code == 502
    assert third.status_code == 502
    assert len(instagram.media_calls()) == 1


def test_media_renewal_without_token(make_media_app, instagram):
    app = make_media_app()
    seed_feed(app, [raw_post(1)])
    instagram.expire(cdn_url("1.jpg"))

    response = app.test_client().get(media_path(1, 320))

    assert response.status_code == 502
    assert "The CDN returned HTTP 403" in response.get_data(as_text=True)
    assert "No Instagram account is connected" in response.get_data(as_text=True)
    assert instagram.media_calls() == []


# --- the disk limit -------------------------------------------------------


def test_media_evicts_least_recently_used(make_media_app, clock, instagram):
    # Each post keeps a source of about 390 KB and a small sized copy, so three
    # posts pass the 1 MB limit and two fit under it.
    app = make_media_app(MEDIA_CACHE_MAX_MB=1, MEDIA_WIDTHS=(64,))
    connect(app, clock)
    client = app.test_client()
    for number in (1, 2, 3):
        instagram.serve(cdn_url(f"{number}.jpg"), noise_png(360, number), "image/png")
    publish(client, instagram, [raw_post(1), raw_post(2), raw_post(3)])
    get_image(client, media_path(1, 64))
    get_image(client, media_path(2, 64))
    folder = media_folder(app)
    first, second = folder / post_id(1) / "post", folder / post_id(2) / "post"
    # Post 2's files were used before post 1's, long ago.
    for moment, path in enumerate(
        [second / "64.jpg", second / "source", first / "source", first / "64.jpg"]
    ):
        os.utime(path, (1_000_000 + moment, path.stat().st_mtime))

    get_image(client, media_path(1, 64))
    get_image(client, media_path(3, 64))

    assert not (second / "source").exists()
    assert not (second / "64.jpg").exists()
    assert (first / "source").exists()
    assert (first / "64.jpg").exists()
    assert (folder / post_id(3) / "post" / "source").exists()
    assert (folder / post_id(3) / "post" / "64.jpg").exists()
    total = sum((folder / name).stat().st_size for name in kept_files(app))
    assert total <= 1024 * 1024


def test_media_evicted_source_downloaded_again(make_media_app, clock, instagram):
    app = make_media_app(MEDIA_CACHE_MAX_MB=1, MEDIA_WIDTHS=(64, 128))
    connect(app, clock)
    client = app.test_client()
    for number in (1, 2, 3):
        instagram.serve(cdn_url(f"{number}.jpg"), noise_png(360, number), "image/png")
    publish(client, instagram, [raw_post(1), raw_post(2), raw_post(3)])
    for number in (1, 2, 3):
        get_image(client, media_path(number, 64))
    source = media_folder(app) / post_id(1) / "post" / "source"
    evicted = not source.exists()

    image = get_image(client, media_path(1, 128))

    assert evicted
    assert image.size == (128, 128)
    assert len(instagram.cdn_calls(cdn_url("1.jpg"))) == 2


def test_media_access_time_marks_use(app, client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])
    get_image(client, media_path(1, 320))
    sized = media_folder(app) / post_id(1) / "post" / "320.jpg"
    os.utime(sized, (1_000_000, sized.stat().st_mtime))
    modified = sized.stat().st_mtime_ns
    before = time.time_ns()

    get_image(client, media_path(1, 320))

    # Two seconds of slack for file systems with coarse timestamps.
    assert sized.stat().st_atime_ns >= before - 2_000_000_000
    assert sized.stat().st_mtime_ns == modified


# --- one download under concurrency ---------------------------------------


class LocalImageServer:
    """An image server on 127.0.0.1 that waits before answering and counts requests.

    With `chunked`, the body is sent with chunked transfer encoding and no
    Content-Length.
    """

    def __init__(self, body: bytes, delay: float = 0.0, chunked: bool = False) -> None:
        self.body = body
        self.delay = delay
        self.chunked = chunked
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with server.lock:
                    server.requests += 1
                time.sleep(server.delay)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                if server.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                try:
                    self.write_body()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # The client stopped reading, as over-limit bodies make it.

            def write_body(self) -> None:
                if not server.chunked:
                    self.wfile.write(server.body)
                    return
                for start in range(0, len(server.body), 16 * 1024):
                    part = server.body[start : start + 16 * 1024]
                    self.wfile.write(f"{len(part):X}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def image_servers() -> Iterator:
    """Start local image servers for a test and stop them all at its end."""
    servers: list[LocalImageServer] = []

    def factory(body: bytes, **options: Any) -> LocalImageServer:
        server = LocalImageServer(body, **options)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def test_media_real_chunked_body_over_limit(make_media_app, image_servers, monkeypatch):
    monkeypatch.setattr(media, "MAX_DOWNLOAD_BYTES", 100_000)
    server = image_servers(noise_png(360, seed=1), chunked=True)
    app = make_media_app()
    seed_feed(app, [raw_post(1, media_url=f"{server.url}/photo.png")])

    response = app.test_client().get(media_path(1, 320))

    assert_rejected(app, response, "over the 100000 byte limit")


def test_media_concurrent_requests_one_download(make_media_app, image_servers):
    server = image_servers(noise_png(300, seed=2), delay=0.5)
    app = make_media_app()
    image_url = f"{server.url}/photo.png?oe={FAR_EXPIRY}"
    seed_feed(app, [raw_post(1, media_url=image_url)])
    start = threading.Barrier(20, timeout=10)
    results: list[tuple[int, bytes]] = []
    results_lock = threading.Lock()

    def visit() -> None:
        client = app.test_client()
        start.wait()
        response = client.get(media_path(1, 320))
        with results_lock:
            results.append((response.status_code, response.data))

    threads = [threading.Thread(target=visit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert server.requests == 1
    assert [status for status, _ in results] == [200] * 20
    assert len({body for _, body in results}) == 1
    assert decode(results[0][1]).size == (300, 300)


# --- ids and widths that are not served -----------------------------------


HOSTILE_PATHS = [
    "/media/../320.jpg",
    "/media/%2e%2e/320.jpg",
    "/media/..%2F..%2Fetc/320.jpg",
    "/media/..%2F..%2Fetc%2Fpasswd/320.jpg",
    f"/media/{post_id(1)}%2F..%2F..%2Fetc/320.jpg",
    f"/media/{post_id(1)}/..%2F..%2F..%2Fetc/320.jpg",
    f"/media/{post_id(1)}/%2e%2e/320.jpg",
    "/media/" + "1" * 10_000 + "/320.jpg",
    f"/media/{post_id(1)}/" + "1" * 10_000 + "/320.jpg",
    "/media/abc/320.jpg",
    "/media/1e5/320.jpg",
    "/media/-1/320.jpg",
    "/media/%EF%BC%91%EF%BC%92/320.jpg",
    "/media/%D9%A1%D9%A2/320.jpg",
    f"/media/{post_id(1)}%00/320.jpg",
    f"/media/{post_id(1)}/320.jpg%00",
    f"/media/{post_id(99)}/320.jpg",
    f"/media/{post_id(3)}/{child_id(99, 0)}/320.jpg",
    f"/media/{post_id(1)}/{child_id(3, 0)}/320.jpg",
    f"/media/{post_id(4)}/320.jpg",
    f"/media/{post_id(1)}/321.jpg",
    f"/media/{post_id(1)}/0.jpg",
    f"/media/{post_id(1)}/0320.jpg",
    f"/media/{post_id(1)}/%D9%A3%D9%A2%D9%A0.jpg",
    f"/media/{post_id(1)}/" + "3" * 10_000 + ".jpg",
    f"/media/{post_id(1)}/-320.jpg",
    f"/media/{post_id(1)}/320.5.jpg",
    f"/media/{post_id(1)}/{'9' * 400}.jpg",
    f"/media/{post_id(1)}/320.png",
    f"/media/{post_id(1)}/320",
    f"/media/{post_id(1)}/",
    "/media/",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_media_hostile_path_not_found(app, client, instagram, path):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1), album_post(3), bare_post(4)])

    response = client.get(path)

    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "not_found"
    assert len(response.get_json()["error"]["message"]) < 400
    assert not media_folder(app).exists()
    assert instagram.cdn_calls() == []
    assert instagram.media_calls() == []


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            f"/media/{post_id(1)}/999.jpg",
            "No image has the width '999'. Use one of the configured widths, 150, "
            "320, 640 and 1080, as in the URLs of a feed response's sizes.",
        ),
        (
            "/media/abc/320.jpg",
            "No image has the post id 'abc'. Use a post id of up to 32 digits, as "
            "in the URLs of a feed response's sizes.",
        ),
        (
            f"/media/{post_id(3)}/x/320.jpg",
            "No image has the child id 'x'. Use a child id of up to 32 digits, as "
            "in the URLs of a feed response's sizes.",
        ),
        (
            f"/media/{post_id(99)}/320.jpg",
            f"Post {post_id(99)} is not in the kept feed or has no still image. Use "
            "the URLs in a current feed response's sizes.",
        ),
        (
            f"/media/{post_id(3)}/{child_id(99, 0)}/320.jpg",
            f"Child {child_id(99, 0)} of post {post_id(3)} is not in the kept feed "
            "or has no still image. Use the URLs in a current feed response's sizes.",
        ),
    ],
)
def test_media_not_found_json_message(app, client, instagram, path, message):
    publish(client, instagram, [raw_post(1), album_post(3)])

    response = client.get(path)
    error = response.get_json()["error"]

    assert response.status_code == 404
    assert error == {"code": "not_found", "message": message}
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/media", "/media/1", "/media/1/2/3/320.jpg"])
def test_media_unknown_path_json_404(client, path):
    response = client.get(path)
    error = response.get_json()["error"]

    assert response.status_code == 404
    assert error["code"] == "not_found"
    assert f"No public route matches '{path}'" in error["message"]


def test_media_wrong_method_json_405(client):
    response = client.post(media_path(1, 320))

    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


# --- caching headers ------------------------------------------------------


def test_media_cache_headers(client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])

    response = client.get(media_path(1, 320))

    cache_control = response.headers["Cache-Control"]
    assert response.status_code == 200
    assert "public" in cache_control
    assert "max-age=2592000" in cache_control
    assert response.headers["ETag"]
    assert response.headers["Last-Modified"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert int(response.headers["Content-Length"]) == len(response.data)


def test_media_if_none_match_304(client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])
    first = client.get(media_path(1, 320))

    second = client.get(
        media_path(1, 320), headers={"If-None-Match": first.headers["ETag"]}
    )

    assert second.status_code == 304
    assert second.data == b""
    assert second.headers["ETag"] == first.headers["ETag"]


def test_media_if_modified_since_304(client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])
    first = client.get(media_path(1, 320))

    second = client.get(
        media_path(1, 320),
        headers={"If-Modified-Since": first.headers["Last-Modified"]},
    )

    assert second.status_code == 304


def test_media_etag_stable_across_uses(app, client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])
    sized = media_folder(app) / post_id(1) / "post" / "320.jpg"

    responses = []
    for _ in range(3):
        responses.append(client.get(media_path(1, 320)))
        os.utime(sized, (1_000_000, sized.stat().st_mtime))

    assert len({response.headers["ETag"] for response in responses}) == 1
    assert len({response.headers["Last-Modified"] for response in responses}) == 1


def test_media_etag_differs_by_width(client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])

    small = client.get(media_path(1, 150))
    large = client.get(media_path(1, 1080))

    assert small.headers["ETag"] != large.headers["ETag"]


# --- `/images` with MEDIA_PROXY on ----------------------------------------


def sizes_of(base: str, number: int, index: int | None = None) -> dict[str, str]:
    return {str(width): base + media_path(number, width, index) for width in WIDTHS}


def test_media_images_json_proxied(client, instagram):
    publish(client, instagram, [raw_post(1), video_post(2), album_post(3)])

    response = client.get("/images?format=json", base_url="https://feed.example.org")
    image, video, album = response.get_json()["data"]

    base = "https://feed.example.org"
    assert image["sizes"] == sizes_of(base, 1)
    assert image["media_url"] == f"{base}{media_path(1, 1080)}"
    assert image["thumbnail_url"] == f"{base}{media_path(1, 1080)}"
    assert video["sizes"] == sizes_of(base, 2)
    assert video["media_url"] == f"{base}{media_path(2, 1080)}"
    assert video["thumbnail_url"] == f"{base}{media_path(2, 1080)}"
    assert album["sizes"] == sizes_of(base, 3)
    assert album["thumbnail_url"] == f"{base}{media_path(3, 1080)}"
    assert [child["sizes"] for child in album["children"]] == [
        sizes_of(base, 3, 0),
        sizes_of(base, 3, 1),
    ]
    assert [child["media_url"] for child in album["children"]] == [
        f"{base}{media_path(3, 1080, 0)}",
        f"{base}{media_path(3, 1080, 1)}",
    ]
    assert [child["thumbnail_url"] for child in album["children"]] == [
        f"{base}{media_path(3, 1080, 0)}",
        f"{base}{media_path(3, 1080, 1)}",
    ]
    assert "cdn.instagram.test" not in response.get_data(as_text=True)
    assert image["permalink"] == "https://www.instagram.com/p/P1/"


def test_media_urls_under_script_root_and_odd_ids(app):
    post = normalize_posts([raw_post(1)])[0]
    odd = dict(post, id="1 2/3")
    with app.test_request_context("/images", base_url="https://feed.example.org/site"):
        plain = media.proxied_post(post)
        quoted = media.proxied_post(odd)
        expected_plain = media.url_for(
            "media.image", post_id=post["id"], width="320", _external=True
        )
        expected_quoted = media.url_for(
            "media.image", post_id="1 2/3", width="320", _external=True
        )

    assert plain["sizes"]["320"] == expected_plain
    assert expected_plain.startswith("https://feed.example.org/site/media/")
    assert quoted["sizes"]["320"] == expected_quoted
    assert "1%202" in expected_quoted


def test_media_images_json_without_image(client, instagram):
    publish(client, instagram, [bare_post(4)])

    item = client.get("/images?format=json").get_json()["data"][0]

    assert item["sizes"] == {}
    assert item["media_url"] is None
    assert item["thumbnail_url"] is None


def test_media_images_json_urls_served(client, instagram):
    instagram.serve(cdn_url("3-0-cover.jpg"), jpeg((600, 600)))
    instagram.serve(cdn_url("3-1.jpg"), jpeg((600, 300)))
    publish(client, instagram, [album_post(3)])
    album = client.get("/images?format=json").get_json()["data"][0]

    urls = [album["thumbnail_url"]] + [
        url for child in album["children"] for url in child["sizes"].values()
    ]

    for url in urls:
        assert client.get(url).status_code == 200


class ImageTags(HTMLParser):
    """Collects the attributes of every `<img>` tag in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def test_media_images_html_srcset(client, instagram):
    publish(client, instagram, [raw_post(1), video_post(2), album_post(3)])

    parser = ImageTags()
    parser.feed(client.get("/images?format=html").get_data(as_text=True))

    base = "http://localhost"
    assert [tag["src"] for tag in parser.images] == [
        base + media_path(number, 320) for number in (1, 2, 3)
    ]
    for number, tag in zip((1, 2, 3), parser.images, strict=True):
        expected = ", ".join(
            f"{base}{media_path(number, width)} {width}w" for width in WIDTHS
        )
        assert tag["srcset"] == expected
        assert tag["sizes"]


def test_media_image_sources_small_widths():
    post = {"sizes": {"64": "https://feed.test/64", "128": "https://feed.test/128"}}

    sources = media.image_sources(post)

    assert sources["src"] == "https://feed.test/128"
    assert sources["srcset"] == "https://feed.test/64 64w, https://feed.test/128 128w"


def test_media_image_sources_without_sizes():
    post = {"sizes": {}, "thumbnail_url": "https://cdn.instagram.test/1.jpg"}

    assert media.image_sources(post) == {
        "src": "https://cdn.instagram.test/1.jpg",
        "srcset": None,
    }


# --- MEDIA_PROXY off ------------------------------------------------------


@pytest.fixture
def direct_app(make_media_app, clock):
    """The real-mode app with MEDIA_PROXY off and a cache time of a week."""
    created = make_media_app(MEDIA_PROXY=False, FEED_CACHE_SECONDS=7 * 24 * 3600)
    connect(created, clock)
    return created


def test_media_proxy_off_instagram_urls(direct_app, instagram):
    client = direct_app.test_client()
    publish(client, instagram, [raw_post(1), video_post(2)])

    image, video = client.get("/images?format=json").get_json()["data"]

    assert image["media_url"] == cdn_url("1.jpg")
    assert image["thumbnail_url"] == cdn_url("1.jpg")
    assert video["media_url"] == cdn_url("2.mp4")
    assert video["thumbnail_url"] == cdn_url("2-cover.jpg")
    assert image.get("sizes", {}) == {}


def test_media_proxy_off_sizes_empty(direct_app, instagram):
    client = direct_app.test_client()
    publish(client, instagram, [raw_post(1)])

    item = client.get("/images?format=json").get_json()["data"][0]

    assert item["sizes"] == {}


def test_media_proxy_off_html_instagram_src(direct_app, instagram):
    client = direct_app.test_client()
    publish(client, instagram, [raw_post(1)])

    parser = ImageTags()
    parser.feed(client.get("/images?format=html").get_data(as_text=True))

    assert parser.images[0]["src"] == cdn_url("1.jpg")
    assert "srcset" not in parser.images[0]


def expiring_posts(expiry: datetime) -> list[dict[str, Any]]:
    """Return two posts whose links expire at `expiry` and a day later."""
    first = int(expiry.timestamp())
    later = first + 24 * 3600
    return [
        raw_post(1, media_url=cdn_url("1.jpg", expiry=f"{later:X}")),
        raw_post(2, media_url=cdn_url("2.jpg", expiry=f"{first:x}")),
    ]


def visit(app: Any) -> None:
    """Request the feed, then wait for any background fetch it started."""
    assert app.test_client().get("/images?format=json").status_code == 200
    with app.app_context():
        images.instagram_feed().wait_for_background()


def test_media_proxy_off_refetch_before_expiry(direct_app, clock, instagram):
    expiry = FIRST_MOMENT + timedelta(hours=5)
    instagram.posts = expiring_posts(expiry)
    visit(direct_app)

    clock.moment = expiry - timedelta(hours=1, seconds=1)
    visit(direct_app)
    before = len(instagram.feed_calls())
    clock.moment = expiry - timedelta(hours=1)
    visit(direct_app)
    after = len(instagram.feed_calls())
    clock.advance(60)
    visit(direct_app)

    assert before == 1
    assert after == 2
    assert len(instagram.feed_calls()) == 2


def test_media_proxy_on_ignores_link_expiry(make_media_app, clock, instagram):
    app = make_media_app(FEED_CACHE_SECONDS=7 * 24 * 3600)
    connect(app, clock)
    expiry = FIRST_MOMENT + timedelta(hours=5)
    instagram.posts = expiring_posts(expiry)
    visit(app)

    clock.moment = expiry + timedelta(hours=1)
    visit(app)

    assert len(instagram.feed_calls()) == 1


def test_media_ranges_and_json_416(client, instagram):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])
    size = len(client.get(media_path(1, 320)).data)

    part = client.get(media_path(1, 320), headers={"Range": "bytes=0-9"})
    response = client.get(media_path(1, 320), headers={"Range": "bytes=99999999-"})
    error = response.get_json()["error"]

    assert part.status_code == 206
    assert len(part.data) == 10

    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"
    assert error["code"] == "range_not_satisfiable"
    assert "bytes=99999999-" in error["message"]
    assert f"{size} bytes" in error["message"]
    assert "Send one byte range within it" in error["message"]


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=0-1,5-6", "items=0-1", "bytes"])
def test_media_unusable_range_sends_whole_file(client, instagram, header):
    instagram.serve(cdn_url("1.jpg"), jpeg())
    publish(client, instagram, [raw_post(1)])
    whole = client.get(media_path(1, 320)).data

    response = client.get(media_path(1, 320), headers={"Range": header})

    assert response.status_code == 200
    assert response.data == whole
