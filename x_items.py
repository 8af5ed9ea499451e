"""X API v2 responses turned into ownfeed's item schema.

A post arrives as `{"id", "text", "author_id", "attachments": {"media_keys"}, ...}`
with its media in `includes.media` (joined by `media_key`) and its author in
`includes.users` (joined by `id`). `page_from_payload` joins them and returns
items in the schema of /tweets: id, text, created_at, url, author, media, metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from timeutil import parse_iso, to_iso
from x_errors import XUnavailableError

logger = logging.getLogger(__name__)

_METRICS = ("like_count", "retweet_count", "reply_count", "quote_count")


@dataclass(frozen=True)
class XPage:
    """One page of normalized posts, the token of the next page, and partial errors."""

    items: list[dict[str, Any]]
    next_token: str | None
    partial_errors: list[dict[str, Any]]


def page_from_payload(payload: dict[str, Any], where: str) -> XPage:
    """Build an XPage, joining includes.media and includes.users into each post."""
    data = payload.get("data", [])  # X leaves `data` out of an empty page.
    if not isinstance(data, list):
        raise wrong_shape(where, "a `data` list of posts")
    includes = payload.get("includes")
    includes = includes if isinstance(includes, dict) else {}
    media = _index(includes.get("media"), "media_key")
    users = _index(includes.get("users"), "id")
    items = [
        _post(post, media, users)
        for post in data
        if isinstance(post, dict) and isinstance(post.get("id"), str)
    ]

    errors = payload.get("errors")
    partial = (
        [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    )
    if partial:
        first = partial[0]
        logger.warning(
            "X returned %d partial errors with %s, keeping %d posts. The first: %s: %s",
            len(partial),
            where,
            len(items),
            str(first.get("title", ""))[:100],
            str(first.get("detail") or first.get("message") or "")[:200],
        )
    meta = payload.get("meta")
    next_token = meta.get("next_token") if isinstance(meta, dict) else None
    if not isinstance(next_token, str) or not next_token:
        next_token = None
    return XPage(items, next_token, partial)


def _post(
    post: dict[str, Any],
    media: dict[str, dict[str, Any]],
    users: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Normalize one post to the item schema of /tweets."""
    author = users.get(post.get("author_id"), {})
    username = author.get("username")
    if isinstance(username, str) and username:
        url = f"https://x.com/{username}/status/{post['id']}"
    else:
        url = f"https://x.com/i/web/status/{post['id']}"
    attachments = post.get("attachments")
    keys = attachments.get("media_keys") if isinstance(attachments, dict) else None
    metrics = post.get("public_metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    return {
        "id": post["id"],
        "text": _plain_text(post),
        "created_at": _iso(post.get("created_at")),
        "url": url,
        "author": {
            "username": username,
            "name": author.get("name"),
            "profile_image_url": author.get("profile_image_url"),
        },
        "media": [_media(media[key]) for key in keys or [] if key in media],
        "metrics": {name: _count(metrics.get(name)) for name in _METRICS},
    }


def _plain_text(post: dict[str, Any]) -> str:
    """Undo X's HTML escaping, drop attached-media links, and expand t.co links."""
    text = str(post.get("text") or "")
    # X sends &, < and > in `text` as HTML entities. Decoding &amp; last keeps a
    # literal "&lt;" that the author typed.
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    entities = post.get("entities")
    urls = entities.get("urls") if isinstance(entities, dict) else None
    for entity in urls if isinstance(urls, list) else []:
        short = entity.get("url") if isinstance(entity, dict) else None
        if not isinstance(short, str) or not short:
            continue
        if entity.get("media_key"):
            text = text.replace(short, "")
        elif isinstance(entity.get("expanded_url"), str):
            text = text.replace(short, entity["expanded_url"])
    return text.strip()


def _media(record: dict[str, Any]) -> dict[str, Any]:
    """Normalize one media record: `url` is a still image for every type."""
    photo_url = record.get("url")
    preview = record.get("preview_image_url")
    kind = record.get("type")
    still = photo_url if kind == "photo" else preview
    return {
        "type": kind,
        "url": still or photo_url or preview,
        "preview_image_url": preview or photo_url,
        "alt_text": record.get("alt_text"),
    }


def user_from_payload(payload: dict[str, Any], where: str) -> dict[str, Any]:
    data = payload.get("data")
    if not isinstance(data, dict):
        raise wrong_shape(where, "a `data` user object")
    return {
        "id": required_str(data, "id", where),
        "username": required_str(data, "username", where),
        "name": data.get("name"),
        "profile_image_url": data.get("profile_image_url"),
    }


def _index(records: Any, key: str) -> dict[str, dict[str, Any]]:
    if not isinstance(records, list):
        return {}
    return {
        record[key]: record
        for record in records
        if isinstance(record, dict) and isinstance(record.get(key), str)
    }


def _iso(value: Any) -> str | None:
    try:
        return to_iso(parse_iso(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def required_str(record: Mapping[str, Any], key: str, where: str) -> str:
    """Return `record[key]` when it is a non-empty string, else raise."""
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise wrong_shape(where, f"a non-empty `{key}` string")
    return value


def wrong_shape(where: str, expected: str) -> XUnavailableError:
    """Build the error for a successful response that lacks `expected`."""
    return XUnavailableError(
        f"X's response to {where} lacks {expected}. Try again later, and check "
        "X_API_URL if this persists."
    )
