"""The X blueprint: `/tweets`, `/tweets/search`, `/tweets/liked` and `/tweets/embed`.

Each view is a feed cache like `/images`, because X bills each post it returns:
the timeline (one cache per `exclude` choice), the liked posts, and one cache per
recent-search query, all fetched server side at most every X_CACHE_SECONDS and
served stale when X fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request

import search
import x_provider
from feed import FeedCache, FeedError, Fetch, Fetched, Snapshot
from images import (
    ParameterError,
    Rendered,
    add_cors,
    decode_cursor,
    embed_error_page,
    embed_policy,
    error_response,
    first_parameters,
    invalid_parameter,
    json_feed_body,
    next_page_url,
    page_of,
    parse_format,
    parse_limit,
    rendered_cache,
    unavailable_response,
)
from services import now, services, token_store, x_client
from token_store import file_lock, write_json_atomic
from tokens import record_token_rejected
from x_errors import XAuthError, XError, XRateLimitedError

logger = logging.getLogger(__name__)

bp = Blueprint("tweets", __name__)
bp.after_request(add_cors)

VIEWS = ("timeline", "search", "liked")
MAX_SEARCH_QUERY = 512
EXCLUDE_VALUES = ("replies", "retweets")
# Search feeds kept in memory at once; each distinct query is its own feed.
MAX_SEARCH_FEEDS = 32


# --- feeds ----------------------------------------------------------------


def x_feed(key: str) -> FeedCache:
    """Return the feed cache named `key` (such as "timeline"), created on first use."""
    app_services = services()
    name = f"x-{key}"
    with app_services.clients_lock:
        cache = app_services.feeds.get(name)
        if cache is None:
            path = Path(current_app.instance_path) / f"feed-{name}.json"
            ttl = current_app.config["X_CACHE_SECONDS"]
            cache = FeedCache(path, app_services.clock, ttl)
            app_services.feeds[name] = cache
            _forget_old_search_feeds(app_services.feeds)
    return cache


def _search_budget_wait(key: str) -> int:
    """Return the seconds until a new search query is allowed, or 0 when it is.

    A query with a saved feed is always served. New queries are limited to
    X_SEARCH_NEW_PER_HOUR, because anyone can send one and X bills each; each
    new one also removes the oldest saved search feeds beyond MAX_SEARCH_FEEDS.
    """
    folder = Path(current_app.instance_path)
    if (folder / f"feed-x-{key}.json").exists():
        return 0
    budget_path = folder / "x-search-budget.json"
    hour = 3600
    moment = now().timestamp()
    with file_lock(budget_path):
        try:
            started = json.loads(budget_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            started = []
        started = [when for when in started if isinstance(when, float | int)]
        started = [when for when in started if moment - when < hour]
        if len(started) >= current_app.config["X_SEARCH_NEW_PER_HOUR"]:
            return max(1, int(min(started) + hour - moment))
        started.append(moment)
        write_json_atomic(budget_path, started)
    _remove_old_search_files(folder)
    return 0


def _remove_old_search_files(folder: Path) -> None:
    feeds = sorted(
        folder.glob("feed-x-search-*.json"), key=lambda path: path.stat().st_mtime
    )
    for path in feeds[: max(0, len(feeds) - MAX_SEARCH_FEEDS + 1)]:
        for leftover in (path, Path(f"{path}.lock"), Path(f"{path}.refresh")):
            leftover.unlink(missing_ok=True)


def _forget_old_search_feeds(feeds: dict[str, Any]) -> None:
    """Keep at most MAX_SEARCH_FEEDS search caches in memory, oldest out first."""
    names = [name for name in feeds if name.startswith("x-search-")]
    for name in names[: max(0, len(names) - MAX_SEARCH_FEEDS)]:
        del feeds[name]


def x_fetch(view: str, query: str | None = None, exclude: str | None = None) -> Fetch:
    """Prepare a fetch of one X view that can run outside this request."""
    app = current_app._get_current_object()
    client = x_client()
    max_posts = app.config["X_FEED_MAX_POSTS"]

    def fetch() -> Fetched:
        with app.app_context():
            try:
                return _fetch(client, view, query, exclude, max_posts)
            except XRateLimitedError as err:
                wait = max(1, int(err.reset_at - now().timestamp()))
                raise FeedError("rate_limited", err.message, wait) from err
            except XAuthError as err:
                _note_rejection(err)
                raise FeedError("auth_failed", err.message) from err
            except XError as err:
                raise FeedError("upstream_unavailable", err.message) from err

    return fetch


def _fetch(
    client: Any, view: str, query: str | None, exclude: str | None, max_posts: int
) -> Fetched:
    if view == "search":
        auth = x_provider.any_auth()
        _require(auth, "not_connected", _NOT_CONFIGURED)
        items = client.iter_pages(
            lambda token, size: client.search_recent(
                auth, query, max_results=size, next_token=token
            ),
            max_posts,
        )
        return Fetched(_newest_first(items), {"query": query})

    if view == "liked":
        auth = _require_user_auth()
        user = client.get_me(auth)
        items = client.iter_pages(
            lambda token, size: client.get_liked(
                auth, user["id"], max_results=size, pagination_token=token
            ),
            max_posts,
        )
        return Fetched(_newest_first(items), _account(user))

    auth = x_provider.any_auth()
    _require(auth, "not_connected", _NOT_CONFIGURED)
    user = _timeline_user(client, auth)
    items = client.iter_pages(
        lambda token, size: client.get_timeline(
            auth, user["id"], max_results=size, pagination_token=token, exclude=exclude
        ),
        max_posts,
    )
    return Fetched(_newest_first(items), _account(user))


_NOT_CONFIGURED = (
    "No X account is configured. Set X_BEARER_TOKEN, or X_API_KEY and X_API_SECRET "
    "(with X_USERNAME), or connect an account from /admin/generate with X_CLIENT_ID."
)


def _require(auth: Any, code: str, message: str) -> None:
    if auth is None:
        raise FeedError(code, message)


def _require_user_auth() -> Any:
    """Return user-context auth, or raise FeedError saying what to fix."""
    auth = x_provider.user_auth()
    if auth is not None:
        return auth
    problem = x_provider.unusable_connection()
    if problem is not None:
        raise FeedError(*problem)
    raise FeedError(
        "user_context_required", x_provider.liked_needs_user_context().message
    )


def _timeline_user(client: Any, auth: Any) -> dict[str, Any]:
    """Return the account whose timeline is shown: X_USERNAME, else the owner's."""
    username = current_app.config.get("X_USERNAME")
    if username:
        return client.get_user_by_username(auth, username)
    user_auth = x_provider.user_auth()
    if user_auth is None:
        raise FeedError(
            "not_connected",
            "Set X_USERNAME to the account whose posts /tweets shows; app-only auth "
            "has no account of its own.",
        )
    return client.get_me(user_auth)


def _account(user: dict[str, Any]) -> dict[str, Any]:
    return {"username": user.get("username"), "id": user.get("id")}


def _newest_first(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unique = {item["id"]: item for item in items}
    return sorted(
        unique.values(),
        key=lambda item: (item.get("created_at") or "", int(item["id"])),
        reverse=True,
    )


def _note_rejection(err: XAuthError) -> None:
    """Mark an OAuth 2.0 connection as needing a new login when X rejected it."""
    record = token_store().get("x")
    if (
        record is not None
        and record.get("status") == "active"
        and err.code in (89, None)
    ):
        if err.status == 401:
            record_token_rejected("x", err, record.get("access_token"))


# --- parameters -----------------------------------------------------------


def _parse_exclude(text: str | None) -> str | None:
    if not text:
        return None
    values = sorted({part.strip().lower() for part in text.split(",") if part.strip()})
    unknown = [value for value in values if value not in EXCLUDE_VALUES]
    if unknown:
        raise invalid_parameter(
            "exclude",
            unknown[0],
            "a comma-separated list of replies and retweets",
            "contains an invalid value",
        )
    return ",".join(values) or None


def _parse_search_query(text: str | None) -> str:
    query = (text or "").strip()
    valid = f"an X search query of up to {MAX_SEARCH_QUERY} characters"
    if not query:
        raise invalid_parameter("q", text, valid, "is required")
    if len(query) > MAX_SEARCH_QUERY:
        raise invalid_parameter("q", query, valid, "is too long")
    return query


def _parse_local_query(text: str | None) -> search.Query | None:
    try:
        return search.parse_query(text)
    except search.QueryError as err:
        raise ParameterError(err.parameter, err.message) from None


def _parse_view(text: str | None) -> str:
    """Return the view named by `view` (any case), by default the timeline."""
    if not text:
        return "timeline"
    view = text.lower()
    if view not in VIEWS:
        raise invalid_parameter("view", text, "timeline, search or liked")
    return view


# --- responses ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TweetsRequest:
    """The parsed parameters of one X view request, and the feed that serves it."""

    view: str
    feed_key: str
    query: str | None
    local_query: search.Query | None
    exclude: str | None
    cursor: tuple[str, str] | None
    limit: int
    page_format: str


def parse_tweets_request(view: str, embed: bool) -> TweetsRequest:
    """Parse the request's parameters; raises ParameterError naming a bad one."""
    first = first_parameters()
    limit = parse_limit(first.get("limit"))
    cursor = decode_cursor(first.get("after"))
    page_format = "html" if embed else parse_format(first.get("format"))
    if view == "search":
        query = _parse_search_query(first.get("q"))
        feed_key = "search-" + hashlib.sha256(query.encode()).hexdigest()[:24]
        return TweetsRequest(
            view, feed_key, query, None, None, cursor, limit, page_format
        )
    local_query = _parse_local_query(first.get("q"))
    exclude = _parse_exclude(first.get("exclude")) if view == "timeline" else None
    feed_key = view if not exclude else f"{view}-{exclude.replace(',', '-')}"
    return TweetsRequest(
        view, feed_key, None, local_query, exclude, cursor, limit, page_format
    )


def tweets_response(view: str, embed: bool = False) -> Response:
    """Build the response for one X view from its cached feed.

    As for `/images`, the rendered body is kept by the raw request with its
    parsed parameters, so a repeated request skips parsing them.
    """
    req = request._get_current_object()
    accept = None if embed else req.environ.get("HTTP_ACCEPT")
    request_key = (
        "tweets",
        view,
        embed,
        req.query_string,
        accept,
        req.scheme,
        req.host,
    )
    rendered = rendered_cache()
    entry = rendered.get(request_key)
    if entry is not None:
        parsed = entry.parameters
    else:
        try:
            parsed = parse_tweets_request(view, embed)
        except ParameterError as err:
            if embed:
                return embed_error_page(400, err.message)
            return error_response(400, "invalid_parameter", err.message, err.parameter)
    if view == "search":
        wait = _search_budget_wait(parsed.feed_key)
        if wait:
            message = (
                "Too many new search queries this hour, and each costs an X API "
                f"call. Try again in {wait} seconds, or use a recent query."
            )
            if embed:
                response = embed_error_page(429, message)
            else:
                response = error_response(429, "too_many_searches", message, "q")
            response.headers["Retry-After"] = str(wait)
            return response

    cache = x_feed(parsed.feed_key)
    try:
        snapshot = cache.get_lazily(
            lambda: x_fetch(parsed.view, parsed.query, parsed.exclude)
        )
    except FeedError as err:
        return _finish(_unavailable(err, embed, parsed.page_format), embed)
    stale = snapshot.is_stale(now(), cache.ttl)

    if entry is None or not entry.shows(snapshot, stale):
        page, last = _select_page(
            snapshot, parsed.local_query, parsed.cursor, parsed.limit
        )
        next_url = next_page_url(_encode_cursor(last)) if last is not None else None
        body, etag = _render(
            view, embed, parsed.page_format, snapshot, page, next_url, stale
        )
        entry = Rendered.of(snapshot, stale, parsed.page_format, body, parsed, etag)
        rendered.put(request_key, entry)
    return _finish(entry.response("Origin" if embed else "Origin, Accept"), embed)


def _finish(response: Response, embed: bool) -> Response:
    """Add the embed page's CSP, or Vary: Accept where `format` may come from it."""
    if embed:
        response.headers["Content-Security-Policy"] = embed_policy()
    elif not getattr(response, "has_cors_headers", False):
        response.vary.add("Accept")
    return response


def _unavailable(err: FeedError, embed: bool, page_format: str) -> Response:
    """Build the 503 response: JSON names the problem, HTML is an empty list."""
    if page_format == "json":
        return unavailable_response(err, "tweets", page_format)
    template = "feed/tweets_embed.html" if embed else "feed/tweets.html"
    response = Response(
        render_template(template, tweets=[], next_url=None),
        status=503,
        mimetype="text/html",
    )
    response.headers["Cache-Control"] = "no-store"
    if err.retry_after:
        response.headers["Retry-After"] = str(err.retry_after)
    return response


def _select_page(
    snapshot: Snapshot,
    query: search.Query | None,
    cursor: tuple[str, str] | None,
    limit: int,
) -> tuple[list[int], dict[str, Any] | None]:
    posts = snapshot.posts or []
    selected = search.positions(snapshot.search_index().select(query, None))
    if cursor is not None:
        cursor_key = (cursor[0], int(cursor[1]))
        selected = (
            position
            for position in selected
            if (posts[position].get("created_at") or "", int(posts[position]["id"]))
            < cursor_key
        )
    return page_of(posts, selected, limit)


def _encode_cursor(post: dict[str, Any]) -> str:
    raw = f"{post.get('created_at') or ''}|{post['id']}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unchanged(item: dict[str, Any]) -> dict[str, Any]:
    return item


def _render(
    view: str,
    embed: bool,
    page_format: str,
    snapshot: Snapshot,
    page: list[int],
    next_url: str | None,
    stale: bool,
) -> tuple[bytes, str | None]:
    """Return the body and, for JSON, its ETag (None: hash the body)."""
    if page_format == "json":
        extra = {"query": snapshot.account.get("query")} if view == "search" else None
        return json_feed_body(
            snapshot, page, next_url, stale, _unchanged, ("x",), extra
        )
    template = "feed/tweets_embed.html" if embed else "feed/tweets.html"
    tweets = [snapshot.posts[position] for position in page]
    return render_template(template, tweets=tweets, next_url=next_url).encode(), None


# --- routes ---------------------------------------------------------------


@bp.get("/tweets")
def timeline() -> Response:
    """Serve the timeline of X_USERNAME (or the connected account)."""
    return tweets_response("timeline")


@bp.get("/tweets/search")
def search_recent() -> Response:
    """Serve X's recent search for `q`, cached per query."""
    return tweets_response("search")


@bp.get("/tweets/liked")
def liked() -> Response:
    """Serve the owner's liked posts (user context only)."""
    return tweets_response("liked")


@bp.get("/tweets/embed")
def embed() -> Response:
    """Serve a whole HTML page of one view for an iframe; `view` picks it."""
    try:
        view = _parse_view(request.args.get("view"))
    except ParameterError as err:
        return embed_error_page(400, err.message)
    return tweets_response(view, embed=True)
