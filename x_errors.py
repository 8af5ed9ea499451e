"""X's error responses and the exceptions the X client raises for them.

X reports errors in three JSON shapes. API v2 sends `application/problem+json`,
`{"title", "detail", "type": "https://api.x.com/2/problems/<kind>", "status"}`.
The bearer-token endpoint and OAuth 1.0a failures send the older `{"errors":
[{"code", "message"}]}`. The OAuth 2.0 token endpoint sends `{"error",
"error_description"}`. `parse_response` turns each of them, HTTP 429 and 5xx
responses, and bodies that are not JSON into `XError` subclasses whose messages
name the call's method and path but never its query or a secret.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import requests
import urllib3

DEFAULT_RESET_SECONDS = 900
USER_CONTEXT_HINT = (
    "Set X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET (the owner's OAuth 1.0a access "
    "token from the developer console), or set X_CLIENT_ID and connect the account "
    "through /admin/generate/x."
)
RECONNECT = "Connect the X account again from /admin/generate/x."

# Codes of the older `{"errors": [{"code", "message"}]}` shape that mean an
# authentication failure, and the one that means the rate limit.
_AUTH_CODES = {
    32: "X could not authenticate the request (code 32: the OAuth 1.0a signature "
    "is wrong). Check X_API_KEY, X_API_SECRET, X_ACCESS_TOKEN and "
    "X_ACCESS_TOKEN_SECRET.",
    89: "X rejected the access token as invalid or expired (code 89). Generate a "
    "new access token and secret in the developer console, or connect again from "
    "/admin/generate/x.",
    99: "X could not verify the app's credentials at the bearer-token endpoint "
    "(code 99). Check X_API_KEY and X_API_SECRET. X also sends this when a bearer "
    "token is requested too often, so fetch it once and keep it.",
    135: "X rejected the request's timestamp as out of bounds (code 135), because "
    "this server's clock differs from X's by more than a few minutes. Fix the "
    "server clock (enable NTP time sync) and try again.",
    453: "The X app's access level does not include this endpoint (code 453). "
    "Upgrade the app's access in the X developer console.",
}
_RATE_LIMIT_CODE = 88


class XError(Exception):
    """An X API call failed. `retryable` is true when a later retry can help."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        code: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.code = code
        self.retryable = retryable


class XAuthError(XError):
    """X rejected the credentials, or they do not allow this endpoint."""


class XRateLimitedError(XError):
    """A rate limit or the usage cap was reached, so wait until `reset_at`.

    `reset_at` is in Unix seconds. A usage cap (`usage_capped`) is monthly and
    does not clear at `reset_at`, which is only when the client tries again.
    """

    def __init__(
        self, message: str, *, reset_at: float, usage_capped: bool = False, **details
    ) -> None:
        details.setdefault("retryable", not usage_capped)
        super().__init__(message, **details)
        self.reset_at = reset_at
        self.usage_capped = usage_capped


class XUnavailableError(XError):
    """X could not be reached, failed, or sent a response that is not usable."""

    def __init__(self, message: str, **details: Any) -> None:
        details.setdefault("retryable", True)
        super().__init__(message, **details)


class XNotFoundError(XError):
    """The user or post does not exist, or is not visible to these credentials."""


def transport_error(err: requests.RequestException, where: str) -> XError:
    """Build the error for a request `where` ("GET /path") that got no response."""
    name = type(err).__name__
    if isinstance(err, requests.Timeout):
        return XUnavailableError(
            f"The request {where} to X timed out ({name}). Try again later."
        )
    if isinstance(
        err, requests.ConnectionError | requests.exceptions.ChunkedEncodingError
    ):
        return XUnavailableError(
            f"The connection to X failed during {where} ({name}). Check the server's "
            "network access and try again later."
        )
    return XError(
        f"The request {where} could not be sent ({name}). Check X_API_URL and "
        "X_TOKEN_URL."
    )


def parse_response(
    response: requests.Response, where: str, secrets: list[str], now: float
) -> dict[str, Any]:
    """Return the response's JSON object, or raise the matching XError.

    `secrets` are the values sent with the request (tokens, client secrets, codes,
    verifiers). They are masked wherever X's error text is quoted in a message.
    `now` (Unix seconds) sets the default reset time of a 429 without one.
    """
    status = response.status_code
    try:
        payload = response.json()
    except ValueError as err:  # Also raised for an HTML page or truncated JSON.
        if status == 429:
            raise rate_limited(response, where, now) from err
        raise XUnavailableError(
            f"X responded to {where} with HTTP {status} and a body that is not JSON. "
            "Try again later, and check X_API_URL and X_TOKEN_URL if this persists.",
            status=status,
        ) from err

    if not isinstance(payload, dict):
        if status >= 400:
            raise _status_error(response, where, "")
        raise XUnavailableError(
            f"X's response to {where} is not a JSON object. Try again later.",
            status=status,
        )
    if status >= 400:
        raise _error_for(response, payload, where, secrets, now)
    if "data" not in payload and isinstance(payload.get("errors"), list):
        # X returns HTTP 200 with only an `errors` list for some lookups, such as
        # an unknown username.
        raise _error_for(response, payload, where, secrets, now)
    return payload


def rate_limited(
    response: requests.Response,
    where: str,
    now: float,
    *,
    usage_capped: bool = False,
    text: str = "",
) -> XRateLimitedError:
    """Build the error for a 429: a rate limit until its reset, or the usage cap."""
    reset_at = reset_time(response.headers, now)
    if usage_capped:
        # The cap lasts until the billing period ends, which no header gives, so
        # the client waits at least the default before it tries again.
        reset_at = max(reset_at, now + DEFAULT_RESET_SECONDS)
    detail = f": {text}" if text else ""
    if usage_capped:
        message = (
            f"X rejected {where} because the app's usage cap was reached "
            f"(HTTP {response.status_code}, usage-capped{detail}). The cap is "
            "monthly, so waiting minutes will not clear it: raise the cap or add "
            "credit in the X developer console."
        )
        kind = "usage-capped"
    else:
        wait = max(0, round(reset_at - now))
        message = (
            f"X's rate limit was reached for {where} (HTTP "
            f"{response.status_code}{detail}). Wait {wait} seconds, until the "
            "x-rate-limit-reset time, before calling this endpoint again."
        )
        kind = "rate-limit-exceeded"
    return XRateLimitedError(
        message,
        reset_at=reset_at,
        usage_capped=usage_capped,
        status=response.status_code,
        kind=kind,
    )


def reset_time(headers: Mapping[str, str], now: float) -> float:
    """Return x-rate-limit-reset (Unix seconds), or `now` plus 15 minutes."""
    value = headers.get("x-rate-limit-reset", "").strip()
    if value.isdigit():
        return float(value)
    return now + DEFAULT_RESET_SECONDS


def problem_kind(type_url: Any) -> str | None:
    """Return the kind at the end of a problem `type` URL, or None for about:blank."""
    if not isinstance(type_url, str) or "/problems/" not in type_url:
        return None
    return type_url.rstrip("/").rsplit("/", 1)[-1] or None


def _error_for(
    response: requests.Response,
    payload: dict[str, Any],
    where: str,
    secrets: list[str],
    now: float,
) -> XError:
    status = response.status_code
    if isinstance(payload.get("error"), str):  # The OAuth 2.0 token endpoint.
        return _oauth2_error(payload, status, where, secrets)

    kind = problem_kind(payload.get("type"))
    text = scrub(payload.get("detail") or payload.get("title"), secrets)
    errors = payload.get("errors")
    first = errors[0] if isinstance(errors, list) and errors else None
    if kind is None and isinstance(first, dict):
        kind = problem_kind(first.get("type"))
        text = text or scrub(first.get("detail") or first.get("message"), secrets)
    code = _as_int(first.get("code")) if isinstance(first, dict) else None

    if status == 429 or kind in ("usage-capped", "rate-limit-exceeded"):
        return rate_limited(
            response, where, now, usage_capped=kind == "usage-capped", text=text
        )
    if code == _RATE_LIMIT_CODE:
        return rate_limited(response, where, now, text=text)
    if code in _AUTH_CODES:
        return XAuthError(
            f"{_AUTH_CODES[code]} The request was {where}.",
            status=status,
            kind=kind,
            code=code,
        )
    if kind is not None:
        return _problem_error(kind, status, where, text, code)
    return _status_error(response, where, text, code)


def _problem_error(
    kind: str, status: int, where: str, text: str, code: int | None
) -> XError:
    details: dict[str, Any] = {"status": status, "kind": kind, "code": code}
    detail = f" ({kind}{': ' + text if text else ''})"
    if kind == "unsupported-authentication":
        return XAuthError(
            f"X accepts only user-context credentials for {where}, and the request "
            f"used an app-only bearer token{detail}. {USER_CONTEXT_HINT}",
            **details,
        )
    if kind == "client-forbidden":
        return XAuthError(
            f"X rejected {where} because the app is not attached to a project in the "
            f"developer console{detail}. Attach the app to a project and use its "
            "keys.",
            **details,
        )
    if kind.startswith("not-authorized"):
        return XAuthError(
            f"X rejected {where} because these credentials may not read this "
            f"resource{detail}. Likes, for example, are private, so only the "
            "owner's own token can read them. Check X_ACCESS_TOKEN or the connected "
            "account.",
            **details,
        )
    if kind == "resource-not-found":
        return XNotFoundError(f"X found nothing for {where}{detail}.", **details)
    if status >= 500 or kind == "service-unavailable":
        return XUnavailableError(
            f"X failed to handle {where}{detail}. Try again later.", **details
        )
    return XError(
        f"X rejected {where}{detail}. Retrying will not help, so check the request's "
        "parameters.",
        **details,
    )


def _status_error(
    response: requests.Response, where: str, text: str, code: int | None = None
) -> XError:
    status = response.status_code
    details: dict[str, Any] = {"status": status, "code": code}
    detail = f" (HTTP {status}{', code ' + str(code) if code else ''}"
    detail += f": {text})" if text else ")"
    if status >= 500:
        return XUnavailableError(
            f"X failed to handle {where}{detail}. Try again later.", **details
        )
    if status == 401:
        return XAuthError(
            f"X rejected the credentials for {where}{detail}. Check X_BEARER_TOKEN "
            "or X_API_KEY, X_API_SECRET, X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET. "
            "An OAuth 2.0 access token lasts two hours, so refresh it or connect "
            "the X account again from /admin/generate/x.",
            **details,
        )
    if status == 403:
        return XAuthError(
            f"X rejected {where}{detail}. The credentials lack access to this "
            "endpoint: check the app's access level and the token's scopes.",
            **details,
        )
    if status == 404:
        return XNotFoundError(f"X found nothing for {where}{detail}.", **details)
    return XError(
        f"X rejected {where}{detail}. Retrying will not help, so check the request's "
        "parameters.",
        **details,
    )


def _oauth2_error(
    payload: dict[str, Any], status: int, where: str, secrets: list[str]
) -> XError:
    """Map `{"error", "error_description"}` from the OAuth 2.0 token endpoint."""
    error = payload["error"]
    text = scrub(payload.get("error_description"), secrets)
    detail = f" (HTTP {status}, {error}{': ' + text if text else ''})"
    if status >= 500 or error == "temporarily_unavailable":
        return XUnavailableError(
            f"X's token endpoint failed during {where}{detail}. Try again later.",
            status=status,
            kind=error,
        )
    if error in ("invalid_client", "unauthorized_client"):
        hint = (
            "Check X_CLIENT_ID and X_CLIENT_SECRET: a confidential client must send "
            "both, and a public client has no secret."
        )
    else:
        hint = (
            "The code or refresh token was wrong, expired (a code lasts 30 seconds) "
            "or already used, or redirect_uri or code_verifier did not match. "
            f"{RECONNECT}"
        )
    return XAuthError(
        f"X's token endpoint rejected {where}{detail}. {hint}",
        status=status,
        kind=error,
    )


def scrub(text: Any, secrets: list[str]) -> str:
    """Return X's error text, cut to 300 characters, with `secrets` masked."""
    cleaned = str(text or "").strip().rstrip(".")
    for secret in secrets:
        if secret:
            cleaned = cleaned.replace(secret, "[redacted]")
    return cleaned[:300]


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def read_limited_body(
    response: requests.Response, where: str, deadline: float, max_bytes: int
) -> None:
    """Read a streamed body into `response.content` before `deadline` (monotonic).

    The read timeout bounds only each wait, so a body that trickles in would
    otherwise hold the caller as long as the server likes. Raises
    XUnavailableError past the deadline, beyond `max_bytes`, or on a broken
    connection.
    """
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise XUnavailableError(f"X's response to {where} timed out.")
            chunk = response.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise XUnavailableError(
                    f"X's response to {where} is over {max_bytes} bytes: rejected."
                )
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise XUnavailableError(
            f"Reading X's response to {where} failed ({type(err).__name__}). "
            "Try again later."
        ) from None
    response._content = b"".join(chunks)
