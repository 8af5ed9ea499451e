"""The X API v2 client: the app-only bearer, OAuth 2.0 with PKCE, and post reads.

`XClient` fetches the app-only bearer token, builds the authorize URL, exchanges
and refreshes OAuth 2.0 user tokens, and reads the user lookups, a timeline,
recent search and liked posts. Credentials travel as requests `auth=` objects:
`BearerAuth` for an app-only or OAuth 2.0 user token, and `oauth1_auth(...)`,
which oauthlib signs with HMAC-SHA1, for the owner's OAuth 1.0a access token.
Every HTTP call goes through `XClient._request`, which logs one line, keeps the
rate-limit headers per endpoint, and leaves error mapping to `x_errors`.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests
from requests_oauthlib import OAuth1

from x_errors import (
    USER_CONTEXT_HINT,
    XAuthError,
    XError,
    XNotFoundError,
    XRateLimitedError,
    XUnavailableError,
    parse_response,
    read_limited_body,
    transport_error,
)
from x_items import XPage, page_from_payload, required_str, user_from_payload

__all__ = [
    "DEFAULT_SCOPE",
    "READ_PARAMS",
    "USER_CONTEXT_HINT",
    "BearerAuth",
    "XAuthError",
    "XClient",
    "XEndpoints",
    "XError",
    "XNotFoundError",
    "XPage",
    "XRateLimitedError",
    "XUnavailableError",
    "XUserToken",
    "oauth1_auth",
]

logger = logging.getLogger(__name__)

# oauthlib and requests-oauthlib log signature base strings, signatures and
# Authorization headers at DEBUG, so they stay at INFO even when the app logs DEBUG.
for _name in ("oauthlib", "requests_oauthlib"):
    logging.getLogger(_name).setLevel(logging.INFO)

DEFAULT_SCOPE = "tweet.read users.read like.read offline.access"
READ_PARAMS = {
    "tweet.fields": "created_at,author_id,attachments,entities,public_metrics,lang",
    "expansions": "attachments.media_keys,author_id",
    "media.fields": "url,preview_image_url,type,alt_text,width,height",
    "user.fields": "username,name,profile_image_url",
}
PAGE_SIZE = 100
MAX_QUERY_LENGTH = 512
EXCLUDE_VALUES = frozenset({"replies", "retweets"})
_USERNAME = re.compile(r"[A-Za-z0-9_]{1,15}")
_USER_ID = re.compile(r"[0-9]{1,20}")
_LOG_LINE = "X %s %s -> %s in %.0f ms"
# Seconds a whole call may take, and the largest body read (X pages are small).
RESPONSE_DEADLINE_SECONDS = 30.0
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class XEndpoints:
    """X endpoint URLs, which tests and the sandbox point at another server."""

    api_url: str = "https://api.x.com"
    authorize_url: str = "https://x.com/i/oauth2/authorize"
    token_url: str = "https://api.x.com/2/oauth2/token"


@dataclass(frozen=True)
class XUserToken:
    """An OAuth 2.0 user token from the code exchange or a refresh.

    `expires_in` is in seconds (two hours on X). `refresh_token` is None unless
    the scope has offline.access. `scope` is space-separated, as X sends it.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int | None
    scope: str

    @property
    def scopes(self) -> list[str]:
        """The granted scopes as a list."""
        return self.scope.split()


class BearerAuth(requests.auth.AuthBase):
    """Send an app-only or OAuth 2.0 user access token as `Authorization: Bearer`."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("The bearer token is empty. Set X_BEARER_TOKEN.")
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(token='[redacted]')"


def oauth1_auth(
    api_key: str, api_secret: str, access_token: str, access_token_secret: str
) -> OAuth1:
    """Return OAuth 1.0a user-context auth, signed with HMAC-SHA1 by oauthlib."""
    return OAuth1(
        api_key,
        api_secret,
        access_token,
        access_token_secret,
        signature_type="auth_header",
    )


@dataclass
class _Limit:
    remaining: int
    reset_at: float
    usage_capped: bool = False


class XClient:
    """Calls X's OAuth and API v2 endpoints through one session."""

    def __init__(
        self,
        endpoints: XEndpoints,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoints = endpoints
        self._session = session or requests.Session()
        self._timeout = timeout
        self._clock = clock
        self._api_url = endpoints.api_url.rstrip("/")
        # Rate-limit state per "METHOD /path/template". The key "*" is the usage cap.
        self._limits: dict[str, _Limit] = {}
        self._limits_lock = threading.Lock()

    # OAuth -------------------------------------------------------------------

    def fetch_app_bearer(self, api_key: str, api_secret: str) -> str:
        """Fetch the app-only bearer token (the same one on every call: keep it)."""
        if not api_key or not api_secret:
            raise ValueError("X_API_KEY and X_API_SECRET must both be set.")
        url = f"{self._api_url}/oauth2/token"
        headers = {
            "Authorization": _basic_credentials(api_key, api_secret),
            "Content-Type": "application/x-www-form-urlencoded;charset=UTF-8",
        }
        payload = self._request(
            "POST",
            url,
            "/oauth2/token",
            headers=headers,
            data="grant_type=client_credentials",
            secrets=[api_key, api_secret],
        )
        token_type = payload.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise XUnavailableError(
                f"X's bearer-token endpoint returned token_type {token_type!r:.40}, "
                'not "bearer". Check X_API_URL.'
            )
        return required_str(payload, "access_token", "POST /oauth2/token")

    def authorize_url(
        self,
        client_id: str,
        redirect_uri: str,
        state: str,
        code_challenge: str,
        scope: str = DEFAULT_SCOPE,
    ) -> str:
        """Build the URL that sends the owner's browser to X's consent page."""
        query = urlencode(
            {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": scope,
                "state": state,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            },
            quote_via=quote,
        )
        base = self.endpoints.authorize_url
        if base.endswith(("?", "&")):
            return base + query
        return f"{base}{'&' if '?' in base else '?'}{query}"

    def exchange_code(
        self,
        client_id: str,
        client_secret: str | None,
        code: str,
        redirect_uri: str,
        code_verifier: str,
    ) -> XUserToken:
        """Exchange an authorization code and its PKCE verifier for a user token."""
        if not code or not code_verifier:
            raise ValueError(
                "The authorization code or the PKCE code_verifier is empty. Start "
                "again from /admin/generate/x."
            )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return self._token_request(form, client_id, client_secret)

    def refresh(
        self, client_id: str, client_secret: str | None, refresh_token: str
    ) -> XUserToken:
        """Exchange a refresh token for a new pair, which invalidates the old one."""
        if not refresh_token:
            raise ValueError("The refresh token is empty. Connect the account again.")
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return self._token_request(form, client_id, client_secret)

    def _token_request(
        self, form: dict[str, str], client_id: str, client_secret: str | None
    ) -> XUserToken:
        """POST to the OAuth 2.0 token endpoint as a confidential or public client."""
        if not client_id:
            raise ValueError("X_CLIENT_ID is not set.")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if client_secret:
            headers["Authorization"] = _basic_credentials(client_id, client_secret)
        else:
            form = {**form, "client_id": client_id}
        url = self.endpoints.token_url
        where = f"POST {urlsplit(url).path or '/'}"
        secret_fields = ("code", "code_verifier", "refresh_token")
        secrets = [form[name] for name in secret_fields if form.get(name)]
        secrets.append(client_secret or "")
        payload = self._request(
            "POST", url, urlsplit(url).path, headers=headers, data=form, secrets=secrets
        )

        expires_in = payload.get("expires_in")
        if not isinstance(expires_in, int) or isinstance(expires_in, bool):
            expires_in = None
        refresh_token = payload.get("refresh_token")
        scope = payload.get("scope")
        return XUserToken(
            access_token=required_str(payload, "access_token", where),
            refresh_token=refresh_token if isinstance(refresh_token, str) else None,
            expires_in=expires_in,
            scope=scope if isinstance(scope, str) else "",
        )

    # Users -------------------------------------------------------------------

    def get_me(self, auth: requests.auth.AuthBase) -> dict[str, Any]:
        """Fetch the authenticated user: id, username, name, profile_image_url."""
        params = {"user.fields": READ_PARAMS["user.fields"]}
        payload = self._request(
            "GET",
            f"{self._api_url}/2/users/me",
            "/2/users/me",
            params=params,
            auth=auth,
        )
        return user_from_payload(payload, "GET /2/users/me")

    def get_user_by_username(
        self, auth: requests.auth.AuthBase, username: str
    ) -> dict[str, Any]:
        """Look a user up by handle (a leading "@" is dropped)."""
        handle = username.removeprefix("@") if isinstance(username, str) else ""
        if not _USERNAME.fullmatch(handle):
            raise ValueError(
                f"Invalid X username {username!r:.40}: expected 1 to 15 letters, "
                "digits or underscores. Check X_USERNAME."
            )
        path = f"/2/users/by/username/{handle}"
        params = {"user.fields": READ_PARAMS["user.fields"]}
        payload = self._request(
            "GET",
            self._api_url + path,
            "/2/users/by/username/:username",
            params=params,
            auth=auth,
        )
        return user_from_payload(payload, f"GET {path}")

    # Posts -------------------------------------------------------------------

    def get_timeline(
        self,
        auth: requests.auth.AuthBase,
        user_id: str,
        *,
        max_results: int = PAGE_SIZE,
        pagination_token: str | None = None,
        exclude: str | Iterable[str] | None = None,
    ) -> XPage:
        """Fetch one page of a user's posts, newest first (the newest 3,200 only)."""
        params: dict[str, Any] = {"max_results": _page_size(max_results, 5)}
        if pagination_token:
            params["pagination_token"] = pagination_token
        excluded = _exclude(exclude)
        if excluded:
            params["exclude"] = excluded
        path = f"/2/users/{_user_id(user_id)}/tweets"
        return self._read(auth, path, "/2/users/:id/tweets", params)

    def search_recent(
        self,
        auth: requests.auth.AuthBase,
        query: str,
        *,
        max_results: int = PAGE_SIZE,
        next_token: str | None = None,
    ) -> XPage:
        """Fetch one page of X's recent search, which covers the last 7 days."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("The search query is empty.")
        if len(query) > MAX_QUERY_LENGTH:
            raise ValueError(
                f"The search query has {len(query)} characters, but X accepts at most "
                f"{MAX_QUERY_LENGTH}."
            )
        params: dict[str, Any] = {
            "query": query,
            "max_results": _page_size(max_results, 10),
        }
        if next_token:
            params["next_token"] = next_token
        path = "/2/tweets/search/recent"
        return self._read(auth, path, path, params)

    def get_liked(
        self,
        auth: requests.auth.AuthBase,
        user_id: str,
        *,
        max_results: int = PAGE_SIZE,
        pagination_token: str | None = None,
    ) -> XPage:
        """Fetch one page of the posts a user liked, with that user's own token."""
        # NOTE: whether X's smallest max_results here is 5 or 10 is uncertain, so
        # the client asks for at least 10.
        params: dict[str, Any] = {"max_results": _page_size(max_results, 10)}
        if pagination_token:
            params["pagination_token"] = pagination_token
        path = f"/2/users/{_user_id(user_id)}/liked_tweets"
        return self._read(auth, path, "/2/users/:id/liked_tweets", params)

    @staticmethod
    def iter_pages(
        fetch_page: Callable[[str | None, int], XPage], max_items: int
    ) -> list[dict[str, Any]]:
        """Return up to `max_items` posts, following next tokens from the first page.

        `fetch_page(next_token, page_size)` fetches one page. The page size is at
        most 100 and no larger than what is still missing, because X bills each
        post it returns.
        """
        items: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        while len(items) < max_items:
            page = fetch_page(token, min(PAGE_SIZE, max_items - len(items)))
            items.extend(page.items)
            # An empty page or a repeated token would otherwise loop forever.
            if not page.next_token or not page.items or page.next_token in seen:
                break
            seen.add(page.next_token)
            token = page.next_token
        return items[:max_items]

    def _read(
        self,
        auth: requests.auth.AuthBase,
        path: str,
        template: str,
        params: dict[str, Any],
    ) -> XPage:
        payload = self._request(
            "GET",
            self._api_url + path,
            template,
            params={**params, **READ_PARAMS},
            auth=auth,
        )
        return page_from_payload(payload, f"GET {path}")

    # HTTP --------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        template: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | str | None = None,
        headers: Mapping[str, str] | None = None,
        auth: requests.auth.AuthBase | None = None,
        secrets: list[str] | None = None,
    ) -> dict[str, Any]:
        """Send one request and return its JSON object, or raise an XError.

        Before sending, a request to an endpoint whose rate limit is used up
        until a reset still ahead raises XRateLimitedError with no HTTP call.
        """
        path = urlsplit(url).path or "/"
        where = f"{method} {path}"
        limit_key = f"{method} {template}"
        self._check_limit(limit_key, where)

        started = time.perf_counter()
        deadline = time.monotonic() + RESPONSE_DEADLINE_SECONDS
        try:
            # No redirect is followed: it would re-send the token, the
            # signature or the client secret to wherever Location points.
            with self._session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                auth=auth,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            ) as response:
                read_limited_body(response, where, deadline, MAX_RESPONSE_BYTES)
        except requests.RequestException as err:
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info(_LOG_LINE, method, path, type(err).__name__, elapsed_ms)
            # `from None`: requests' messages repeat the URL and its query.
            raise transport_error(err, where) from None
        except XUnavailableError:
            elapsed_ms = (time.perf_counter() - started) * 1000
            logger.info(_LOG_LINE, method, path, "unread body", elapsed_ms)
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info(_LOG_LINE, method, path, response.status_code, elapsed_ms)
        if response.is_redirect:
            host = urlsplit(response.headers.get("Location", "")).hostname or "a path"
            raise XUnavailableError(
                f"X returned a redirect to {host} for {where}, which is not "
                "followed. Check X_API_URL and X_TOKEN_URL."
            )

        self._remember_limit(limit_key, response.headers)
        masked = (secrets or []) + _auth_secrets(auth)
        try:
            return parse_response(response, where, masked, self._clock())
        except XRateLimitedError as err:
            self._block(limit_key, err)
            raise

    def _check_limit(self, key: str, where: str) -> None:
        now = self._clock()
        with self._limits_lock:
            for limit in (self._limits.get("*"), self._limits.get(key)):
                if limit is None or limit.remaining > 0 or now >= limit.reset_at:
                    continue
                wait = max(1, round(limit.reset_at - now))
                reason = (
                    "the app's monthly usage cap was reached"
                    if limit.usage_capped
                    else "its rate limit is used up"
                )
                raise XRateLimitedError(
                    f"{where} was not sent to X because {reason}. Try again in "
                    f"{wait} seconds.",
                    reset_at=limit.reset_at,
                    usage_capped=limit.usage_capped,
                    kind="usage-capped"
                    if limit.usage_capped
                    else "rate-limit-exceeded",
                )

    def _remember_limit(self, key: str, headers: Mapping[str, str]) -> None:
        remaining = headers.get("x-rate-limit-remaining", "").strip()
        reset = headers.get("x-rate-limit-reset", "").strip()
        if remaining.isdigit() and reset.isdigit():
            with self._limits_lock:
                self._limits[key] = _Limit(int(remaining), float(reset))

    def _block(self, key: str, err: XRateLimitedError) -> None:
        """Hold back calls after a 429: this endpoint's, or every one for the cap."""
        with self._limits_lock:
            self._limits[key] = _Limit(0, err.reset_at, err.usage_capped)
            if err.usage_capped:
                self._limits["*"] = _Limit(0, err.reset_at, True)


# Checks -----------------------------------------------------------------------


def _basic_credentials(user: str, password: str) -> str:
    """Build HTTP Basic credentials from the URL-encoded user and password."""
    pair = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _page_size(max_results: int, minimum: int) -> int:
    """Check 1 to 100 and raise it to the endpoint's minimum."""
    if isinstance(max_results, bool) or not isinstance(max_results, int):
        raise ValueError(f"Invalid max_results {max_results!r}: expected 1 to 100.")
    if not 1 <= max_results <= PAGE_SIZE:
        raise ValueError(f"Invalid max_results {max_results}: expected 1 to 100.")
    return max(max_results, minimum)


def _user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise ValueError(
            f"Invalid X user ID {user_id!r:.40}: expected the numeric `id` of a user."
        )
    return user_id


def _exclude(exclude: str | Iterable[str] | None) -> str | None:
    if exclude is None:
        return None
    names = exclude.split(",") if isinstance(exclude, str) else list(exclude)
    names = sorted({name.strip() for name in names if name.strip()})
    unknown = [name for name in names if name not in EXCLUDE_VALUES]
    if unknown:
        raise ValueError(
            f"Invalid exclude value {', '.join(unknown)!r:.60}: use replies, "
            "retweets or both."
        )
    return ",".join(names) or None


def _auth_secrets(auth: requests.auth.AuthBase | None) -> list[str]:
    """Return the secrets inside an auth object, to mask them in messages."""
    if isinstance(auth, BearerAuth):
        return [auth.token]
    if isinstance(auth, OAuth1):
        client = auth.client
        values = (
            client.client_secret,
            client.resource_owner_key,
            client.resource_owner_secret,
        )
        return [value for value in values if value]
    return []
