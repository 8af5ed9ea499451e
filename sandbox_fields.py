"""Graph API `fields` parsing, and the sandbox's media and profile objects.

Graph returns only the fields a request names (and always `id`), leaves out a
field an object lacks instead of sending null, and expands edges in place, as in
`children{id,media_url}`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from sandbox_data import (
    APP_SCOPED_ID,
    DISPLAY_NAME,
    IG_USER_ID,
    PROFILE_PICTURE_ID,
    USERNAME,
)

MediaUrl = Callable[[str, str], str]
"""Build a signed CDN URL from a media id and a file extension ("jpg" or "mp4")."""

MEDIA_FIELDS = frozenset(
    "id caption media_type media_product_type media_url permalink shortcode "
    "thumbnail_url timestamp username like_count comments_count children".split()
)
PROFILE_FIELDS = frozenset(
    "id user_id username name account_type profile_picture_url media_count "
    "followers_count follows_count biography".split()
)

Fields = list[tuple[str, "Fields | None"]]
"""A parsed `fields` value: each name with its expanded sub-fields, if any."""


class FieldsError(ValueError):
    """A `fields` parameter that is malformed or names a field the node lacks."""


def parse_fields(text: str | None) -> Fields:
    """Parse a Graph `fields` value such as "id,children{id,media_url}".

    An empty or missing value gives an empty list. Raises FieldsError with a
    message in the Graph API's wording.
    """
    if not text or not text.strip():
        return []
    fields, position = _parse_field_list(text, 0)
    if position != len(text):
        raise FieldsError(
            f'Syntax error "Expected end of string instead of "{text[position]}"." '
            f"at character {position}: {text}"
        )
    return fields


def _parse_field_list(text: str, position: int) -> tuple[Fields, int]:
    fields: Fields = []
    while True:
        position = _skip_spaces(text, position)
        start = position
        while position < len(text) and (
            text[position].isalnum() or text[position] == "_"
        ):
            position += 1
        name = text[start:position]
        if not name:
            raise FieldsError(
                f'Syntax error "Expected name." at character {start}: {text}'
            )
        position = _skip_spaces(text, position)
        expansion = None
        if position < len(text) and text[position] == "{":
            expansion, position = _parse_field_list(text, position + 1)
            if position >= len(text) or text[position] != "}":
                raise FieldsError(
                    f'Syntax error "Expected "}}"." at character {position}: {text}'
                )
            position = _skip_spaces(text, position + 1)
        fields.append((name, expansion))
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        return fields, position


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position] == " ":
        position += 1
    return position


def check_fields(fields: Fields, allowed: frozenset[str], node_type: str) -> None:
    """Raise FieldsError for the first field the node type does not have."""
    for name, expansion in fields:
        if name not in allowed:
            raise FieldsError(
                f"(#100) Tried accessing nonexisting field ({name}) "
                f"on node type ({node_type})"
            )
        if expansion is not None:
            if name != "children":
                raise FieldsError(f"(#100) Field {name} cannot be expanded")
            check_fields(expansion, MEDIA_FIELDS - {"children"}, node_type)


def render_media(
    record: dict[str, Any], fields: Fields, media_url: MediaUrl
) -> dict[str, Any]:
    """Build a media object with the requested fields, as Graph returns it.

    `id` is always present. Fields the object lacks are left out, as the API does:
    `caption` without a caption, `media_url` when withheld, `thumbnail_url` on
    anything but a video, `permalink` and `caption` on album children.
    """
    values = _media_values(record, media_url)
    result: dict[str, Any] = {"id": record["id"]}
    for name, expansion in fields:
        if name == "children":
            if record["children"]:
                sub_fields = expansion or [("id", None)]
                result["children"] = {
                    "data": [
                        render_media(child, sub_fields, media_url)
                        for child in record["children"]
                    ]
                }
        elif name in values:
            result[name] = values[name]
    return result


def _media_values(record: dict[str, Any], media_url: MediaUrl) -> dict[str, Any]:
    values = {
        key: record[key] for key in ("media_type", "timestamp", "shortcode", "username")
    }
    is_child = "position" in record
    if not is_child:
        values["media_product_type"] = record["media_product_type"]
        values["permalink"] = record["permalink"]
        values["like_count"] = record["like_count"]
        values["comments_count"] = record["comments_count"]
        if "caption" in record:
            values["caption"] = record["caption"]

    media_type = record["media_type"]
    if media_type == "VIDEO":
        values["thumbnail_url"] = media_url(record["id"], "jpg")
    if record["media_url_withheld"]:
        return values
    if media_type == "CAROUSEL_ALBUM":
        # The album's media_url is its first child's, even when that is a video.
        first = record["children"][0]
        values["media_url"] = _own_media_url(first, media_url)
    else:
        values["media_url"] = _own_media_url(record, media_url)
    return values


def _own_media_url(record: dict[str, Any], media_url: MediaUrl) -> str:
    extension = "mp4" if record["media_type"] == "VIDEO" else "jpg"
    return media_url(record["id"], extension)


def render_profile(
    fields: Fields, media_count: int, media_url: MediaUrl
) -> dict[str, Any]:
    """Build the /me object with the requested fields and `id`."""
    values: dict[str, Any] = {
        "user_id": IG_USER_ID,
        "username": USERNAME,
        "name": DISPLAY_NAME,
        "account_type": "BUSINESS",
        "profile_picture_url": media_url(PROFILE_PICTURE_ID, "jpg"),
        "media_count": media_count,
        "followers_count": 1234,
        "follows_count": 321,
        "biography": "A made-up account served by ownfeed's sandbox.",
    }
    result: dict[str, Any] = {}
    for name, _expansion in fields:
        if name in values:
            result[name] = values[name]
    result["id"] = APP_SCOPED_ID
    return result


def encode_cursor(media_id: str) -> str:
    """Make an opaque paging cursor, shaped like Graph's "QVFI..." cursors."""
    return base64.urlsafe_b64encode(b"AQH" + media_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str | None:
    """Return the media id inside a cursor, or None when the sandbox did not make it."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(b"AQH"):
        return None
    return raw[3:].decode("ascii", errors="replace")
