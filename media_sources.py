"""Where a proxied image comes from: the kept feed, the CDN, and healing expired links.

An image is downloaded once per post (or album child) under a file lock, so many
concurrent requests for an image not yet on disk cause one download. When the
CDN link has expired (403 or 404), one API call fetches the post's fresh URLs,
the kept feed is updated, and the download is tried once more; a post that no
longer exists leaves the feed. A post's links are renewed at most once per
HEAL_INTERVAL_SECONDS, so visitors cannot turn a failing image into API calls.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from images import instagram_feed
from instagram import InstagramError
from media import MediaError, SourceExpired, download_image, write_bytes_atomic
from posts import normalize_post
from services import instagram_client, token_store
from token_store import file_lock

logger = logging.getLogger(__name__)

# A post's links are renewed at most this often, so neither a CDN outage nor a
# link that still fails after renewal turns image requests into API calls.
HEAL_INTERVAL_SECONDS = 600
# The Graph error code and subcode for an object that does not exist. Code 100
# alone means an invalid parameter, such as a malformed `fields` value.
MISSING_OBJECT = (100, 33)
_last_heal: dict[str, float] = {}
_heal_lock = threading.Lock()


class NotInFeed(Exception):
    """The post or child is not in the kept feed, or has no still image."""


def ensure_source(post_id: str, child_id: str | None, slot: Path) -> Path:
    """Return the downloaded original of a post's still, downloading it once."""
    source = slot / "source"
    if source.exists():
        return source
    # Checked before anything is created on disk, so unknown ids leave no trace.
    still_url(find_post(post_id), child_id)
    slot.mkdir(parents=True, exist_ok=True)
    with file_lock(source):
        if source.exists():
            return source
        # Read under the lock, because a request that held it may have renewed
        # the link or removed the post.
        url = still_url(find_post(post_id), child_id)
        try:
            body = download_image(url)
        except MediaError as err:
            body = _download_renewed(post_id, child_id, url, err)
        write_bytes_atomic(source, body)
    return source


def _download_renewed(
    post_id: str, child_id: str | None, url: str, failure: MediaError
) -> bytes:
    """Download the still from the post's renewed links, or raise `failure`.

    When no renewal is allowed yet, the feed's URL is still tried if another
    request renewed it after `url` was read, for another child of the album.
    """
    if _may_heal(post_id):
        if isinstance(failure, SourceExpired):
            logger.info("The CDN link of post %s expired; renewing it", post_id)
        else:
            # The CDN host may have changed (a sandbox on another port, say).
            logger.info(
                "The CDN link of post %s failed (%s); renewing it", post_id, failure
            )
        try:
            post = heal_post(post_id)
        except MediaError as err:
            # Both reasons, so the 502 and the log still name the first failure.
            raise MediaError(f"{failure} {err}") from None
    else:
        post = find_post(post_id)
        if still_url(post, child_id) == url:
            raise failure
    return download_image(still_url(post, child_id))


def _may_heal(post_id: str) -> bool:
    """Allow one renewal of a post's links per HEAL_INTERVAL_SECONDS."""
    moment = time.monotonic()
    with _heal_lock:
        last = _last_heal.get(post_id)
        if last is not None and moment - last < HEAL_INTERVAL_SECONDS:
            return False
        _last_heal[post_id] = moment
        return True


def find_post(post_id: str) -> dict[str, Any]:
    """Return the kept post with this id, or raise NotInFeed."""
    for post in instagram_feed().snapshot().posts or []:
        if post["id"] == post_id:
            return post
    raise NotInFeed(post_id)


def still_url(post: dict[str, Any], child_id: str | None) -> str:
    """Return the CDN URL of the post's (or its child's) still image."""
    if child_id is None:
        url = post.get("thumbnail_url")
    else:
        children = [child for child in post["children"] if child["id"] == child_id]
        url = children[0].get("thumbnail_url") if children else None
    if not url:
        raise NotInFeed(f"{post['id']}/{child_id}")
    return url


def heal_post(post_id: str) -> dict[str, Any]:
    """Fetch the post again (one API call) and update the kept feed with it.

    Raises NotInFeed when the post no longer exists, after removing it from the
    feed, and MediaError when the API cannot be asked.
    """
    record = token_store().get("instagram")
    if record is None:
        raise MediaError(
            "No Instagram account is connected, so the link cannot be renewed."
        )
    try:
        raw = instagram_client().get_media(record["access_token"], post_id)
    except InstagramError as err:
        if (err.code, err.subcode) == MISSING_OBJECT:
            instagram_feed().remove_post(post_id)
            logger.info("Post %s no longer exists; removed it from the feed", post_id)
            raise NotInFeed(post_id) from None
        raise MediaError(f"Renewing the image link failed: {err}") from None
    post = normalize_post(raw)
    instagram_feed().replace_post(post)
    return post
