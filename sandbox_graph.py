"""The sandbox's graph.instagram.com: token exchange and refresh, /me and media.

Every request passes the same checks as on Instagram, in this order: the outage
switch, the API version, the access token (signature, expiry, invalidations) and
the rate limit switch. Errors use Graph's shape, `{"error": {...}}`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, request, url_for

import sandbox_data as data
import sandbox_state as state
from sandbox_fields import (
    MEDIA_FIELDS,
    PROFILE_FIELDS,
    Fields,
    FieldsError,
    check_fields,
    decode_cursor,
    encode_cursor,
    parse_fields,
    render_media,
    render_profile,
)

logger = logging.getLogger(__name__)

bp = Blueprint("graph", __name__, url_prefix="/graph")

LONG_TOKEN_SECONDS = 5183944  # the `expires_in` Instagram sends, about 60 days
REFRESH_MIN_AGE = timedelta(hours=24)
USER_NODES = frozenset({"me", data.IG_USER_ID, data.APP_SCOPED_ID})
_TRACE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class GraphError(Exception):
    """A Graph API error, sent as `{"error": {...}}` with an HTTP status."""

    def __init__(
        self,
        message: str,
        code: int,
        subcode: int | None = None,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.status = status
        self.headers = headers or {}


class Outage(Exception):
    """A simulated outage, which the blueprint turns into a 503 HTML page."""


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialize like Graph does: ASCII only, with every "/" escaped as "\\/"."""
    body = json.dumps(payload, separators=(",", ":")).replace("/", "\\/")
    return Response(
        body, status, headers=headers, content_type="application/json; charset=UTF-8"
    )


@bp.errorhandler(GraphError)
def _graph_error(error: GraphError) -> Response:
    body: dict[str, Any] = {"message": error.message, "type": "OAuthException"}
    if error.code in (2, 4):
        body["is_transient"] = True
    body["code"] = error.code
    if error.subcode is not None:
        body["error_subcode"] = error.subcode
    body["fbtrace_id"] = "".join(secrets.choice(_TRACE_ALPHABET) for _ in range(23))
    headers = dict(error.headers)
    if error.code == 190:
        headers["WWW-Authenticate"] = (
            f'OAuth "Facebook Platform" "invalid_token" "{error.message}"'
        )
    logger.info(
        "Sandbox Graph error %s/%s on %s", error.code, error.subcode, request.path
    )
    return json_response({"error": body}, error.status, headers)


@bp.errorhandler(FieldsError)
def _fields_error(error: FieldsError) -> Response:
    return _graph_error(GraphError(str(error), 100))


# Tokens ---------------------------------------------------------------------------


@bp.get("/access_token")
def exchange_long_lived() -> Response:
    """Exchange a short-lived token for a long-lived one (grant ig_exchange_token)."""
    token = _check_graph_request()
    if request.args.get("grant_type") != "ig_exchange_token":
        raise GraphError("Invalid grant_type: send grant_type=ig_exchange_token.", 100)
    secret = request.args.get("client_secret", "")
    if not hmac.compare_digest(secret, state.client_secret()):
        raise GraphError("Error validating client secret.", 101)
    # NOTE: Instagram's response to exchanging a long-lived token is not
    # documented, so this message is the sandbox's own.
    if token["k"] != "short":
        raise GraphError(
            "Unsupported request: this token is already long-lived. Refresh it "
            "with grant_type=ig_refresh_token instead.",
            100,
        )
    return _long_lived_response()


@bp.get("/refresh_access_token")
def refresh_long_lived() -> Response:
    """Refresh a long-lived token that is at least 24 hours old (ig_refresh_token)."""
    token = _check_graph_request()
    if request.args.get("grant_type") != "ig_refresh_token":
        raise GraphError("Invalid grant_type: send grant_type=ig_refresh_token.", 100)
    if state.read()["switches"]["refresh_fails"]:
        raise GraphError(
            "An unexpected error has occurred. Please retry your request later.",
            2,
            status=500,
        )
    # NOTE: Instagram documents these two rules but not their messages, so the
    # wording is the sandbox's own.
    if token["k"] != "long":
        raise GraphError(
            "Unsupported request: only long-lived tokens can be refreshed. "
            "Exchange this token with grant_type=ig_exchange_token first.",
            100,
        )
    issued_at = datetime.fromtimestamp(token["iat"], UTC)
    if state.now() - issued_at < REFRESH_MIN_AGE:
        raise GraphError(
            "Unsupported request: a long-lived token can be refreshed once it is "
            "at least 24 hours old.",
            100,
        )
    return _long_lived_response()


def _long_lived_response() -> Response:
    token = state.issue_token("long", state.now(), LONG_TOKEN_SECONDS)
    logger.info("Sandbox issued a long-lived token")
    body = {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": LONG_TOKEN_SECONDS,
    }
    return json_response(body)


# Data -----------------------------------------------------------------------------


@bp.get("/<version>/<node_id>")
def get_node(version: str, node_id: str) -> Response:
    """Return the profile (for /me or the user's ids) or one media object."""
    _check_graph_request(version)
    fields = parse_fields(request.args.get("fields"))
    if node_id in USER_NODES:
        check_fields(fields, PROFILE_FIELDS, "IGUser")
        profile = render_profile(fields, state.post_count(), state.cdn_url)
        return json_response(profile)

    record = _find_media(node_id)
    check_fields(fields, MEDIA_FIELDS, "IGMedia")
    return json_response(render_media(record, fields, state.cdn_url))


@bp.get("/<version>/<node_id>/<edge>")
def get_edge(version: str, node_id: str, edge: str) -> Response:
    """Return the user's media page, or an album's children."""
    _check_graph_request(version)
    fields = parse_fields(request.args.get("fields"))
    if node_id in USER_NODES and edge == "media":
        check_fields(fields, MEDIA_FIELDS, "IGMedia")
        return json_response(_media_page(version, fields))
    if node_id not in USER_NODES and edge == "children":
        record = _find_media(node_id)
        check_fields(fields, MEDIA_FIELDS, "IGMedia")
        children = [
            render_media(child, fields, state.cdn_url) for child in record["children"]
        ]
        return json_response({"data": children})
    raise GraphError(f"Unknown path components: /{edge}", 2500)


def _media_page(version: str, fields: Fields) -> dict[str, Any]:
    """Slice the posts for one page and build Graph's `paging` object."""
    posts = data.all_posts(state.post_count())
    limit = _request_limit()
    after = request.args.get("after")
    before = request.args.get("before")
    if after:
        start = _cursor_position(after, posts, "after") + 1
        end = start + limit
    elif before:
        end = _cursor_position(before, posts, "before")
        start = max(end - limit, 0)
    else:
        start, end = 0, limit
    page = posts[start:end]

    body: dict[str, Any] = {
        "data": [render_media(post, fields, state.cdn_url) for post in page]
    }
    if not page:
        return body
    cursors = {
        "before": encode_cursor(page[0]["id"]),
        "after": encode_cursor(page[-1]["id"]),
    }
    body["paging"] = {"cursors": cursors}
    if end < len(posts):
        body["paging"]["next"] = _page_url(version, limit, after=cursors["after"])
    if start > 0:
        body["paging"]["previous"] = _page_url(version, limit, before=cursors["before"])
    return body


def _page_url(version: str, limit: int, **cursor: str) -> str:
    """Build a paging link the way Instagram does: on the numeric user id."""
    params = {"access_token": _request_token()}
    if request.args.get("fields"):
        params["fields"] = request.args["fields"]
    params["limit"] = str(limit)
    params.update(cursor)
    base = url_for(
        "sandbox.graph.get_edge",
        version=version,
        node_id=data.IG_USER_ID,
        edge="media",
        _external=True,
    )
    return f"{base}?{urlencode(params)}"


def _cursor_position(cursor: str, posts: list[dict[str, Any]], name: str) -> int:
    media_id = decode_cursor(cursor)
    for position, post in enumerate(posts):
        if post["id"] == media_id:
            return position
    raise GraphError(f"(#100) The {name} cursor is not valid.", 100)


def _request_limit() -> int:
    text = request.args.get("limit")
    if text is None:
        return 25
    if not text.isdigit() or int(text) < 1:
        raise GraphError("(#100) The parameter limit must be a positive integer.", 100)
    # NOTE: Instagram documents no maximum page size, so the cap of 100 is a guess.
    return min(int(text), 100)


def _find_media(media_id: str) -> dict[str, Any]:
    record = data.find_media(state.post_count(), media_id)
    if record is None:
        raise GraphError(
            f"Unsupported get request. Object with ID '{media_id}' does not exist, "
            "cannot be loaded due to missing permissions, or does not support this "
            "operation.",
            100,
            subcode=33,
        )
    return record


def _check_graph_request(version: str | None = None) -> dict[str, Any]:
    """Apply the outage, version, token and rate limit checks in Instagram's order.

    Returns the token's payload.
    """
    current = state.read()
    if current["switches"]["outage"]:
        raise Outage()
    if version is not None and not re.fullmatch(r"v\d+\.\d+", version):
        raise GraphError(f"Unknown path components: /{version}", 2500)
    token = _check_token(_request_token(), current)
    if current["switches"]["rate_limit"]:
        raise _rate_limit_error()
    return token


def _check_token(text: str, current: dict[str, Any]) -> dict[str, Any]:
    """Return the token's payload, or raise the Graph error Instagram would send."""
    token = state.open_token(text) if text else None
    if token is None:
        raise GraphError("Invalid OAuth access token - Cannot parse access token", 190)
    now = state.now()
    expires_at = datetime.fromtimestamp(token["exp"], UTC)
    if now >= expires_at:
        raise _expired_error(expires_at, now)

    invalidation = state.invalidation_for(token, current)
    if invalidation is None:
        return token
    reason = invalidation["reason"]
    if reason == "expired":
        raise _expired_error(datetime.fromisoformat(invalidation["at"]), now)
    if reason == "password_changed":
        message = (
            "Error validating access token: The session has been invalidated because "
            "the user changed their password or Facebook has changed the session for "
            "security reasons."
        )
    else:
        message = (
            "Error validating access token: The user has not authorized application "
            f"{state.client_id()}."
        )
    raise GraphError(message, 190, subcode=invalidation["subcode"])


def _expired_error(expired_at: datetime, now: datetime) -> GraphError:
    def when(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%A, %d-%b-%y %H:%M:%S UTC")

    message = (
        f"Error validating access token: Session has expired on {when(expired_at)}. "
        f"The current time is {when(now)}."
    )
    return GraphError(message, 190, subcode=463)


def _rate_limit_error() -> GraphError:
    usage = {"call_count": 100, "total_cputime": 31, "total_time": 47}
    business_usage = {
        data.IG_USER_ID: [
            {"type": "instagram", **usage, "estimated_time_to_regain_access": 15}
        ]
    }
    headers = {
        "X-App-Usage": json.dumps(usage),
        "X-Business-Use-Case-Usage": json.dumps(business_usage),
    }
    return GraphError("Application request limit reached", 4, headers=headers)


def _request_token() -> str:
    token = request.args.get("access_token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() in ("bearer", "oauth"):
            token = value.strip()
    return token
