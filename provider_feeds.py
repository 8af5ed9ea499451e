"""Each provider's feed cache and fetch, for the admin pages and the commands."""

from __future__ import annotations

from typing import Any

from flask import current_app

from feed import FeedCache, Fetch
from media import proxied_post
from providers import PROVIDERS
from services import token_store

PREVIEW_SIZE = 12


def feed_for(provider: str) -> tuple[FeedCache, Fetch] | None:
    """Return the provider's feed cache and a fetch for it, or None if it has none."""
    if provider == "x":
        from tweets import x_feed, x_fetch

        return x_feed("timeline"), x_fetch("timeline")
    if provider != "instagram":
        return None
    from images import instagram_feed, instagram_fetch

    return instagram_feed(), instagram_fetch()


def _preview(provider: str, posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the newest posts as the public routes would show them."""
    newest = posts[:PREVIEW_SIZE]
    if provider == "instagram" and current_app.config["MEDIA_PROXY"]:
        return [proxied_post(post) for post in newest]
    return newest


def feed_views() -> list[dict[str, Any]]:
    """Describe each connected provider's kept feed for the summary page."""
    views = []
    for name, provider in PROVIDERS.items():
        feed = feed_for(name)
        if feed is None or token_store().get(name) is None:
            continue
        snapshot = feed[0].snapshot()
        # A successful fetch clears failed_at, so it is set only after a failure.
        failed_last = snapshot.failed_at is not None
        views.append(
            {
                "provider": provider,
                "posts_kept": len(snapshot.posts or []),
                "fetched_at": snapshot.fetched_at,
                "last_error": snapshot.last_error if failed_last else None,
                "retry_at": snapshot.retry_at,
                "preview": _preview(name, snapshot.posts or []),
            }
        )
    return views
