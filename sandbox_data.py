"""The sandbox's made-up account: its profile, its posts and their CDN images.

Everything here is deterministic, so every gunicorn worker serves the same posts
and the same image bytes without sharing memory.
"""

from __future__ import annotations

import base64
import colorsys
import copy
import functools
import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL import Image, ImageDraw, ImageFont

USERNAME = "sandbox.owner"
DISPLAY_NAME = "Sandbox Owner"
# Instagram Login returns two ids: `user_id` is the professional account id and
# `id` (also the code exchange's `user_id`) is scoped to the app.
IG_USER_ID = "17841400000000001"
APP_SCOPED_ID = "27640875392278831"
PROFILE_PICTURE_ID = "profile"

NEWEST_POST_AT = datetime(2026, 6, 22, 10, 45, tzinfo=UTC)
SHAPES = {"square": (1080, 1080), "portrait": (1080, 1350), "landscape": (1080, 566)}

# The newest posts, one per case a client must handle. Each entry is
# (media_type, caption or None, child types for albums, media_url withheld).
_FEATURED: list[tuple[str, str | None, tuple[str, ...], bool]] = [
    ("IMAGE", "Golden hour at the pier 🌅 #sunset #sun", (), False),
    (
        "CAROUSEL_ALBUM",
        "A weekend in Lisbon: Café da Manhã, crème brûlée and the old tram #Café",
        ("IMAGE", "VIDEO", "IMAGE"),
        False,
    ),
    ("VIDEO", "Waves at Nazaré 🌊 #sea", (), False),
    ("IMAGE", None, (), False),
    ("VIDEO", "Dancing in the kitchen 🎶 (a licensed song) #reel", (), True),
    ("CAROUSEL_ALBUM", "This album starts with a video", ("VIDEO", "IMAGE"), False),
    ("IMAGE", "غروب الشمس على البحر 🌅 #غروب", (), False),
    ("IMAGE", "Cover photo with a licensed track", (), True),
    ("IMAGE", "בוקר טוב מתל אביב ☀️ #בוקר", (), False),
    ("IMAGE", "東京の夜景がきれい 🌃 #東京", (), False),
    (
        "CAROUSEL_ALBUM",
        "今天的晚餐：火锅 🍜 #美食",
        ("IMAGE", "IMAGE", "VIDEO", "IMAGE"),
        False,
    ),
    ("IMAGE", '<script>alert("caption")</script>', (), False),
    ("IMAGE", '"><img src=x onerror=alert(1)>', (), False),
    ("VIDEO", "Sunny Sunday 🌞 #Sun", (), False),
    ("IMAGE", "Line one\nLine two & <b>not bold</b>\n\n#weekend", (), False),
]

# Captions for the other posts, used in turn. "{n}" becomes the post number.
_CAPTIONS: list[str | None] = [
    "Cafés of Porto, part {n} ☕ #cafe",
    "Trail run number {n} 🏃‍♀️ #running",
    None,
    "Garden update: tomatoes everywhere 🍅 #garden",
    "Crème brûlée attempt {n} #dessert",
    "Rainy afternoon & a good book 📚",
    "Sunset {n} from the balcony #sunset",
    "Street photo, day {n} #street",
    "Ciao from Napoli 🍕 #pizza #travel",
]
_OLDEST_CAPTION = "The old lighthouse at the end of the world #farshore"


def sandbox_posts(count: int) -> list[dict[str, Any]]:
    """Return `count` made-up posts, newest first, as raw records without URLs.

    The oldest post always has the only caption with "lighthouse" and #farshore.
    """
    return copy.deepcopy(_catalog(count)[0])


def all_posts(count: int) -> list[dict[str, Any]]:
    """Return the shared, cached post records; callers must not change them."""
    return _catalog(count)[0]


def find_media(count: int, media_id: str) -> dict[str, Any] | None:
    """Return the shared record of a post or album child, or None when there is none."""
    return _catalog(count)[1].get(media_id)


@functools.lru_cache(maxsize=8)
def _catalog(count: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    posts = []
    moment = NEWEST_POST_AT
    for index in range(max(count, 0)):
        posts.append(_make_post(index, count, moment))
        # Posts are 20 to 56 hours apart, so 150 posts span about nine months.
        moment -= timedelta(hours=20 + (index * 7919) % 37, minutes=(index * 31) % 60)
    by_id: dict[str, dict[str, Any]] = {}
    for post in posts:
        by_id[post["id"]] = post
        for child in post["children"]:
            by_id[child["id"]] = child
    return posts, by_id


def _make_post(index: int, count: int, moment: datetime) -> dict[str, Any]:
    number = count - index
    if index == count - 1:
        media_type, caption, child_types, withheld = "IMAGE", _OLDEST_CAPTION, (), False
    elif index < len(_FEATURED):
        media_type, caption, child_types, withheld = _FEATURED[index]
    else:
        media_type = ("IMAGE", "IMAGE", "VIDEO", "IMAGE", "CAROUSEL_ALBUM")[index % 5]
        template = _CAPTIONS[index % len(_CAPTIONS)]
        caption = None if template is None else template.format(n=number)
        child_types = tuple(
            "VIDEO" if (number + k) % 3 == 0 else "IMAGE" for k in range(2 + number % 3)
        )
        withheld = False

    post_id = str(17_900_000_000_000_000 + number * 104_729)
    shortcode = _shortcode(post_id)
    timestamp = moment.strftime("%Y-%m-%dT%H:%M:%S+0000")
    post: dict[str, Any] = {
        "id": post_id,
        "number": number,
        "media_type": media_type,
        "media_product_type": "REELS" if media_type == "VIDEO" else "FEED",
        "timestamp": timestamp,
        "shortcode": shortcode,
        "permalink": f"https://www.instagram.com/p/{shortcode}/",
        "username": USERNAME,
        "like_count": (number * 37) % 500,
        "comments_count": (number * 11) % 40,
        "shape": "portrait" if media_type == "VIDEO" else _shape(post_id),
        "media_url_withheld": withheld,
        "children": [],
    }
    if caption is not None:
        post["caption"] = caption
    if media_type == "CAROUSEL_ALBUM":
        post["children"] = [
            _make_child(post, position, child_type)
            for position, child_type in enumerate(child_types, start=1)
        ]
    return post


def _make_child(post: dict[str, Any], position: int, media_type: str) -> dict[str, Any]:
    child_id = str(18_000_000_000_000_000 + post["number"] * 10 + position)
    return {
        "id": child_id,
        "number": post["number"],
        "position": position,
        "media_type": media_type,
        "timestamp": post["timestamp"],
        "shortcode": _shortcode(child_id),
        "username": USERNAME,
        "shape": _shape(child_id),
        "media_url_withheld": False,
        "children": [],
    }


def _shape(media_id: str) -> str:
    digest = hashlib.sha256(media_id.encode()).digest()
    return ("square", "portrait", "landscape")[digest[0] % 3]


def _shortcode(media_id: str) -> str:
    digest = hashlib.sha256(media_id.encode()).digest()
    return "C" + base64.urlsafe_b64encode(digest).decode()[:10]


# CDN images -------------------------------------------------------------------


def image_size(record: dict[str, Any] | None) -> tuple[int, int]:
    """Return the pixel size of a record's image (None: the profile picture)."""
    if record is None:
        return (320, 320)
    return SHAPES[record["shape"]]


@functools.lru_cache(maxsize=256)
def draw_jpeg(media_id: str, label: str, note: str, size: tuple[int, int]) -> bytes:
    """Draw a JPEG in a colour derived from the id, with a large label and a note."""
    digest = hashlib.sha256(media_id.encode()).digest()
    hue = digest[0] / 255
    background = _rgb(hue, 0.45, 0.85)
    accent = _rgb((hue + 0.5) % 1, 0.35, 0.95)

    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    radius = min(width, height) // 3
    centre = (width // 2, height // 2)
    draw.ellipse(
        (
            centre[0] - radius,
            centre[1] - radius,
            centre[0] + radius,
            centre[1] + radius,
        ),
        fill=accent,
    )
    big = ImageFont.load_default(size=max(height // 6, 24))
    small = ImageFont.load_default(size=max(height // 20, 12))
    draw.text(centre, label, fill=(20, 20, 20), font=big, anchor="mm")
    draw.text(
        (width // 2, height - height // 12),
        note,
        fill=(255, 255, 255),
        font=small,
        anchor="mm",
    )

    output = io.BytesIO()
    image.save(output, format="JPEG", quality=80)
    return output.getvalue()


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return (int(red * 255), int(green * 255), int(blue * 255))


def image_text(record: dict[str, Any] | None) -> tuple[str, str]:
    """Return the label and note drawn on an image (None: the profile picture)."""
    if record is None:
        return ("S", f"@{USERNAME}")
    label = f"#{record['number']}"
    if "position" in record:
        label = f"{label}.{record['position']}"
    note = "video cover" if record["media_type"] == "VIDEO" else "sandbox image"
    return (label, f"{note} · @{USERNAME}")
