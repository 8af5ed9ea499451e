"""The X sandbox's credentials, signed tokens, OAuth 1.0a checks and shared state.

Credentials derive from SECRET_KEY. Tokens and codes carry their own data and an
HMAC-SHA256 signature, so every gunicorn worker can check them without shared
memory. What must be shared (used codes, used refresh tokens, the switches and
rate-limit windows) lives under the "x" key of `instance/sandbox-state.json`,
the Instagram sandbox's file, read and written under the token store's lock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app, request
from oauthlib.oauth1 import Client
from oauthlib.oauth1.rfc5849 import signature

import sandbox_state
from sandbox_x_data import OWNER_ID
from token_store import file_lock, move_aside, write_json_atomic

CODE_SECONDS = 30
ACCESS_TOKEN_SECONDS = 7200
# NOTE: X does not document how long a refresh token lasts, so 180 days is a guess.
REFRESH_TOKEN_SECONDS = 180 * 24 * 3600
TIMESTAMP_TOLERANCE = 300
RATE_WINDOW_SECONDS = 900
APP_TOKEN_PREFIX = "AAAAAAAAAAAAAAAAAAAAA"
KNOWN_SCOPES = frozenset(
    "tweet.read tweet.write tweet.moderate.write users.read users.email "
    "follows.read follows.write offline.access space.read mute.read mute.write "
    "like.read like.write list.read list.write block.read block.write "
    "bookmark.read bookmark.write media.write dm.read dm.write".split()
)
SWITCHES = ("rate_limit", "usage_cap")
# Control panel actions and their button labels, in display order.
ACTIONS = {
    "toggle_rate_limit": "Answer API requests with 429 Too Many Requests (on/off)",
    "toggle_usage_cap": "Answer API requests with 429 usage-capped (on/off)",
    "reset": "Turn the switches off and reset the rate-limit windows",
}
_ALPHABET = string.ascii_letters + string.digits
_CREDENTIAL_LENGTHS = {
    "api_key": 25,
    "api_secret": 50,
    "access_token_secret": 45,
    "client_id": 34,
    "client_secret": 50,
}


class OAuth1Failure(Exception):
    """An OAuth 1.0a request X would reject, with its error code (32, 89 or 135)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TokenRequestError(Exception):
    """A token request X would reject: sent as `{"error", "error_description"}`."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


INVALID_TOKEN = "Value passed for the token was invalid."


# Credentials ----------------------------------------------------------------------


def credentials(secret_key: str | bytes) -> dict[str, str]:
    """Derive the sandbox app's keys, secrets and the owner's access token."""
    key = secret_key.encode() if isinstance(secret_key, str) else secret_key

    def derive(name: str, length: int) -> str:
        digest = hmac.new(key, f"ownfeed sandbox x {name}".encode(), "sha512").digest()
        return "".join(_ALPHABET[byte % len(_ALPHABET)] for byte in digest)[:length]

    values = {
        name: derive(name, length) for name, length in _CREDENTIAL_LENGTHS.items()
    }
    values["access_token"] = f"{OWNER_ID}-{derive('access_token', 31)}"
    return values


def accepted() -> dict[str, str]:
    """Return the credentials the sandbox accepts: configured X_* keys, else derived.

    SANDBOX_X_PUBLIC_CLIENT set to true makes the OAuth 2.0 client public, so its
    secret is empty and the token endpoint expects client_id in the body.
    """
    values = credentials(current_app.config["SECRET_KEY"])
    for name in values:
        configured = current_app.config.get(f"X_{name.upper()}")
        if configured:
            values[name] = configured
    if current_app.config.get("SANDBOX_X_PUBLIC_CLIENT"):
        values["client_secret"] = ""
    return values


# Signed tokens and codes ---------------------------------------------------------


def _key(purpose: str) -> bytes:
    secret = current_app.config["SECRET_KEY"]
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.new(secret, f"ownfeed sandbox x {purpose}".encode(), "sha256").digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def seal(purpose: str, payload: dict[str, Any], prefix: str = "") -> str:
    """Return `payload` as a signed string that only this sandbox can open."""
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    mac = _b64(hmac.new(_key(purpose), body.encode(), "sha256").digest())
    return f"{prefix}{body}.{mac}"


def unseal(purpose: str, text: str, prefix: str = "") -> dict[str, Any] | None:
    """Return the payload of a sealed string, or None when it is not a valid one."""
    if not text.startswith(prefix) or "." not in text:
        return None
    body, _, mac = text[len(prefix) :].rpartition(".")
    expected = _b64(hmac.new(_key(purpose), body.encode(), "sha256").digest())
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def app_bearer() -> str:
    """Return the app-only bearer token: the same one on every request, like X's.

    It is X_BEARER_TOKEN when that is configured, else derived from SECRET_KEY.
    """
    configured = current_app.config.get("X_BEARER_TOKEN")
    if configured:
        return configured
    creds = accepted()
    return seal("app", {"k": creds["api_key"]}, APP_TOKEN_PREFIX)


def uri_digest(redirect_uri: str) -> str:
    """Return the SHA-256 hex digest a code stores instead of its redirect URI."""
    return hashlib.sha256(redirect_uri.encode()).hexdigest()


def s256(code_verifier: str) -> str:
    """Return the PKCE S256 challenge of a verifier."""
    return _b64(hashlib.sha256(code_verifier.encode("ascii")).digest())


def same(received: str, expected: str) -> bool:
    """Compare two strings in constant time, whatever characters they contain."""
    return hmac.compare_digest(received.encode(), expected.encode())


def issue_tokens(client_id: str, scopes: list[str], now: int) -> dict[str, Any]:
    """Return the token endpoint's response body: access token, maybe refresh token."""
    access = seal(
        "access",
        {
            "u": OWNER_ID,
            "s": scopes,
            "exp": now + ACCESS_TOKEN_SECONDS,
            "n": secrets.token_hex(6),
        },
    )
    body: dict[str, Any] = {
        "token_type": "bearer",
        "expires_in": ACCESS_TOKEN_SECONDS,
        "access_token": access,
        "scope": " ".join(scopes),
    }
    if "offline.access" in scopes:
        body["refresh_token"] = seal(
            "refresh",
            {"c": client_id, "s": scopes, "iat": now, "n": secrets.token_hex(8)},
        )
    return body


def issue_code(
    client_id: str, redirect_uri: str, challenge: str, scopes: list[str], now: int
) -> str:
    """Return a code valid 30 seconds, bound to client, URI and PKCE challenge."""
    payload = {
        "c": client_id,
        "r": uri_digest(redirect_uri),
        "ch": challenge,
        "s": scopes,
        "exp": now + CODE_SECONDS,
        "n": secrets.token_hex(8),
    }
    return seal("code", payload)


def redeem_refresh_token(text: str, client_id: str, now: int) -> list[str]:
    """Mark a refresh token used and return its scopes (rotation: one use only)."""
    payload = unseal("refresh", text)
    if payload is None or payload["c"] != client_id:
        raise TokenRequestError("invalid_request", INVALID_TOKEN)
    if payload["iat"] + REFRESH_TOKEN_SECONDS <= now:
        raise TokenRequestError("invalid_request", INVALID_TOKEN)

    def mark_used(current: dict[str, Any]) -> None:
        used = {
            nonce: issued
            for nonce, issued in current["used_refresh_tokens"].items()
            if issued + REFRESH_TOKEN_SECONDS > now
        }
        if payload["n"] in used:
            raise TokenRequestError("invalid_request", INVALID_TOKEN)
        used[payload["n"]] = payload["iat"]
        current["used_refresh_tokens"] = used

    update(mark_used)
    return list(payload["s"])


def redeem_code(
    text: str, client_id: str, redirect_uri: str, verifier: str, now: int
) -> list[str]:
    """Check a code against its client, URI and PKCE challenge, mark it used.

    Returns the granted scopes. A rejected code stays unused.
    """
    payload = unseal("code", text)
    if payload is None or payload["exp"] <= now or payload["c"] != client_id:
        raise TokenRequestError("invalid_request", INVALID_TOKEN)
    if not hmac.compare_digest(payload["r"], uri_digest(redirect_uri)):
        raise TokenRequestError("invalid_request", INVALID_TOKEN)
    try:
        challenge = s256(verifier)
    except UnicodeEncodeError:
        challenge = ""
    if not same(payload["ch"], challenge):
        raise TokenRequestError("invalid_request", INVALID_TOKEN)

    def mark_used(current: dict[str, Any]) -> None:
        used = {n: exp for n, exp in current["used_codes"].items() if exp > now}
        if payload["n"] in used:
            raise TokenRequestError("invalid_request", INVALID_TOKEN)
        used[payload["n"]] = payload["exp"]
        current["used_codes"] = used

    update(mark_used)
    return list(payload["s"])


# OAuth 1.0a ------------------------------------------------------------------------


def verify_oauth1(header: str, now: int) -> None:
    """Check an OAuth 1.0a request's key, token, timestamp and HMAC-SHA1 signature.

    The signature is recomputed with oauthlib's server-side functions from the
    query, the form body and the Authorization header, exactly as RFC 5849
    section 3.4 describes. Raises OAuth1Failure with X's error code.
    """
    creds = accepted()
    body = None
    if request.mimetype == "application/x-www-form-urlencoded":
        body = request.get_data(as_text=True)
    try:
        params = signature.collect_parameters(
            uri_query=request.query_string.decode("utf-8"),
            body=body,
            headers={"Authorization": header},
            exclude_oauth_signature=False,
        )
    except (ValueError, UnicodeDecodeError) as err:
        raise OAuth1Failure(32, "Could not authenticate you.") from err
    oauth = dict(item for item in params if item[0].startswith("oauth_"))
    needed = (
        "oauth_consumer_key",
        "oauth_nonce",
        "oauth_signature",
        "oauth_signature_method",
        "oauth_timestamp",
        "oauth_token",
    )
    if any(not oauth.get(name) for name in needed):
        raise OAuth1Failure(32, "Could not authenticate you.")
    if (
        oauth["oauth_signature_method"] != "HMAC-SHA1"
        or oauth.get("oauth_version", "1.0") != "1.0"
    ):
        raise OAuth1Failure(32, "Could not authenticate you.")
    if not same(oauth["oauth_consumer_key"], creds["api_key"]):
        raise OAuth1Failure(32, "Could not authenticate you.")
    if not same(oauth["oauth_token"], creds["access_token"]):
        raise OAuth1Failure(89, "Invalid or expired token.")
    stamp = oauth["oauth_timestamp"]
    if not stamp.isdigit() or abs(int(stamp) - now) > TIMESTAMP_TOLERANCE:
        raise OAuth1Failure(135, "Timestamp out of bounds.")

    # NOTE: nonces are not remembered, so a replayed request within the five
    # minutes of timestamp tolerance is accepted. X uses the nonce to reject it.
    signed = [item for item in params if item[0] != "oauth_signature"]
    base_string = signature.signature_base_string(
        request.method,
        signature.base_string_uri(request.base_url),
        signature.normalize_parameters(signed),
    )
    client = Client(
        creds["api_key"],
        client_secret=creds["api_secret"],
        resource_owner_secret=creds["access_token_secret"],
    )
    expected = signature.sign_hmac_sha1_with_client(base_string, client)
    # collect_parameters has already percent-decoded the header's values.
    if not same(expected, oauth["oauth_signature"]):
        raise OAuth1Failure(32, "Could not authenticate you.")


# Shared state -----------------------------------------------------------------------


def _default_state() -> dict[str, Any]:
    return {
        "switches": {name: False for name in SWITCHES},
        "used_codes": {},
        "used_refresh_tokens": {},
        "windows": {},
    }


def _state_path() -> Path:
    folder = Path(current_app.instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / sandbox_state.STATE_FILE


def _load(path: Path) -> dict[str, Any]:
    """Return the whole shared file, with the "x" section filled in."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError("the top level is not an object")
    except FileNotFoundError:
        stored = {}
    except ValueError as err:
        # Sandbox state is disposable, so the bad file is kept for inspection
        # and the state starts afresh, as in the Instagram sandbox.
        move_aside(path, str(err))
        stored = {}
    section = stored.get("x") if isinstance(stored.get("x"), dict) else {}
    current = {**_default_state(), **section}
    current["switches"] = {
        **_default_state()["switches"],
        **section.get("switches", {}),
    }
    stored["x"] = current
    return stored


def read() -> dict[str, Any]:
    """Return the X sandbox's state: switches, used codes and tokens, windows."""
    path = _state_path()
    with file_lock(path):
        return _load(path)["x"]


def update(change: Callable[[dict[str, Any]], Any]) -> Any:
    """Apply `change` to the X state under the lock, write it, return its result."""
    path = _state_path()
    with file_lock(path):
        whole = _load(path)
        result = change(whole["x"])
        write_json_atomic(path, whole)
        return result


def apply_action(action: str) -> None:
    """Apply a control panel action from ACTIONS."""

    def change(current: dict[str, Any]) -> None:
        if action == "reset":
            # Used codes and refresh tokens stay used.
            current["switches"] = _default_state()["switches"]
            current["windows"] = {}
        else:
            name = action.removeprefix("toggle_")
            current["switches"][name] = not current["switches"][name]

    update(change)


@dataclass(frozen=True)
class RateCheck:
    """The outcome of counting one request against its endpoint's window."""

    limit: int
    remaining: int
    reset: int
    limited: bool
    usage_capped: bool

    def headers(self) -> dict[str, str]:
        """Return the x-rate-limit-* headers X sends with every API response."""
        return {
            "x-rate-limit-limit": str(self.limit),
            "x-rate-limit-remaining": str(self.remaining),
            "x-rate-limit-reset": str(self.reset),
        }


def count_request(endpoint: str, limit: int, now: int) -> RateCheck:
    """Count a request in its endpoint's 15-minute window, honouring the switches."""

    def change(current: dict[str, Any]) -> RateCheck:
        window = current["windows"].get(endpoint)
        if window is None or window["reset"] <= now:
            window = {"reset": now + RATE_WINDOW_SECONDS, "used": 0}
        switches = current["switches"]
        limited = switches["rate_limit"] or window["used"] >= limit
        if not limited and not switches["usage_cap"]:
            window["used"] += 1
        current["windows"][endpoint] = window
        remaining = 0 if limited else limit - window["used"]
        return RateCheck(
            limit, remaining, window["reset"], limited, switches["usage_cap"]
        )

    return update(change)
