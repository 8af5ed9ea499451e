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
from collections.abc import Callable, Iterator
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, unquote_plus

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template,
    render_template_string,
    request,
    send_from_directory,
)

import media
import search
from feed import FeedCache, FeedError, Fetch, Fetched, Snapshot
from instagram import InstagramError, RateLimitedError, TokenInvalidError
from messages import invalid_parameter_message
from posts import normalize_posts
from services import instagram_client, now, services, token_store
from timeutil import to_iso
from token_store import TokenStoreError
from tokens import record_token_rejected

logger = logging.getLogger(__name__)

bp = Blueprint("images", __name__)

DEFAULT_LIMIT = 12
MAX_LIMIT = 100
# How long browsers and CDNs may reuse a response before asking again.
BROWSER_CACHE_SECONDS = 60
RENDERED_CACHE_SIZE = 256
FEED_CACHE_CONTROL = (
    f"public, max-age={BROWSER_CACHE_SECONDS}, stale-while-revalidate=300"
)
HTML_TYPE = "text/html; charset=utf-8"
# The endpoints whose format may come from the Accept header.
FEED_ENDPOINTS = ("images.images", "images.embed_page")
PUBLIC_ERRORS = {
    "not_connected": "not_connected",
    "reauthorization_required": "reauthorization_required",
    "user_context_required": "user_context_required",
}


CURSOR_VALUES = "the cursor from a previous response's paging.next"
# The embed pages' error page: the message alone in the embed page's frame.
EMBED_ERROR_TEMPLATE = (
    '{% extends "feed/embed.html" %}{% block list %}<p>{{ message }}</p>{% endblock %}'
)


class ParameterError(Exception):
    """A query parameter is invalid; the message names it and its valid values."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def invalid_parameter(
    name: str, value: str | None, valid: str, problem: str = "is invalid"
) -> ParameterError:
    """Build the error for one parameter: its problem, its value and what to send."""
    return ParameterError(name, invalid_parameter_message(name, value, valid, problem))


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
    try:
        record = token_store().peek("instagram")
    except TokenStoreError:
        # The admin pages and /healthz report the file and the fix.
        # Visitors still get the saved posts.
        snapshot = cache.snapshot()
        if snapshot.has_posts:
            return snapshot, snapshot.is_stale(now(), cache.ttl, fetchable=False)
        raise FeedError(
            "upstream_unavailable", "The feed cannot be served right now."
        ) from None
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
        raise invalid_parameter("limit", text, f"a whole number from 1 to {MAX_LIMIT}")
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
        raise invalid_parameter("after", text, CURSOR_VALUES) from None
    if not post_id.isdigit() or len(post_id) > 64:
        raise invalid_parameter("after", text, CURSOR_VALUES)
    return timestamp, post_id


def parse_format(text: str | None) -> str:
    """Return "json" or "html" from `format` (any case), else from Accept."""
    req = request._get_current_object()
    if text:
        page_format = text.lower()
        if page_format in ("json", "html"):
            return page_format
        raise invalid_parameter("format", text, "json or html")
    if not req.environ.get("HTTP_ACCEPT"):
        return "json"
    best = req.accept_mimetypes.best_match(["application/json", "text/html"])
    return "html" if best == "text/html" else "json"


# --- selection ------------------------------------------------------------


def select_page(
    snapshot: Snapshot,
    query: search.Query | None,
    types: frozenset[str] | None,
    cursor: tuple[str, str] | None,
    limit: int,
) -> tuple[list[int], dict[str, Any] | None]:
    """Filter all kept posts and return the positions of the page after `cursor`.

    Also returns the page's last post when more posts follow it, else None.
    Posts are ordered newest first by (timestamp, id), so a cursor names a
    place in that order and stays valid when the feed is refetched.
    """
    posts = snapshot.posts or []
    selected = search.positions(snapshot.search_index().select(query, types))
    if cursor is not None:
        selected = (
            position
            for position in selected
            if (posts[position]["timestamp"] or "", posts[position]["id"]) < cursor
        )
    return page_of(posts, selected, limit)


def page_of(
    posts: list[dict[str, Any]], selected: Iterator[int], limit: int
) -> tuple[list[int], dict[str, Any] | None]:
    """Take up to `limit` positions, and the last post when more positions follow."""
    page = list(islice(selected, limit + 1))
    if len(page) <= limit:
        return page, None
    del page[limit:]
    return page, posts[page[-1]]


# --- responses ------------------------------------------------------------


class Rendered(NamedTuple):
    """A rendered feed body, with the feed version and staleness it shows.

    A named tuple, which is quicker to make than a frozen dataclass: one is
    made for every request that misses the rendered cache.
    """

    version: str
    stale: bool
    page_format: str
    body: bytes
    etag: str
    # The request's parsed parameters, valid for as long as the entry is kept.
    parameters: Any

    @classmethod
    def of(
        cls,
        snapshot: Snapshot,
        stale: bool,
        page_format: str,
        body: bytes,
        parameters: Any,
        etag: str | None = None,
    ) -> Rendered:
        """Keep `body` with its ETag: `etag` when given, else a hash of the body."""
        if etag is None:
            etag = hashlib.sha256(body).hexdigest()[:32]
        return cls(snapshot.version, stale, page_format, body, etag, parameters)

    def shows(self, snapshot: Snapshot, stale: bool) -> bool:
        return self.version == snapshot.version and self.stale == stale

    def response(self, vary: str = "Origin, Accept") -> Response:
        """Return the body (or a 304) with its caching and CORS headers."""
        return cacheable_response(self.body, self.etag, self.page_format, vary)


class RenderedCache:
    """Rendered bodies keyed by request, least recently used out.

    A body is kept the second time its request misses, while the first miss
    is among the last `size` misses of requests not kept. One-off requests,
    such as a crawler's walk through searches or cursors, then neither evict
    the kept pages nor pay for keeping their own.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[tuple, Rendered] = OrderedDict()
        # Keys that missed once and were not kept, oldest first.
        self.missed_once: dict[tuple, None] = {}
        self.lock = threading.Lock()

    def get(self, key: tuple) -> Rendered | None:
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: Rendered) -> None:
        """Keep `entry` for `key` if the key is kept already or missed before."""
        with self.lock:
            if key not in self.entries:
                if key not in self.missed_once:
                    self.missed_once[key] = None
                    if len(self.missed_once) > self.size:
                        del self.missed_once[next(iter(self.missed_once))]
                    return
                del self.missed_once[key]
            self.entries[key] = entry
            self.entries.move_to_end(key)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


def rendered_cache() -> RenderedCache:
    extensions = current_app.extensions
    if "ownfeed_rendered" not in extensions:
        extensions["ownfeed_rendered"] = RenderedCache(RENDERED_CACHE_SIZE)
    return extensions["ownfeed_rendered"]


class FeedParameters(NamedTuple):
    limit: int
    cursor: tuple[str, str] | None
    query: search.Query | None
    types: frozenset[str] | None
    page_format: str


def first_parameters() -> dict[str, str]:
    """Return the first value of each query parameter, decoded as `request.args` is.

    A plain dict: Werkzeug's MultiDict costs more to build than the parsing,
    and a missing key in it raises and catches an exception on every get.
    """
    text = request.query_string.decode()
    if "%" in text:
        pairs = parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote")
    else:
        # Nothing is percent-encoded: split as parse_qsl does, without its
        # calls for each pair. A "+" still stands for a space.
        text = text.replace("+", " ")
        pairs = [part.partition("=")[::2] for part in text.split("&") if part]
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    return first


def parse_feed_parameters(page_format: str | None) -> FeedParameters:
    """Parse `/images` parameters; raises ParameterError naming the first bad one."""
    first = first_parameters()
    limit = parse_limit(first.get("limit"))
    cursor = decode_cursor(first.get("after"))
    try:
        query = search.parse_query(first.get("q"))
        types = search.parse_types(first.get("type"))
    except search.QueryError as err:
        raise ParameterError(err.parameter, err.message) from None
    page_format = page_format or parse_format(first.get("format"))
    return FeedParameters(limit, cursor, query, types, page_format)


def feed_response(view: str, page_format: str | None = None) -> Response:
    """Build the response for `/images` or `/images/embed` from the cached feed.

    Bodies are kept by the raw request (query string, and Accept when it picks
    the format) with its parsed parameters, so a repeated request skips
    parsing them. A kept body is served while the feed version and staleness
    it shows are current.
    """
    req = request._get_current_object()
    accept = None if page_format else req.environ.get("HTTP_ACCEPT")
    host = req.host
    request_key = (view, page_format, req.query_string, accept, req.scheme, host)
    cache = rendered_cache()
    entry = cache.get(request_key)
    if entry is not None:
        parameters = entry.parameters
    else:
        try:
            parameters = parse_feed_parameters(page_format)
        except ParameterError as err:
            if view == "embed":
                return embed_error_page(400, err.message)
            return error_response(400, "invalid_parameter", err.message, err.parameter)

    try:
        snapshot, stale = current_feed()
    except FeedError as err:
        return unavailable_response(err, view, parameters.page_format)
    if entry is not None and entry.shows(snapshot, stale):
        return entry.response()

    page, last = select_page(
        snapshot,
        parameters.query,
        parameters.types,
        parameters.cursor,
        parameters.limit,
    )
    next_url = None
    if last is not None:
        next_url = next_page_url(encode_cursor(last))
    proxy = current_app.config["MEDIA_PROXY"]
    rewrite = media.proxied_post if proxy else media.unproxied_post
    if parameters.page_format == "json":
        # The rewritten URLs depend on the address the request came to.
        variant = (proxy, req.scheme, host, req.script_root)
        body, etag = json_feed_body(snapshot, page, next_url, stale, rewrite, variant)
    else:
        template = "feed/embed.html" if view == "embed" else "feed/grid.html"
        posts = [rewrite(snapshot.posts[position]) for position in page]
        body = render_template(template, posts=posts, next_url=next_url).encode()
        etag = None
    entry = Rendered.of(snapshot, stale, parameters.page_format, body, parameters, etag)
    cache.put(request_key, entry)
    return entry.response()


def json_feed_body(
    snapshot: Snapshot,
    page: list[int],
    next_url: str | None,
    stale: bool,
    rewrite: Callable[[dict[str, Any]], dict[str, Any]],
    variant: tuple,
    extra: dict[str, Any] | None = None,
) -> tuple[bytes, str]:
    """Return the posts at the positions in `page` as a JSON feed page, and its ETag.

    The page has data, paging, account, fetched_at, `extra` and stale. Each
    post is rewritten, serialised and hashed once per feed version and
    `variant` (what the rewriting depends on), so a page of a new search costs
    joining bytes. So are the account, fetched_at and `extra` fields, whose
    values must depend on the snapshot alone. The ETag hashes the posts'
    digests and the rest of the body, so it changes whenever the body does,
    without hashing the whole body.
    """
    serialized = snapshot.memo(
        ("json", variant), lambda: SerializedPosts(snapshot.posts or [], rewrite)
    )
    texts, digests = serialized.of(page)
    fields = snapshot.memo(
        ("json-fields", *sorted(extra or ())),
        lambda: _json(
            {
                "account": {"username": snapshot.account.get("username")},
                "fetched_at": to_iso(snapshot.fetched_at),
                **(extra or {}),
            }
        )[1:-1].encode(),
    )
    tail = b"".join(
        (
            b'"paging":{"next":',
            _json(next_url).encode(),
            b"},",
            fields,
            b',"stale":true}' if stale else b',"stale":false}',
        )
    )
    body = b"".join((b'{"data":[', b",".join(texts), b"],", tail))
    etag = hashlib.sha256(b"".join(digests) + tail).hexdigest()[:32]
    return body, etag


class SerializedPosts:
    """The JSON of each post of a feed version, and its digest, by position.

    A post is serialised when a page first shows it. Lists by position, rather
    than a dict by id, keep a page's lookups to two list reads per post.
    """

    def __init__(
        self,
        posts: list[dict[str, Any]],
        rewrite: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.posts = posts
        self.rewrite = rewrite
        self.texts: list[bytes | None] = [None] * len(posts)
        self.digests: list[bytes | None] = [None] * len(posts)

    def of(self, page: list[int]) -> tuple[list[bytes], list[bytes]]:
        """Return the JSON and the digests of the posts at the positions in `page`."""
        texts, digests = self.texts, self.digests
        for position in page:
            if texts[position] is None:
                text = _json(self.rewrite(self.posts[position])).encode()
                # Threads that serialise the same post store equal values.
                digests[position] = hashlib.sha256(text).digest()
                texts[position] = text
        return (
            [texts[position] for position in page],
            [digests[position] for position in page],
        )


# One encoder for every body: json.dumps builds a new one per call when given
# options, which costs more than encoding a small document.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json(value: Any) -> str:
    return _ENCODER.encode(value)


def next_page_url(cursor: str) -> str:
    """Return this request's URL with `after` set to `cursor`.

    The other parameters are kept as the request sent them. The feed routes
    take no path parameters, so the route's rule is the path.
    """
    req = request._get_current_object()
    raw = req.query_string
    if not raw.isascii():
        # Clients that send raw UTF-8 get it percent-encoded, as browsers send it.
        raw = quote(raw, safe="=&+%/:;,@!$'()*").encode("ascii")
    text = raw.decode("ascii")
    parts = [part for part in text.split("&") if part]
    if "after" in text or "%" in text:
        # Only a part whose name contains "after", maybe percent-encoded, is the cursor.
        parts = [
            part for part in parts if unquote_plus(part.partition("=")[0]) != "after"
        ]
    parts.append(f"after={cursor}")
    root = _quoted_path(req.script_root + req.url_rule.rule)
    return f"{req.scheme}://{req.host}{root}?{'&'.join(parts)}"


@lru_cache(maxsize=64)
def _quoted_path(path: str) -> str:
    """Percent-encode a route's path once: an app has few routes and mount points."""
    return quote(path)


def cacheable_response(
    body: bytes, etag: str, page_format: str, vary: str = "Origin, Accept"
) -> Response:
    """Return `body`, or a 304 when If-None-Match contains `etag` (unquoted).

    The CORS headers are set here at once, so `add_cors` leaves the response
    alone: a feed response is built with one list of headers.
    """
    req = request._get_current_object()
    headers = [
        ("ETag", f'"{etag}"'),
        ("Cache-Control", FEED_CACHE_CONTROL),
        *cors_headers(vary),
    ]
    # Werkzeug parses If-None-Match into unquoted tags; the weak comparison
    # (RFC 9110, section 13.1.2) also matches W/"..." and "*".
    if req.environ.get("HTTP_IF_NONE_MATCH") and (
        req.if_none_match.contains_weak(etag)
    ):
        response = Response(status=304, headers=headers)
    else:
        content_type = "application/json" if page_format == "json" else HTML_TYPE
        headers.append(("Content-Type", content_type))
        response = Response(body, headers=headers)
    response.has_cors_headers = True
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


def embed_error_page(status: int, message: str) -> Response:
    """Return an embed page that shows `message` (escaped) in place of the posts.

    An iframe shows its document to the visitor, so the embed pages report
    errors as HTML rather than JSON. The page carries the embed page's CSP.
    """
    page = render_template_string(EMBED_ERROR_TEMPLATE, message=message)
    response = Response(page, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = embed_policy()
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


def cors_headers(vary: str) -> list[tuple[str, str]]:
    """Return Vary, nosniff, and Access-Control-Allow-Origin for an allowed origin."""
    headers = [("Vary", vary), ("X-Content-Type-Options", "nosniff")]
    origins = allowed_origins()
    if "*" in origins:
        headers.append(("Access-Control-Allow-Origin", "*"))
    else:
        origin = request.environ.get("HTTP_ORIGIN")
        if origin and origin.rstrip("/") in origins:
            headers.append(("Access-Control-Allow-Origin", origin))
    return headers


@bp.after_request
def add_cors(response: Response) -> Response:
    """Allow the configured origins to read feed responses, and vary on Origin."""
    if getattr(response, "has_cors_headers", False):
        return response
    varies_on_accept = request.endpoint in FEED_ENDPOINTS or (
        "Accept" in response.headers.get("Vary", "")
    )
    for name, value in cors_headers("Origin, Accept" if varies_on_accept else "Origin"):
        response.headers[name] = value
    return response
