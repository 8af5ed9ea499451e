"""Tests for posts.py: raw Instagram media records become the public item schema."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from posts import normalize_post, normalize_posts

ITEM_KEYS = {
    "id",
    "media_type",
    "caption",
    "permalink",
    "timestamp",
    "media_url",
    "thumbnail_url",
    "children",
}
CHILD_KEYS = {"id", "media_type", "media_url", "thumbnail_url"}
IMAGE_URL = "https://scontent.cdninstagram.test/image.jpg?oh=1&oe=2"
VIDEO_URL = "https://video.cdninstagram.test/clip.mp4?oh=1&oe=2"
COVER_URL = "https://scontent.cdninstagram.test/cover.jpg?oh=1&oe=2"
PERMALINK = "https://www.instagram.com/p/ABC123/"


def image_record(**fields: Any) -> dict[str, Any]:
    record = {
        "id": "17895695668004550",
        "media_type": "IMAGE",
        "caption": "Morning light #sun",
        "media_url": IMAGE_URL,
        "permalink": PERMALINK,
        "timestamp": "2026-06-22T10:45:00+0000",
        "username": "owner.handle",
    }
    record.update(fields)
    return record


def video_record(**fields: Any) -> dict[str, Any]:
    record = image_record(
        id="17895695668004551",
        media_type="VIDEO",
        media_url=VIDEO_URL,
        thumbnail_url=COVER_URL,
    )
    record.update(fields)
    return record


def album_record(children: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    record = image_record(
        id="17895695668004552",
        media_type="CAROUSEL_ALBUM",
        media_url=children[0].get("media_url") if children else None,
        children={"data": children},
    )
    record.update(fields)
    return record


def image_child(child_id: str, url: str = IMAGE_URL) -> dict[str, Any]:
    return {"id": child_id, "media_type": "IMAGE", "media_url": url}


def video_child(child_id: str) -> dict[str, Any]:
    return {
        "id": child_id,
        "media_type": "VIDEO",
        "media_url": VIDEO_URL,
        "thumbnail_url": COVER_URL,
    }


# --- one record -----------------------------------------------------------


def test_normalize_image_fields():
    post = normalize_post(image_record())

    assert set(post) == ITEM_KEYS
    assert post["id"] == "17895695668004550"
    assert post["media_type"] == "IMAGE"
    assert post["caption"] == "Morning light #sun"
    assert post["permalink"] == PERMALINK
    assert post["timestamp"] == "2026-06-22T10:45:00+00:00"
    assert post["media_url"] == IMAGE_URL
    assert post["thumbnail_url"] == IMAGE_URL
    assert post["children"] == []


def test_normalize_image_drops_unlisted_fields():
    post = normalize_post(image_record(username="owner.handle", like_count=5))

    assert "username" not in post
    assert "like_count" not in post


def test_normalize_numeric_id_becomes_string():
    post = normalize_post(image_record(id=17895695668004550))

    assert post["id"] == "17895695668004550"


def test_normalize_video_thumbnail_is_cover():
    post = normalize_post(video_record())

    assert post["media_type"] == "VIDEO"
    assert post["thumbnail_url"] == COVER_URL
    assert post["media_url"] == VIDEO_URL
    assert post["children"] == []


def test_normalize_video_without_cover_null():
    post = normalize_post(video_record(thumbnail_url=None))

    assert post["thumbnail_url"] is None


def test_normalize_album_first_child_image():
    children = [image_child("18000000000000001"), video_child("18000000000000002")]
    post = normalize_post(album_record(children))

    assert post["media_type"] == "CAROUSEL_ALBUM"
    assert post["thumbnail_url"] == IMAGE_URL
    assert len(post["children"]) == 2


def test_normalize_album_first_child_video_uses_cover():
    children = [video_child("18000000000000001"), image_child("18000000000000002")]
    post = normalize_post(album_record(children))

    assert post["thumbnail_url"] == COVER_URL


def test_normalize_album_children_schema():
    children = [video_child("18000000000000001"), image_child("18000000000000002")]
    post = normalize_post(album_record(children))
    first, second = post["children"]

    assert set(first) == CHILD_KEYS
    assert set(second) == CHILD_KEYS
    assert first == {
        "id": "18000000000000001",
        "media_type": "VIDEO",
        "media_url": VIDEO_URL,
        "thumbnail_url": COVER_URL,
    }
    assert second == {
        "id": "18000000000000002",
        "media_type": "IMAGE",
        "media_url": IMAGE_URL,
        "thumbnail_url": IMAGE_URL,
    }


def test_normalize_album_children_without_permalink():
    children = [image_child("18000000000000001"), image_child("18000000000000002")]
    for child in children:
        assert "permalink" not in child

    post = normalize_post(album_record(children))

    assert post["permalink"] == PERMALINK
    assert [child["id"] for child in post["children"]] == [
        "18000000000000001",
        "18000000000000002",
    ]


def test_normalize_album_children_as_plain_list():
    record = album_record([image_child("18000000000000001")])
    record["children"] = [image_child("18000000000000001")]

    post = normalize_post(record)

    assert [child["id"] for child in post["children"]] == ["18000000000000001"]
    assert post["thumbnail_url"] == IMAGE_URL


def test_normalize_album_without_children_own_url():
    record = album_record([], media_url=IMAGE_URL)
    del record["children"]

    post = normalize_post(record)

    assert post["children"] == []
    assert post["thumbnail_url"] == IMAGE_URL


def test_normalize_caption_missing_is_null():
    record = image_record()
    del record["caption"]

    post = normalize_post(record)

    assert post["caption"] is None


def test_normalize_caption_empty_is_null():
    post = normalize_post(image_record(caption=""))

    assert post["caption"] is None


def test_normalize_image_without_media_url():
    record = image_record()
    del record["media_url"]

    post = normalize_post(record)

    assert post["media_url"] is None
    assert post["thumbnail_url"] is None


def test_normalize_video_without_media_url_keeps_cover():
    record = video_record()
    del record["media_url"]

    post = normalize_post(record)

    assert post["media_url"] is None
    assert post["thumbnail_url"] == COVER_URL


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2019-09-26T22:36:43+0000", "2019-09-26T22:36:43+00:00"),
        ("2019-09-26T22:36:43+00:00", "2019-09-26T22:36:43+00:00"),
        ("2019-09-26T22:36:43Z", "2019-09-26T22:36:43+00:00"),
        ("2019-09-27T00:36:43+0200", "2019-09-26T22:36:43+00:00"),
    ],
)
def test_normalize_timestamp_utc_offset(raw, expected):
    post = normalize_post(image_record(timestamp=raw))

    assert post["timestamp"] == expected


def test_normalize_timestamp_unreadable_is_null(caplog):
    with caplog.at_level(logging.WARNING, logger="posts"):
        post = normalize_post(image_record(timestamp="yesterday"))

    assert post["timestamp"] is None
    assert "yesterday" in caplog.text


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,x", "//x"])
def test_normalize_rejects_non_http_urls(url):
    post = normalize_post(image_record(permalink=url, media_url=url))

    assert post["permalink"] is None
    assert post["media_url"] is None
    assert post["thumbnail_url"] is None


# --- many records ---------------------------------------------------------


def test_normalize_posts_unknown_type_skipped(caplog):
    records = [
        image_record(id="1", timestamp="2026-01-03T00:00:00+0000"),
        image_record(id="2", media_type="REELS", timestamp="2026-01-02T00:00:00+0000"),
        image_record(id="3", timestamp="2026-01-01T00:00:00+0000"),
    ]

    with caplog.at_level(logging.WARNING, logger="posts"):
        posts = normalize_posts(records)

    assert [post["id"] for post in posts] == ["1", "3"]
    assert "REELS" in caplog.text


def test_normalize_posts_missing_id_skipped(caplog):
    nameless = image_record(timestamp="2026-01-02T00:00:00+0000")
    del nameless["id"]
    records = [
        image_record(id="1", timestamp="2026-01-03T00:00:00+0000"),
        nameless,
        image_record(id="3", timestamp="2026-01-01T00:00:00+0000"),
    ]

    with caplog.at_level(logging.WARNING, logger="posts"):
        posts = normalize_posts(records)

    assert [post["id"] for post in posts] == ["1", "3"]
    assert "no id" in caplog.text


@pytest.mark.parametrize("bad_id", [None, "", True, 1.5, ["1"]])
def test_normalize_post_invalid_id_raises(bad_id):
    with pytest.raises(ValueError):
        normalize_post(image_record(id=bad_id))


def test_normalize_posts_newest_first():
    records = [
        image_record(id="1", timestamp="2025-12-31T23:59:59+0000"),
        image_record(id="2", timestamp="2026-06-01T08:00:00+0000"),
        image_record(id="3", timestamp="2026-01-01T00:00:00+0000"),
    ]

    posts = normalize_posts(records)

    assert [post["id"] for post in posts] == ["2", "3", "1"]


def test_normalize_posts_mixed_offsets_order():
    records = [
        # 23:30 UTC on 1 January, written with a +0200 offset.
        image_record(id="1", timestamp="2026-01-02T01:30:00+0200"),
        image_record(id="2", timestamp="2026-01-02T00:00:00+0000"),
    ]

    posts = normalize_posts(records)

    assert [post["id"] for post in posts] == ["2", "1"]


def test_normalize_posts_duplicate_id_kept_once():
    records = [
        image_record(id="1", timestamp="2026-01-03T00:00:00+0000"),
        image_record(id="2", timestamp="2026-01-02T00:00:00+0000"),
        image_record(id="2", timestamp="2026-01-02T00:00:00+0000"),
    ]

    posts = normalize_posts(records)

    assert [post["id"] for post in posts] == ["1", "2"]


def test_normalize_posts_every_shape_together():
    records = [
        image_record(id="10", timestamp="2026-01-04T00:00:00+0000"),
        video_record(id="11", timestamp="2026-01-03T00:00:00+0000"),
        album_record(
            [video_child("20"), image_child("21")],
            id="12",
            timestamp="2026-01-02T00:00:00+0000",
        ),
        {"id": "13", "media_type": "IMAGE", "timestamp": "2026-01-01T00:00:00+0000"},
    ]

    posts = normalize_posts(records)

    assert [post["id"] for post in posts] == ["10", "11", "12", "13"]
    assert [post["thumbnail_url"] for post in posts] == [
        IMAGE_URL,
        COVER_URL,
        COVER_URL,
        None,
    ]
    assert all(set(post) == ITEM_KEYS for post in posts)
