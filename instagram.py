"""The Instagram API client (Instagram API with Instagram Login).

`InstagramClient` covers the code exchange, the long-lived exchange, the refresh,
the profile and the media pages. Every HTTP call goes through `_request`, which
logs one line per call and leaves error mapping to `instagram_errors`. The access
token travels as the `access_token` query parameter, as Instagram documents, so
log lines and exception messages name a URL's path only, never its query.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests

from instagram_errors import (
    DEFAULT_RETRY_AFTER,
    MAX_RESPONSE_BYTES,
    RATE_LIMIT_CODES,
    RECONNECT,
    EmptyCodeError,
    InstagramError,
    OAuthExchangeError,
    RateLimitedError,
    TokenInvalidError,
    UpstreamUnavailableError,
    as_int,
    parse_response,
    read_body,
    redirect_error,
    transport_error,
    wrong_shape,
)

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "MEDIA_FIELDS",
    "PAGE_SIZE",
    "PROFILE_FIELDS",
    "RATE_LIMIT_CODES",
    "RECONNECT",
    "Endpoints",
    "InstagramClient",
    "InstagramError",
    "LongLivedToken",
    "MediaPage",
    "OAuthExchangeError",
    "RateLimitedError",
    "ShortLivedToken",
    "TokenInvalidError",
    "UpstreamUnavailableError",
]

logger = logging.getLogger(__name__)

MEDIA_FIELDS = (
    "id,caption,media_type,media_url,permalink,thumbnail_url,timestamp,username,"
    "children{id,media_type,media_url,thumbnail_url}"
)
PROFILE_FIELDS = "user_id,username,name,account_type,profile_picture_url,media_count"
PAGE_SIZE = 100
# Seconds a whole call may take, from connecting to the body's last byte.
RESPONSE_DEADLINE_SECONDS = 30.0
_LOG_LINE = "Instagram %s %s -> %s in %.0f ms"
_MEDIA_ID = re.compile(r"[0-9A-Za-z_]{1,64}")
_SECRET_FIELDS = ("access_token", "client_secret", "code")


@dataclass(frozen=True)
class Endpoints:
    """Instagram endpoint URLs, which tests and the sandbox point at another server."""

    authorize_url: str
    token_url: str
    graph_url: str
    api_version: str


@dataclass(frozen=True)
class ShortLivedToken:
    """Result of the code exchange, valid for one hour."""

    access_token: str
    user_id: str
    permissions: list[str]


@dataclass(frozen=True)
class LongLivedToken:
    """Result of the long-lived exchange or a refresh, with `expires_in` in seconds."""

    access_token: str
    token_type: str
    expires_in: int


@dataclass(frozen=True)
class MediaPage:
    """One page of media objects and the URL of the next page, if any."""

    items: list[dict[str, Any]]
    next_url: str | None


class InstagramClient:
    """Calls Instagram's OAuth and Graph endpoints through one session."""

    def __init__(
        self,
        endpoints: Endpoints,
        client_id: str,
        client_secret: str,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        deadline: float = RESPONSE_DEADLINE_SECONDS,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.endpoints = endpoints
        self._client_id = client_id
        self._client_secret = client_secret
        self._session = session or requests.Session()
        self._timeout = timeout
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._graph_url = endpoints.graph_url.rstrip("/")

    def authorize_url(
        self, redirect_uri: str, state: str, scope: str = "instagram_business_basic"
    ) -> str:
        """Build the URL that sends the owner's browser to Instagram's login."""
        query = urlencode(
            {
                "client_id": self._client_id,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "scope": scope,
                "state": state,
            }
        )
        base = self.endpoints.authorize_url
        if base.endswith(("?", "&")):
            return base + query
        return f"{base}{'&' if '?' in base else '?'}{query}"

    def exchange_code(self, code: str, redirect_uri: str) -> ShortLivedToken:
        """Exchange an authorization code for a short-lived token."""
        code = code.strip().removesuffix("#_")
        if not code:
            restart = "Start again from /admin/generate."
            raise EmptyCodeError(
                f"The authorization code is empty. {restart}", hint=restart
            )
        form = {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "grant_type": "authorization_code",
            "redirect_uri": redirect_uri,
            "code": code,
        }
        url = self.endpoints.token_url
        payload = self._request("POST", url, data=form)

        # Documented: {"data": [{...}]}. Seen in live traffic: the flat object.
        record = payload
        if "data" in payload:
            data = payload["data"]
            if not isinstance(data, list) or not data or not isinstance(data[0], dict):
                raise wrong_shape(url, "a token record inside `data`")
            record = data[0]
        return ShortLivedToken(
            access_token=_required_str(record, "access_token", url),
            user_id=_required_id(record, "user_id", url),
            permissions=_permissions(record.get("permissions")),
        )

    def exchange_long_lived(self, short_token: str) -> LongLivedToken:
        """Exchange a short-lived token for a 60-day token."""
        params = {
            "grant_type": "ig_exchange_token",
            "client_secret": self._client_secret,
            "access_token": short_token,
        }
        url = f"{self._graph_url}/access_token"
        return _long_lived(self._request("GET", url, params=params), url)

    def refresh(self, long_token: str) -> LongLivedToken:
        """Refresh a long-lived token that is at least 24 hours old."""
        params = {"grant_type": "ig_refresh_token", "access_token": long_token}
        url = f"{self._graph_url}/refresh_access_token"
        return _long_lived(self._request("GET", url, params=params), url)

    def get_profile(self, access_token: str) -> dict[str, Any]:
        """Fetch the profile, whose `user_id` is the professional account ID."""
        url = self._data_url("me")
        params = {"fields": f"{PROFILE_FIELDS},id", "access_token": access_token}
        payload = self._request("GET", url, params=params)

        # Documented as "Media_Creator", returned as "MEDIA_CREATOR".
        account_type = payload.get("account_type")
        if not isinstance(account_type, str) or not account_type:
            account_type = None
        return {
            "user_id": _required_id(payload, "user_id", url),
            "app_user_id": _required_id(payload, "id", url),
            "username": _required_str(payload, "username", url),
            "account_type": account_type.upper() if account_type else None,
            "name": payload.get("name"),
            "profile_picture_url": payload.get("profile_picture_url"),
            "media_count": as_int(payload.get("media_count")),
        }

    def get_media_page(
        self, access_token: str, *, limit: int = PAGE_SIZE, url: str | None = None
    ) -> MediaPage:
        """Fetch the first page of the owner's media, or the page at a `next` URL.

        A `next` URL is requested only on the Graph API's scheme, host and port,
        so the token never goes to another server. It is sent as it is, with the
        token added only when its query lacks one.
        """
        if limit < 1:
            raise ValueError(f"Invalid page size {limit}: it must be at least 1.")
        if url is None:
            url = self._data_url("me/media")
            params = {
                "fields": MEDIA_FIELDS,
                "limit": limit,
                "access_token": access_token,
            }
        else:
            self._check_graph_origin(url)
            sent = dict(parse_qsl(urlsplit(url).query))
            params = {} if sent.get("access_token") else {"access_token": access_token}
        payload = self._request("GET", url, params=params)

        items = payload.get("data")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise wrong_shape(url, "a `data` list of media objects")
        paging = payload.get("paging")
        next_url = paging.get("next") if isinstance(paging, dict) else None
        if not isinstance(next_url, str) or not next_url:
            next_url = None
        return MediaPage(items, next_url)

    def iter_media(
        self,
        access_token: str,
        max_posts: int,
        on_page: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Return up to `max_posts` of the newest media, following `next` pages.

        `on_page`, when given, is called after each page with the number of
        items that page added (for a progress bar).
        """
        items: list[dict[str, Any]] = []
        url: str | None = None
        while len(items) < max_posts:
            page = self.get_media_page(access_token, limit=PAGE_SIZE, url=url)
            items.extend(page.items)
            if on_page is not None:
                on_page(len(page.items))
            # An empty page or a repeated URL would otherwise loop forever.
            if page.next_url is None or not page.items or page.next_url == url:
                break
            url = page.next_url
        return items[:max_posts]

    def get_media(
        self, access_token: str, media_id: str, fields: str = MEDIA_FIELDS
    ) -> dict[str, Any]:
        """Fetch one media object by ID."""
        if not isinstance(media_id, str) or not _MEDIA_ID.fullmatch(media_id):
            raise ValueError(
                f"Invalid media ID {media_id!r:.80}: expected 1 to 64 letters, "
                "digits or underscores, as in the `id` of a media object."
            )
        url = self._data_url(media_id)
        params = {"fields": fields, "access_token": access_token}
        return self._request("GET", url, params=params)

    def _data_url(self, path: str) -> str:
        return f"{self._graph_url}/{self.endpoints.api_version.strip('/')}/{path}"

    def _check_graph_origin(self, url: str) -> None:
        if _origin(url) != _origin(self._graph_url):
            scheme, host, port = _origin(url)
            raise InstagramError(
                f"The next-page URL points to {scheme}://{host}:{port}, which is not "
                "the Graph API server, so it was not requested and the access token "
                "was not sent. Check INSTAGRAM_GRAPH_URL and the cached feed."
            )

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send one request and return its JSON object, or raise an InstagramError.

        Redirects are not followed, and the body is read within the client's
        deadline and size limit.
        """
        path = urlsplit(url).path or "/"
        where = f"{method} {path}"
        secrets = _sent_secrets(url, params, data) + [self._client_secret]
        started = time.perf_counter()
        deadline = time.monotonic() + self._deadline
        try:
            with self._session.request(
                method,
                url,
                params=params,
                data=data,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                read_body(response, where, deadline, self._max_bytes)
        except requests.RequestException as err:
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info(_LOG_LINE, method, path, type(err).__name__, elapsed_ms)
            # `from None`: requests' messages repeat the URL, access token included.
            raise transport_error(err, where) from None
        except UpstreamUnavailableError:
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info(_LOG_LINE, method, path, "unread body", elapsed_ms)
            raise

        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info(_LOG_LINE, method, path, response.status_code, elapsed_ms)
        if response.is_redirect:
            raise redirect_error(response, where)
        return parse_response(response, where, secrets)


def _long_lived(payload: dict[str, Any], url: str) -> LongLivedToken:
    expires_in = as_int(payload.get("expires_in"))
    if expires_in is None or expires_in < 0:
        raise wrong_shape(url, "a whole number of seconds in `expires_in`")
    token_type = payload.get("token_type")
    if not isinstance(token_type, str) or not token_type:
        token_type = "bearer"
    return LongLivedToken(
        access_token=_required_str(payload, "access_token", url),
        token_type=token_type,
        expires_in=expires_in,
    )


def _permissions(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return []
    return [str(item).strip() for item in value if str(item).strip()]


def _required_str(record: Mapping[str, Any], key: str, url: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise wrong_shape(url, f"a non-empty `{key}` string")
    return value


def _required_id(record: Mapping[str, Any], key: str, url: str) -> str:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise wrong_shape(url, f"`{key}` as a string or number")
    return str(value)


def _sent_secrets(
    url: str, params: Mapping[str, Any] | None, data: Mapping[str, Any] | None
) -> list[str]:
    fields: dict[str, Any] = dict(parse_qsl(urlsplit(url).query))
    fields.update(params or {})
    fields.update(data or {})
    return [str(fields[name]) for name in _SECRET_FIELDS if fields.get(name)]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # A port that is not a number never matches.
        port = -1
    return scheme, (parts.hostname or "").lower(), port
