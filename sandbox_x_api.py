"""The X sandbox's API v2 reads: users, timelines, recent search and liked posts.

Every request passes X's checks in this order. First the credentials: an
app-only bearer, an OAuth 2.0 user token or an OAuth 1.0a signature. Then the
usage cap and the rate-limit window, whose x-rate-limit-* headers go on every
response. Last, whether the endpoint needs user context, and the OAuth 2.0
scopes. Errors use X's shapes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, request, url_for

import sandbox_state
import sandbox_x_auth as auth
import sandbox_x_data as data

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/2")

# Requests per 15-minute window. SANDBOX_X_RATE_LIMIT, when set, replaces all of
# them (for tests). NOTE: these approximate X's user-context limits and may differ
# from the limits X applies today.
RATE_LIMITS = {
    "/2/users/me": 75,
    "/2/users/by/username/:username": 900,
    "/2/users/:id/tweets": 900,
    "/2/tweets/search/recent": 450,
    "/2/users/:id/liked_tweets": 75,
}
READ_SCOPES = ("tweet.read", "users.read")
USERNAME = re.compile(r"[A-Za-z0-9_]{1,15}")
MAX_QUERY_LENGTH = 512
PROBLEMS = "https://api.x.com/2/problems/"


class Reject(Exception):
    """A request X would reject, carrying the response X would send."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass(frozen=True)
class Caller:
    """The sender of an API request: "app", "oauth2" or "oauth1", with its scopes."""

    kind: str
    scopes: tuple[str, ...] = ()


def json_response(
    body: Any, status: int = 200, content_type: str = "application/json"
) -> Response:
    """Serialize as X does: UTF-8 JSON, non-ASCII characters unescaped."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(text, status, content_type=f"{content_type}; charset=utf-8")


def problem(
    status: int, title: str, detail: str, kind: str | None = None, **extra: Any
) -> Response:
    """Build an API v2 `application/problem+json` error."""
    body = {
        "title": title,
        "detail": detail,
        "type": PROBLEMS + kind if kind else "about:blank",
        "status": status,
    }
    body.update(extra)
    return json_response(body, status, "application/problem+json")


def old_error(status: int, code: int, message: str, **extra: Any) -> Response:
    """Build an error in the older `{"errors": [{"code", "message"}]}` shape."""
    return json_response(
        {"errors": [{"code": code, "message": message, **extra}]}, status
    )


def now() -> int:
    """Return the app's clock (the `ownfeed_clock` extension) in Unix seconds."""
    return int(sandbox_state.now().timestamp())


@bp.after_request
def _rate_headers(response: Response) -> Response:
    response.headers.update(g.get("rate_headers", {}))
    return response


def media_url(name: str) -> str:
    """Return the absolute URL of a sandbox image."""
    # The URL carries this server's port, as X's carry its image host, so
    # services.py drops the saved X feeds when the server moves to another port.
    return url_for("sandbox_x.image", name=name, _external=True)


@bp.get("/users/me")
def users_me() -> Response:
    """Return the authenticated user (user context only)."""
    _begin("/2/users/me", user_only=True, scopes=("users.read", "tweet.read"))
    fields = _fields()
    return json_response(
        {"data": data.render_user(data.OWNER, fields["user.fields"], media_url)}
    )


@bp.get("/users/by/username/<username>")
def user_by_username(username: str) -> Response:
    """Return a user by handle, or HTTP 200 with only `errors` for an unknown one."""
    _begin("/2/users/by/username/:username", scopes=("users.read", "tweet.read"))
    if not USERNAME.fullmatch(username):
        raise Reject(
            _invalid(
                "username",
                username,
                f"The `username` query parameter value [{username}] "
                "does not match ^[A-Za-z0-9_]{1,15}$",
            )
        )
    fields = _fields()
    user = data.find_user(username=username)
    if user is None:
        return json_response(_not_found("user", "username", username))
    return json_response(
        {"data": data.render_user(user, fields["user.fields"], media_url)}
    )


@bp.get("/users/<user_id>/tweets")
def user_tweets(user_id: str) -> Response:
    """Return a user's posts, newest first, with `exclude` and paging."""
    _begin("/2/users/:id/tweets", scopes=READ_SCOPES)
    _check_user_id(user_id)
    fields = _fields()
    excluded = {name for name in request.args.get("exclude", "").split(",") if name}
    if excluded - {"replies", "retweets"}:
        raise Reject(
            _invalid(
                "exclude",
                request.args["exclude"],
                "The `exclude` query parameter value "
                f"[{request.args['exclude']}] is not one of "
                "[replies, retweets]",
            )
        )
    if data.find_user(user_id=user_id) is None:
        return json_response(_not_found("user", "id", user_id))
    kinds = {"replies": "reply", "retweets": "retweet"}
    posts = [
        post
        for post in data.posts_by(user_id)
        if post["kind"] not in {kinds[name] for name in excluded}
    ]
    return json_response(_paged(posts, fields, "pagination_token", 5, 10))


@bp.get("/tweets/search/recent")
def search_recent() -> Response:
    """Return the posts matching `query`, newest first, paged with next_token."""
    _begin("/2/tweets/search/recent", scopes=READ_SCOPES)
    query = request.args.get("query", "")
    if not query.strip():
        raise Reject(
            _invalid("query", query, "The `query` query parameter can not be empty")
        )
    if len(query) > MAX_QUERY_LENGTH:
        raise Reject(
            _invalid(
                "query",
                query[:40],
                "The `query` query parameter value is too long: "
                f"{len(query)} characters, at most {MAX_QUERY_LENGTH}",
            )
        )
    fields = _fields()
    return json_response(_paged(data.search(query), fields, "next_token", 10, 10))


@bp.get("/users/<user_id>/liked_tweets")
def liked_tweets(user_id: str) -> Response:
    """Return the posts the owner liked (user context, the owner's own likes only)."""
    _begin(
        "/2/users/:id/liked_tweets", user_only=True, scopes=(*READ_SCOPES, "like.read")
    )
    _check_user_id(user_id)
    fields = _fields()
    if user_id != data.OWNER_ID:
        # NOTE: X's exact response for another user's likes is not documented.
        raise Reject(
            problem(
                403,
                "Forbidden",
                "Likes are private: you can only read your own likes.",
                "not-authorized-for-resource",
            )
        )
    return json_response(
        _paged(list(data.liked_posts()), fields, "pagination_token", 10, 100)
    )


def _begin(
    endpoint: str, *, user_only: bool = False, scopes: tuple[str, ...] = ()
) -> Caller:
    """Authenticate, count the request against its window, and check access."""
    caller = _authenticate()
    limit = current_app.config.get("SANDBOX_X_RATE_LIMIT") or RATE_LIMITS[endpoint]
    check = auth.count_request(endpoint, int(limit), now())
    g.rate_headers = check.headers()
    if check.usage_capped:
        raise Reject(
            problem(
                429,
                "UsageCapExceeded",
                "Usage cap exceeded: Monthly product cap",
                "usage-capped",
                period="Monthly",
                scope="Product",
            )
        )
    if check.limited:
        raise Reject(problem(429, "Too Many Requests", "Too Many Requests"))
    if user_only and caller.kind == "app":
        raise Reject(
            problem(
                403,
                "Unsupported Authentication",
                "Authenticating with OAuth 2.0 Application-Only is forbidden for this "
                "endpoint.  Supported authentication types are [OAuth 1.0a User "
                "Context, OAuth 2.0 User Context].",
                "unsupported-authentication",
            )
        )
    missing = [name for name in scopes if name not in caller.scopes]
    if caller.kind == "oauth2" and missing:
        raise Reject(
            problem(403, "Forbidden", f"Missing OAuth 2.0 scopes: {' '.join(missing)}")
        )
    return caller


def _authenticate() -> Caller:
    """Return the caller, or reject the request as X would."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        token = value.strip()
        if auth.same(token, auth.app_bearer()):
            return Caller("app")
        payload = auth.unseal("access", token)
        if payload is not None and payload["exp"] > now():
            return Caller("oauth2", tuple(payload["s"]))
    elif scheme.lower() == "oauth":
        try:
            auth.verify_oauth1(header, now())
        except auth.OAuth1Failure as failure:
            raise Reject(old_error(401, failure.code, failure.message)) from None
        return Caller("oauth1", tuple(auth.KNOWN_SCOPES))
    raise Reject(problem(401, "Unauthorized", "Unauthorized"))


def _fields() -> dict[str, set[str]]:
    """Parse the field and expansion parameters, rejecting unknown names."""
    known = {
        "tweet.fields": data.TWEET_FIELDS,
        "media.fields": data.MEDIA_FIELDS,
        "user.fields": data.USER_FIELDS,
        "expansions": data.EXPANSIONS,
    }
    parsed = {}
    for name, allowed in known.items():
        values = {value for value in request.args.get(name, "").split(",") if value}
        unknown = sorted(values - allowed)
        if unknown:
            raise Reject(
                _invalid(
                    name,
                    ",".join(unknown),
                    f"The `{name}` query parameter value [{','.join(unknown)}] is not "
                    f"one of [{', '.join(sorted(allowed))}]",
                )
            )
        parsed[name] = values
    return parsed


def _paged(
    posts: list[dict[str, Any]],
    fields: dict[str, set[str]],
    token_name: str,
    minimum: int,
    default: int,
) -> dict[str, Any]:
    """Slice one page of posts and build `meta` with the next and previous tokens."""
    size = _max_results(minimum, default)
    token = request.args.get(token_name)
    start = _token_offset(token, token_name) if token else 0
    page = posts[start : start + size]

    body = data.render_posts(page, fields, media_url)
    meta: dict[str, Any] = {"result_count": len(page)}
    if page:
        meta["newest_id"] = page[0]["id"]
        meta["oldest_id"] = page[-1]["id"]
    else:
        del body["data"]  # X leaves `data` out of an empty page.
    if start + size < len(posts):
        meta["next_token"] = _page_token(start + size)
    if start > 0:
        meta["previous_token"] = _page_token(max(start - size, 0))
    body["meta"] = meta
    return body


def _max_results(minimum: int, default: int) -> int:
    text = request.args.get("max_results")
    if text is None:
        return default
    if not text.isdigit() or not minimum <= int(text) <= 100:
        raise Reject(
            _invalid(
                "max_results",
                text,
                f"The `max_results` query parameter value [{text}] is "
                f"not between {minimum} and 100",
            )
        )
    return int(text)


def _page_token(offset: int) -> str:
    """Encode a list offset as an opaque token, like X's lower-case base32 ones."""
    return base64.b32encode(f"ofs:{offset}".encode()).decode().rstrip("=").lower()


def _token_offset(token: str, name: str) -> int:
    try:
        padded = token.upper() + "=" * (-len(token) % 8)
        text = base64.b32decode(padded).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not re.fullmatch(r"ofs:\d{1,6}", text):
        raise Reject(
            _invalid(
                name,
                token,
                f"The `{name}` query parameter value [{token[:40]}] is not valid",
            )
        )
    return int(text[4:])


def _check_user_id(user_id: str) -> None:
    if not re.fullmatch(r"[0-9]{1,19}", user_id):
        raise Reject(
            _invalid(
                "id",
                user_id,
                f"The `id` query parameter value [{user_id[:40]}] is not valid",
            )
        )


def _invalid(parameter: str, value: str, message: str) -> Response:
    return problem(
        400,
        "Invalid Request",
        "One or more parameters to your request was invalid.",
        "invalid-request",
        errors=[{"parameters": {parameter: [value]}, "message": message}],
    )


def _not_found(resource: str, parameter: str, value: str) -> dict[str, Any]:
    """Build X's HTTP 200 body for a lookup that found nothing."""
    return {
        "errors": [
            {
                "value": value,
                "detail": f"Could not find {resource} with {parameter}: [{value}].",
                "title": "Not Found Error",
                "resource_type": resource,
                "parameter": parameter,
                "resource_id": value,
                "type": PROBLEMS + "resource-not-found",
            }
        ]
    }
