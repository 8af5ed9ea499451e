"""The public blueprint: `/images`, `/images/embed` and `/embed.js`.

Visitors never cause more than the cached feed's fetch: every response is built
from the saved feed, filtered and paged here, and the rendered body is kept per
feed version and query so repeated requests cost one dictionary lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template,
    request,
    send_from_directory,
    url_for,
)

import media
import search
from feed import FeedCache, FeedError, Fetch, Fetched, Snapshot
from instagram import InstagramError, RateLimitedError, TokenInvalidError
from posts import normalize_posts
from services import instagram_client, now, services, token_store
from timeutil import to_iso
from tokens import record_token_rejected

logger = logging.getLogger(__name__)

bp = Blueprint("images", __name__)

DEFAULT_LIMIT = 12
MAX_LIMIT = 100
# How long browsers and CDNs may reuse a response before asking again.
BROWSER_CACHE_SECONDS = 60
RENDERED_CACHE_SIZE = 256
PUBLIC_ERRORS = {
    "not_connected": "not_connected",
    "reauthorization_required": "reauthorization_required",
    "user_context_required": "user_context_required",
}


class ParameterError(Exception):
    """A query parameter is invalid; the message names it and its valid values."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


# --- the Instagram feed ---------------------------------------------------


def instagram_feed() -> FeedCache:
    """Return the app's Instagram feed cache, created on first use."""
    app_services = services()
    with app_services.clients_lock:
        cache = app_services.feeds.get("instagram")
        if cache is None:
            path = Path(current_app.instance_path) / "feed-instagram.json"
            config = current_app.config
            cache = FeedCache(
                path,
                app_services.clock,
                config["FEED_CACHE_SECONDS"],
                track_link_expiry=not config["MEDIA_PROXY"],
            )
            app_services.feeds["instagram"] = cache
    return cache


def instagram_fetch(on_page: Callable[[int], None] | None = None) -> Fetch:
    """Prepare a fetch of the owner's posts that can run outside this request.

    `on_page` is called with the number of posts each page added.
    """
    app = current_app._get_current_object()
    client = instagram_client()
    max_posts = app.config["FEED_MAX_POSTS"]

    def fetch() -> Fetched:
        with app.app_context():
            record = token_store().get("instagram")
            if record is None:
                raise FeedError("not_connected", "No Instagram account is connected.")
            try:
                raw = client.iter_media(record["access_token"], max_posts, on_page)
            except TokenInvalidError as err:
                # record_token_rejected logs the rejection as an error.
                record_token_rejected("instagram", err, record["access_token"])
                raise FeedError(
                    "reauthorization_required", err.owner_message, reported=True
                ) from err
            except RateLimitedError as err:
                raise FeedError("rate_limited", str(err), err.retry_after) from err
            except InstagramError as err:
                raise FeedError("upstream_unavailable", str(err)) from err
            posts = normalize_posts(raw)
            if raw and not posts:
                # Saving would replace the kept posts with an empty feed.
                raise FeedError(
                    "upstream_unavailable",
                    f"Instagram sent {len(raw)} posts and none could be read (each "
                    "lacks an id or a known media_type), so the saved feed was "
                    "kept. Check INSTAGRAM_API_VERSION and try again later.",
                )
            account = {"username": record.get("username")}
            return Fetched(posts, account)

    return fetch


def current_feed() -> tuple[Snapshot, bool]:
    """Return the feed to serve and whether it is stale, fetching when it is due.

    No fetch runs without a usable token; the saved posts are served instead.
    Raises FeedError when there is nothing saved to serve.
    """
    cache = instagram_feed()
    record = token_store().peek("instagram")
    usable = record is not None and record.get("status") != "reauthorization_required"
    if usable:
        snapshot = cache.get_lazily(instagram_fetch)
        return snapshot, snapshot.is_stale(now(), cache.ttl)

    snapshot = cache.snapshot()
    if snapshot.has_posts:
        return snapshot, snapshot.is_stale(now(), cache.ttl, fetchable=False)
    if record is None:
        raise FeedError("not_connected", "No Instagram account is connected yet.")
    message = (record.get("last_error") or {}).get("message") or ""
    raise FeedError("reauthorization_required", message)


# --- parameters -----------------------------------------------------------


def parse_limit(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_LIMIT
    # isascii() keeps out digits such as "²" that int() rejects, and the length
    # check keeps int() away from numbers longer than its 4300-digit limit.
    valid = text.isascii() and text.isdigit() and len(text) <= 5
    if not valid or not 1 <= int(text) <= MAX_LIMIT:
        raise ParameterError(
            "limit",
            f"limit must be a whole number from 1 to {MAX_LIMIT}; got {text[:20]!r}.",
        )
    return int(text)


def encode_cursor(post: dict[str, Any]) -> str:
    """Make an `after` cursor from a post's timestamp and id, not its position."""
    raw = f"{post['timestamp'] or ''}|{post['id']}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        timestamp, post_id = raw.split("|")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ParameterError(
            "after", "after must be the cursor from a previous response's paging.next."
        ) from None
    if not post_id.isdigit() or len(post_id) > 64:
        raise ParameterError(
            "after", "after must be the cursor from a previous response's paging.next."
        )
    return timestamp, post_id


def parse_format(text: str | None) -> str:
    if text in ("json", "html"):
        return text
    if text:
        raise ParameterError(
            "format", f"format must be json or html; got {text[:20]!r}."
        )
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return "html" if best == "text/html" else "json"


def parse_search() -> tuple[search.Query | None, frozenset[str] | None]:
    try:
        return search.parse_query(request.args.get("q")), search.parse_types(
            request.args.get("type")
        )
    except search.QueryError as err:
        raise ParameterError(err.parameter, err.message) from None


# --- selection ------------------------------------------------------------


def select_page(
    snapshot: Snapshot,
    query: search.Query | None,
    types: frozenset[str] | None,
    cursor: tuple[str, str] | None,
    limit: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Filter all kept posts, then return the page after `cursor` and its last post.

    Posts are ordered newest first by (timestamp, id), so a cursor names a place
    in that order and stays valid when the feed is refetched.
    """
    posts = search.filter_posts(
        snapshot.posts or [], snapshot.search_keys(), query, types
    )
    if cursor is not None:
        posts = [
            post for post in posts if (post["timestamp"] or "", post["id"]) < cursor
        ]
    page = posts[:limit]
    has_more = len(posts) > limit
    return page, (page[-1] if has_more and page else None)


# --- responses ------------------------------------------------------------


class RenderedCache:
    """Rendered bodies keyed by feed version and request, least recently used out."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bytes, str] | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: tuple[bytes, str]) -> None:
        with self.lock:
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


def rendered_cache() -> RenderedCache:
    extensions = current_app.extensions
    if "ownfeed_rendered" not in extensions:
        extensions["ownfeed_rendered"] = RenderedCache(RENDERED_CACHE_SIZE)
    return extensions["ownfeed_rendered"]


def feed_response(view: str, page_format: str | None = None) -> Response:
    """Build the response for `/images` or `/images/embed` from the cached feed."""
    try:
        limit = parse_limit(request.args.get("limit"))
        cursor = decode_cursor(request.args.get("after"))
        query, types = parse_search()
        page_format = page_format or parse_format(request.args.get("format"))
    except ParameterError as err:
        return error_response(400, "invalid_parameter", err.message, err.parameter)

    try:
        snapshot, stale = current_feed()
    except FeedError as err:
        return unavailable_response(err, view, page_format)

    key = (
        view,
        page_format,
        snapshot.version,
        stale,
        request.scheme,
        request.host,
        tuple(sorted(request.args.items(multi=True))),
    )
    cache = rendered_cache()
    entry = cache.get(key)
    if entry is None:
        page, last = select_page(snapshot, query, types, cursor, limit)
        if current_app.config["MEDIA_PROXY"]:
            page = [media.proxied_post(post) for post in page]
        else:
            page = [media.unproxied_post(post) for post in page]
        next_url = None
        if last is not None:
            next_url = next_page_url(encode_cursor(last))
        body = render_body(view, page_format, snapshot, page, next_url, stale)
        entry = (body, hashlib.sha256(body).hexdigest()[:32])
        cache.put(key, entry)
    return cacheable_response(*entry, page_format)


def render_body(
    view: str,
    page_format: str,
    snapshot: Snapshot,
    page: list[dict[str, Any]],
    next_url: str | None,
    stale: bool,
) -> bytes:
    if page_format == "json":
        document = {
            "data": page,
            "paging": {"next": next_url},
            "account": {"username": snapshot.account.get("username")},
            "fetched_at": to_iso(snapshot.fetched_at),
            "stale": stale,
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    template = "feed/embed.html" if view == "embed" else "feed/grid.html"
    return render_template(template, posts=page, next_url=next_url).encode()


def next_page_url(cursor: str) -> str:
    """Return this request's URL with `after` set to `cursor`.

    The query is encoded here, not passed to `url_for` as keywords, because
    parameters such as `_external` or `_anchor` are `url_for` options.
    """
    arguments = [
        (name, value)
        for name, value in request.args.items(multi=True)
        if name != "after"
    ]
    arguments.append(("after", cursor))
    return f"{url_for(request.endpoint, _external=True)}?{urlencode(arguments)}"


def cacheable_response(body: bytes, etag: str, page_format: str) -> Response:
    """Return `body`, or a 304 when If-None-Match contains `etag` (unquoted)."""
    mimetype = "application/json" if page_format == "json" else "text/html"
    # Werkzeug parses If-None-Match into unquoted tags; the weak comparison
    # (RFC 9110, section 13.1.2) also matches W/"..." and "*".
    if request.if_none_match.contains_weak(etag):
        response = Response(status=304)
    else:
        response = Response(body, mimetype=mimetype)
    response.set_etag(etag)
    response.headers["Cache-Control"] = (
        f"public, max-age={BROWSER_CACHE_SECONDS}, stale-while-revalidate=300"
    )
    return response


def error_response(
    status: int, code: str, message: str, parameter: str | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if parameter is not None:
        error["parameter"] = parameter
    response = Response(
        json.dumps({"error": error}), status=status, mimetype="application/json"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def unavailable_response(err: FeedError, view: str, page_format: str) -> Response:
    """Return a 503: JSON names the problem, and HTML is an empty grid for visitors."""
    code = PUBLIC_ERRORS.get(err.code, "upstream_unavailable")
    if page_format == "json":
        response = error_response(503, code, err.message)
    else:
        template = "feed/embed.html" if view == "embed" else "feed/grid.html"
        response = Response(
            render_template(template, posts=[], next_url=None),
            status=503,
            mimetype="text/html",
        )
        response.headers["Cache-Control"] = "no-store"
    if err.retry_after:
        response.headers["Retry-After"] = str(err.retry_after)
    return response


@bp.app_template_filter("alt_text")
def alt_text(post: dict[str, Any]) -> str:
    """Describe a post for `alt`: its caption's first line, or its type and date."""
    caption = (post.get("caption") or "").strip()
    if caption:
        first_line = caption.splitlines()[0].strip()
        return first_line if len(first_line) <= 120 else first_line[:119] + "…"
    kind = {"VIDEO": "video", "CAROUSEL_ALBUM": "album"}.get(
        post["media_type"], "photo"
    )
    date = (post.get("timestamp") or "")[:10]
    return f"Instagram {kind} from {date}" if date else f"Instagram {kind}"


# --- routes ---------------------------------------------------------------


@bp.get("/images")
def images() -> Response:
    """Serve the owner's posts as JSON or an HTML fragment."""
    return feed_response("images")


@bp.get("/images/embed")
def embed_page() -> Response:
    """Serve a whole HTML page of the grid, for an iframe."""
    response = feed_response("embed", "html")
    if response.status_code != 400:
        response.headers["Content-Security-Policy"] = embed_policy()
    return response


@bp.get("/embed.js")
def embed_script() -> Response:
    """Serve the script that renders `<div data-ownfeed>` elements on a host page."""
    response = send_from_directory(current_app.static_folder, "embed.js", max_age=300)
    response.headers["Content-Type"] = "text/javascript; charset=utf-8"
    return response


def allowed_origins() -> list[str]:
    return current_app.config["IMAGES_ALLOWED_ORIGINS"]


def embed_policy() -> str:
    """Return the embed page's CSP: no script, and framing by the allowed origins."""
    origins = allowed_origins()
    ancestors = "*" if "*" in origins else " ".join(["'self'", *origins])
    return (
        "default-src 'none'; img-src 'self' https: data:; style-src 'self'; "
        f"base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
    )


@bp.after_request
def add_cors(response: Response) -> Response:
    """Allow the configured origins to read feed responses, and vary on Origin."""
    # Set as one string: parsing and rebuilding the Vary header set per request
    # costs more than the rest of a cached response.
    varies_on_accept = "Accept" in response.headers.get("Vary", "")
    if varies_on_accept or request.endpoint in ("images.images", "images.embed_page"):
        response.headers["Vary"] = "Origin, Accept"
    else:
        response.headers["Vary"] = "Origin"
    origin = request.headers.get("Origin")
    origins = allowed_origins()
    if "*" in origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin.rstrip("/") in origins:
        response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
