"""Turn raw Instagram media records into the items `/images` serves.

Instagram's records vary: `caption` and `media_url` may be missing, videos carry
their still in `thumbnail_url`, albums carry theirs in the first child, and
timestamps use a "+0000" offset. Each item here has every field of the public
schema, with a still image in `thumbnail_url` whenever Instagram sent one.
"""

from __future__ import annotations

import logging
from typing import Any

from timeutil import parse_iso, to_iso

logger = logging.getLogger(__name__)

MEDIA_TYPES = ("IMAGE", "VIDEO", "CAROUSEL_ALBUM")


def normalize_posts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalize raw media records, newest first, skipping ones without an id.

    A record that cannot be read (no id, an unknown type) is logged and left
    out, so one odd post does not empty the feed.
    """
    posts = []
    seen: set[str] = set()
    problems: list[str] = []
    for record in records:
        try:
            post = normalize_post(record)
        except ValueError as err:
            problems.append(str(err))
            continue
        # Paging can repeat a post when new ones are published during the fetch.
        if post["id"] not in seen:
            seen.add(post["id"])
            posts.append(post)
    if problems:
        # One line per fetch, however many posts were odd. When none could be
        # read the fetch fails, and the caller logs that as the warning.
        logger.log(
            logging.WARNING if posts else logging.INFO,
            "Skipped %d Instagram post(s) that could not be read; the first: %s",
            len(problems),
            problems[0],
        )
    posts.sort(key=lambda post: (post["timestamp"] or "", post["id"]), reverse=True)
    return posts


def normalize_post(record: dict[str, Any]) -> dict[str, Any]:
    """Return one post in the public schema; raise ValueError when unusable."""
    post_id = record.get("id")
    if isinstance(post_id, bool) or not isinstance(post_id, str | int) or post_id == "":
        raise ValueError(f"a post has no id: keys {sorted(record)}")
    media_type = _media_type(record, str(post_id))
    children = [_normalize_child(child) for child in _children(record)]
    media_url = _url(record.get("media_url"))

    return {
        "id": str(post_id),
        "media_type": media_type,
        "caption": _text(record.get("caption")),
        "permalink": _url(record.get("permalink")),
        "timestamp": _timestamp(record.get("timestamp"), str(post_id)),
        "media_url": media_url,
        "thumbnail_url": _still(media_type, media_url, record, children),
        "children": children,
    }


def _media_type(record: dict[str, Any], post_id: str) -> str:
    media_type = str(record.get("media_type") or "").upper()
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"post {post_id} has media_type {record.get('media_type')!r}")
    return media_type


def _children(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Return an album's children, from `{"data": [...]}` or a plain list."""
    children = record.get("children")
    if isinstance(children, dict):
        children = children.get("data")
    if not isinstance(children, list):
        return []
    return [child for child in children if isinstance(child, dict) and child.get("id")]


def _normalize_child(child: dict[str, Any]) -> dict[str, Any]:
    media_type = str(child.get("media_type") or "IMAGE").upper()
    media_url = _url(child.get("media_url"))
    thumbnail_url = _url(child.get("thumbnail_url"))
    return {
        "id": str(child["id"]),
        "media_type": media_type,
        "media_url": media_url,
        "thumbnail_url": thumbnail_url if media_type == "VIDEO" else media_url,
    }


def _still(
    media_type: str,
    media_url: str | None,
    record: dict[str, Any],
    children: list[dict[str, Any]],
) -> str | None:
    """Pick the still image: the image, a video's cover, an album's first still."""
    if media_type == "VIDEO":
        return _url(record.get("thumbnail_url"))
    if media_type == "CAROUSEL_ALBUM":
        for child in children:
            if child["thumbnail_url"]:
                return child["thumbnail_url"]
        # Instagram also gives an album the first child's URL as its own.
        return media_url or _url(record.get("thumbnail_url"))
    return media_url


def _timestamp(value: Any, post_id: str) -> str | None:
    if not value:
        return None
    try:
        return to_iso(parse_iso(str(value)))
    except ValueError:
        logger.warning("Post %s has an unreadable timestamp %r", post_id, value)
        return None


def _text(value: Any) -> str | None:
    """Return `value` when it is a non-empty string, else None."""
    if isinstance(value, str) and value:
        return value
    return None


def _url(value: Any) -> str | None:
    """Return `value` when it is an http or https URL, else None.

    Pages put these URLs in `href` and `src`, so a `javascript:` URL is dropped.
    """
    text = _text(value)
    if text is None or not text.lower().startswith(("https://", "http://")):
        return None
    return text
