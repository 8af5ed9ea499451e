"""The stand-in account's posts and its JPEG, generated the same way on every run.

Captions mix plain words, hashtags, accented words, emoji and Japanese, so that
search does the work it does on a real account. About 70% of the posts are
images, 15% videos and 15% albums of two to four children.
"""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL import Image, ImageDraw

FIRST_POST_ID = 17_900_000_000_000_000
NEWEST_POST_AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SEED = 20260601

WORDS = (
    "sunset beach morning coffee café mountain river city night market street food "
    "garden flowers autumn winter summer spring rain snow forest lake island ferry "
    "train station bridge tower museum gallery concert friends family weekend "
    "bakery croissant pasta ramen noodles sushi tacos brunch dinner picnic hiking "
    "cycling running yoga studio workshop ceramics painting sketch portrait "
    "landscape harbour lighthouse sailing surfing tide dunes canyon desert"
).split()
TAGS = (
    "travel photography foodie sunset nature citylife art design coffee "
    "weekendvibes instagood latergram wanderlust handmade studiolife"
).split()
EXTRAS = ("Zürich", "São Paulo", "Kraków", "Ωραία", "東京タワー", "🌅", "☕️", "🚲")


def caption_for(index: int) -> str | None:
    """Return the caption of the post at `index` (newest first), or None."""
    rng = random.Random(SEED + index)
    if rng.random() < 0.1:
        return None
    words = rng.choices(WORDS, k=rng.randint(5, 25))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(EXTRAS))
    words[0] = words[0].capitalize()
    tags = [f"#{tag}" for tag in rng.sample(TAGS, rng.randint(0, 4))]
    return " ".join(words) + ".\n\n" + " ".join(tags)


def media_type_for(index: int) -> str:
    """Return the media type of the post at `index`."""
    draw = random.Random(SEED * 7 + index).random()
    if draw < 0.7:
        return "IMAGE"
    return "VIDEO" if draw < 0.85 else "CAROUSEL_ALBUM"


def media_record(index: int, cdn_url: str) -> dict[str, Any]:
    """Return post `index` as the Graph API sends it, with images on `cdn_url`."""
    post_id = str(FIRST_POST_ID + index)
    media_type = media_type_for(index)
    timestamp = NEWEST_POST_AT - timedelta(hours=7 * index)
    record: dict[str, Any] = {
        "id": post_id,
        "media_type": media_type,
        "media_url": f"{cdn_url}/{post_id}.jpg",
        "permalink": f"https://www.instagram.com/p/B{post_id[-10:]}/",
        "timestamp": timestamp.strftime("%Y-%m-%dT%H:%M:%S+0000"),
        "username": "bench.owner",
    }
    caption = caption_for(index)
    if caption is not None:
        record["caption"] = caption
    if media_type == "VIDEO":
        record["media_url"] = f"{cdn_url}/{post_id}.mp4"
        record["thumbnail_url"] = f"{cdn_url}/{post_id}.jpg"
    elif media_type == "CAROUSEL_ALBUM":
        count = 2 + index % 3
        record["children"] = {
            "data": [
                {
                    "id": f"{post_id}{child}",
                    "media_type": "IMAGE",
                    "media_url": f"{cdn_url}/{post_id}{child}.jpg",
                }
                for child in range(count)
            ]
        }
    return record


def jpeg_bytes(width: int = 1080, height: int = 1350) -> bytes:
    """Return a photo-sized JPEG with gradients and shapes, about 100 kB at 1080 px."""
    image = Image.linear_gradient("L").resize((width, height))
    red = image.rotate(90)
    blue = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    picture = Image.merge("RGB", (red, image, blue))
    draw = ImageDraw.Draw(picture)
    rng = random.Random(SEED)
    for _ in range(60):
        x, y = rng.randrange(width), rng.randrange(height)
        size = rng.randint(20, 200)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x, y, x + size, y + size), fill=colour)
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    picture = Image.blend(picture, noise, 0.15)
    output = io.BytesIO()
    picture.save(output, "JPEG", quality=85)
    return output.getvalue()


def tweet_record(index: int, author_id: str) -> dict[str, Any]:
    """Return post `index` of the stand-in X timeline, as X API v2 sends it."""
    created = NEWEST_POST_AT - timedelta(hours=5 * index)
    return {
        "id": str(1_800_000_000_000_000_000 + index),
        "text": caption_for(index) or "Posted a photo",
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "author_id": author_id,
        "lang": "en",
        "public_metrics": {
            "like_count": index % 50,
            "retweet_count": index % 7,
            "reply_count": index % 5,
            "quote_count": index % 3,
        },
    }
