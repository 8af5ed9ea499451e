"""Instagram's error responses and the exceptions the client raises for them.

Instagram reports errors in two JSON shapes. The Graph API sends `{"error":
{"message", "type", "code", "error_subcode", "fbtrace_id"}}` with HTTP 400, 401 or
403, so the mapping branches on `code`, not on the status. The code exchange sends
`{"error_type", "code", "error_message"}`. `parse_response` turns either shape,
HTTP 429 and 5xx responses, and bodies that are not JSON into `InstagramError`
subclasses whose messages name the call's path but never its query or a secret.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3

RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80002})
# Meta's "Handling Errors" page for the Graph API lists codes 1 and 2 as temporary
# failures that a later retry can fix.
# https://developers.facebook.com/docs/graph-api/guides/error-handling
TRANSIENT_CODES = frozenset({1, 2})
DEFAULT_RETRY_AFTER = 900
RECONNECT = "Connect the account again from /admin/generate."
# The largest response body read. An estimate of the largest real one: a page
# of 100 albums with 20 children each and 2,200-character captions is under
# 3 MB, so a bigger body is refused rather than held in memory.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
_READ_SIZE = 64 * 1024

_OWNER_MESSAGES = {
    "expired": "Instagram ended the connection because its access token expired.",
    "password_changed": "Instagram ended the connection because the account's "
    "password was changed or Instagram reset the account for security.",
    "revoked": "Instagram no longer accepts the connection, most likely because "
    "the app's access was removed in the Instagram account's settings.",
}


class InstagramError(Exception):
    """An Instagram API call failed. `retryable` is true when a retry can help."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.status = status
        self.retryable = retryable


class TokenInvalidError(InstagramError):
    """Instagram rejected the access token (Graph code 190). Only a new login helps."""

    @property
    def reason(self) -> str:
        """Cause of the rejection: "expired", "password_changed" or "revoked"."""
        return _token_reason(self.subcode)

    @property
    def owner_message(self) -> str:
        """Explanation for the site owner, ending with what to do."""
        return f"{_OWNER_MESSAGES[self.reason]} {RECONNECT}"


class RateLimitedError(InstagramError):
    """Instagram's rate limit was reached, so wait `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, retryable=True, **details)
        self.retry_after = retry_after


class UpstreamUnavailableError(InstagramError):
    """Instagram could not be reached or sent an unusable response."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, retryable=True, **details)


class OAuthExchangeError(InstagramError):
    """The token endpoint rejected a request, and `hint` names what to check."""

    def __init__(self, message: str, *, hint: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.hint = hint


class EmptyCodeError(OAuthExchangeError, ValueError):
    """The authorization code is empty once trimmed, so it was not sent.

    Also a ValueError, as callers of `exchange_code` have caught it as one.
    """


def transport_error(err: requests.RequestException, where: str) -> InstagramError:
    """Build the error for a request `where` ("GET /path") that got no response."""
    name = type(err).__name__
    if isinstance(err, requests.Timeout):
        return UpstreamUnavailableError(
            f"The request {where} to Instagram timed out ({name}). Try again later."
        )
    if isinstance(
        err, requests.ConnectionError | requests.exceptions.ChunkedEncodingError
    ):
        return UpstreamUnavailableError(
            f"The connection to Instagram failed during {where} ({name}). Check the "
            "server's network access and try again later."
        )
    return InstagramError(
        f"The request {where} could not be sent ({name}). Check the Instagram "
        "endpoint settings (INSTAGRAM_GRAPH_URL, INSTAGRAM_TOKEN_URL)."
    )


def read_body(
    response: requests.Response, where: str, deadline: float, max_bytes: int
) -> None:
    """Read a streamed response's body into `response.content`, within limits.

    `deadline` is a `time.monotonic()` moment: the read timeout bounds only
    the wait for each piece, so a body that trickles in would otherwise hold
    the caller for as long as the server likes. Raises UpstreamUnavailableError
    past `deadline`, beyond `max_bytes`, or when the connection breaks.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(where, max_bytes, response.status_code)
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise UpstreamUnavailableError(
                    f"The response of Instagram to {where} did not arrive in time "
                    "and timed out. Try again later.",
                    status=response.status_code,
                )
            # read1 returns what one read from the socket brings, so the
            # deadline is checked between pieces of any size.
            chunk = response.raw.read1(_READ_SIZE, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise _too_large(where, max_bytes, response.status_code)
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as err:
        name = type(err).__name__
        if isinstance(err, urllib3.exceptions.TimeoutError | TimeoutError):
            raise UpstreamUnavailableError(
                f"Reading the response of Instagram to {where} timed out ({name}). "
                "Try again later."
            ) from None
        raise UpstreamUnavailableError(
            f"The connection to Instagram failed during {where} while reading the "
            f"response ({name}). Try again later."
        ) from None
    # requests keeps a read body in `_content`; `.json()` and `.text` use it.
    response._content = b"".join(chunks)


def redirect_error(response: requests.Response, where: str) -> UpstreamUnavailableError:
    """Build the error for a redirect, which the client never follows.

    Following it would send the request (its token, or the code exchange's
    client secret and code) to wherever the Location header points.
    """
    # Only the scheme, host and port: a Location may carry credentials.
    parts = urlsplit(response.headers.get("Location", ""))
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # A port that is not a number.
        port = ""
    target = f"{parts.scheme}://{parts.hostname}{port}"
    if not parts.hostname:
        target = "a path on the same server"
    return UpstreamUnavailableError(
        f"Instagram responded to {where} with HTTP {response.status_code}, a "
        f"redirect to {target[:200]}, which was not followed so that no token or "
        "secret goes there. Check the Instagram endpoint settings.",
        status=response.status_code,
    )


def _too_large(where: str, max_bytes: int, status: int) -> UpstreamUnavailableError:
    return UpstreamUnavailableError(
        f"The response of Instagram to {where} is larger than {max_bytes} bytes, "
        "so it was not read. Try again later, and check the Instagram endpoint "
        "settings if this persists.",
        status=status,
    )


def parse_response(
    response: requests.Response, where: str, secrets: list[str]
) -> dict[str, Any]:
    """Return the response's JSON object, or raise the matching InstagramError.

    `secrets` are the values sent with the request (token, client secret, code).
    They are masked wherever Instagram's error text is quoted in a message.
    """
    status = response.status_code
    try:
        payload = response.json()
    except ValueError as err:  # Also raised for an HTML page or truncated JSON.
        if status == 429:
            raise _api_error(response, where) from err
        raise UpstreamUnavailableError(
            f"Instagram responded to {where} with HTTP {status} and a body that is not "
            "JSON. Try again later, and check the Instagram endpoint settings if "
            "this persists.",
            status=status,
        ) from err

    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):  # Graph shape, with HTTP 400, 401 or 403.
            raise _api_error(
                response,
                where,
                code=as_int(error.get("code")),
                subcode=as_int(error.get("error_subcode")),
                text=scrub(error.get("message"), secrets),
                # Graph error objects may carry `is_transient`, true when a retry helps.
                transient=error.get("is_transient") is True,
            )
        if "error_type" in payload or "error_message" in payload:  # Token endpoint.
            raise _api_error(
                response,
                where,
                code=as_int(payload.get("code")),
                text=scrub(payload.get("error_message"), secrets),
                exchange=True,
            )
    if status >= 400:
        raise _api_error(response, where)
    if not isinstance(payload, dict):
        raise wrong_shape(response.url, "a JSON object")
    return payload


def _api_error(
    response: requests.Response,
    where: str,
    *,
    code: int | None = None,
    subcode: int | None = None,
    text: str = "",
    transient: bool = False,
    exchange: bool = False,
) -> InstagramError:
    status = response.status_code
    details: dict[str, Any] = {"code": code, "subcode": subcode, "status": status}
    detail = (
        f" (HTTP {status}, code {code})" if code is not None else f" (HTTP {status})"
    )
    if text:
        detail += f": {text}"
    if code == 190:
        reason = _token_reason(subcode)
        return TokenInvalidError(
            f"Instagram rejected the access token for {where} as {reason}{detail}. "
            f"{RECONNECT}",
            **details,
        )
    if code in RATE_LIMIT_CODES or status == 429:
        retry_after = _retry_after(response.headers)
        return RateLimitedError(
            f"Instagram's rate limit was reached for {where}{detail}. "
            f"Wait {retry_after} seconds before calling Instagram again.",
            retry_after=retry_after,
            **details,
        )
    if code in TRANSIENT_CODES or transient or status >= 500:
        return UpstreamUnavailableError(
            f"Instagram failed to handle {where}{detail}. Try again later.",
            **details,
        )
    if exchange:
        hint = _exchange_hint(text)
        return OAuthExchangeError(
            f"Instagram rejected the token request {where}{detail}. {hint}",
            hint=hint,
            **details,
        )
    return InstagramError(
        f"Instagram rejected {where}{detail}. Retrying will not help, so check the "
        "request's parameters and the Instagram endpoint settings.",
        **details,
    )


def _exchange_hint(text: str) -> str:
    lowered = text.lower()
    if "invalid platform app" in lowered:
        return (
            "Use the Instagram app ID and secret from the app's Instagram Login "
            "settings in INSTAGRAM_CLIENT_ID and INSTAGRAM_CLIENT_SECRET, not the "
            "Meta app ID at the top of the App Dashboard."
        )
    if "matching code was not found" in lowered or "already used" in lowered:
        return (
            "The authorization code expired after one hour or was already used. "
            "Start again from /admin/generate."
        )
    if "redirect_uri" in lowered or "redirect uri" in lowered:
        return (
            "INSTAGRAM_REDIRECT_URI must match a redirect URI registered in the "
            "app's Instagram Login settings exactly, with no extra trailing slash "
            "or query string."
        )
    return (
        "Check INSTAGRAM_CLIENT_ID, INSTAGRAM_CLIENT_SECRET and "
        "INSTAGRAM_REDIRECT_URI, then start again from /admin/generate."
    )


def _token_reason(subcode: int | None) -> str:
    if subcode == 463:
        return "expired"
    if subcode == 460:
        return "password_changed"
    return "revoked"


def _retry_after(headers: Mapping[str, str]) -> int:
    """Seconds to wait: Retry-After, else the usage header's estimate, else 900."""
    value = headers.get("Retry-After", "").strip()
    if value.isdigit():
        return int(value)
    if value:
        try:
            moment = parsedate_to_datetime(value)
            return max(0, math.ceil((moment - datetime.now(UTC)).total_seconds()))
        except (TypeError, ValueError):  # Not an HTTP date, or one without a zone.
            pass

    # {"<account id>": [{"estimated_time_to_regain_access": <minutes>, ...}]}
    try:
        usage = json.loads(headers.get("X-Business-Use-Case-Usage") or "{}")
    except ValueError:
        usage = {}
    estimates = [
        entry.get("estimated_time_to_regain_access")
        for entries in (usage.values() if isinstance(usage, dict) else [])
        if isinstance(entries, list)
        for entry in entries
        if isinstance(entry, dict)
    ]
    minutes = max(
        (math.ceil(m) for m in estimates if type(m) in (int, float)), default=0
    )
    return minutes * 60 if minutes > 0 else DEFAULT_RETRY_AFTER


def as_int(value: Any) -> int | None:
    """Return an int, a whole float or a digit string as int, anything else as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def wrong_shape(url: str, expected: str) -> UpstreamUnavailableError:
    """Build the error for a successful response that lacks `expected`."""
    return UpstreamUnavailableError(
        f"Instagram's response to {urlsplit(url).path or '/'} lacks {expected}. "
        "Try again later, and check the Instagram endpoint settings if this persists."
    )


def scrub(text: Any, secrets: list[str]) -> str:
    """Return Instagram's error text, cut to 300 characters, with `secrets` masked."""
    cleaned = str(text or "").strip().rstrip(".")
    for secret in secrets:
        if secret:
            cleaned = cleaned.replace(secret, "[redacted]")
    return cleaned[:300]
