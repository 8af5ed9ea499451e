"""The sandbox's signed tokens, codes and CDN URLs, and its state file.

Tokens, codes and CDN URLs carry their own data and an HMAC-SHA256 signature made
with a key derived from SECRET_KEY, so every gunicorn worker can check them without
shared memory. The little that must be shared (used codes, the control switches,
token invalidations) lives in `instance/sandbox-state.json`, read and written under
the token store's file lock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app, url_for

from timeutil import to_iso, utc_now
from token_store import file_lock, move_aside, write_json_atomic

CLIENT_ID = "1000000000000001"
STATE_FILE = "sandbox-state.json"
CODE_SECONDS = 3600
CDN_URL_LIFETIME = timedelta(days=5)
TOKEN_PREFIX = "IGAA"
CODE_PREFIX = "AQ"
_SIGNATURE_LENGTH = 43  # an unpadded base64 SHA-256 digest

# Control panel actions and their button labels, in display order.
ACTIONS = {
    "expire_tokens": "Expire every token issued so far",
    "invalidate_password": "Invalidate every token, as after a password change",
    "revoke_access": "Revoke the app's access",
    "toggle_refresh_failure": "Make refresh fail (on/off)",
    "toggle_rate_limit": "Rate limit Graph requests (on/off)",
    "toggle_outage": "Serve 503 outage pages (on/off)",
    "reset": "Reset everything",
}
# Actions that invalidate every token issued so far: (reason, Graph error_subcode).
INVALIDATIONS = {
    "expire_tokens": ("expired", 463),
    "invalidate_password": ("password_changed", 460),
    "revoke_access": ("revoked", 458),
}
SWITCH_ACTIONS = {
    "toggle_refresh_failure": "refresh_fails",
    "toggle_rate_limit": "rate_limit",
    "toggle_outage": "outage",
}


class CodeNotFound(Exception):
    """A code that is unknown, expired, for another app, or already used."""


class RedirectMismatch(Exception):
    """A code issued for a different redirect_uri."""


def now() -> datetime:
    """Return the app's clock (the `ownfeed_clock` extension, if set) as aware UTC."""
    clock = current_app.extensions.get("ownfeed_clock")
    return clock() if clock is not None else utc_now()


def derive_client_secret(secret_key: str | bytes) -> str:
    """Derive the sandbox app's 32-hex-digit secret from the Flask secret key."""
    key = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return hmac.new(key, b"ownfeed sandbox client secret", "sha256").hexdigest()[:32]


def client_id() -> str:
    """Return the app id the sandbox accepts: INSTAGRAM_CLIENT_ID, else its own."""
    return current_app.config.get("INSTAGRAM_CLIENT_ID") or CLIENT_ID


def client_secret() -> str:
    """Return the app secret the sandbox accepts: the configured or derived one."""
    configured = current_app.config.get("INSTAGRAM_CLIENT_SECRET")
    return configured or derive_client_secret(current_app.config["SECRET_KEY"])


def post_count() -> int:
    """Return how many posts the sandbox account has (SANDBOX_POST_COUNT)."""
    return int(current_app.config.get("SANDBOX_POST_COUNT", 150))


# State file -------------------------------------------------------------------


def _default_state() -> dict[str, Any]:
    return {
        "epoch": 0,
        "invalidations": [],
        "used_codes": {},
        "switches": {name: False for name in SWITCH_ACTIONS.values()},
    }


def _state_path() -> Path:
    folder = Path(current_app.instance_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / STATE_FILE


def read() -> dict[str, Any]:
    """Return the current state: epoch, invalidations, used codes and switches."""
    path = _state_path()
    with file_lock(path):
        return _load(path)


def _update(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Apply `change` to the state under the lock and write it back."""
    path = _state_path()
    with file_lock(path):
        current = _load(path)
        change(current)
        write_json_atomic(path, current)
        return current


def _load(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _default_state()
    try:
        stored = json.loads(raw.decode("utf-8"))
        if not isinstance(stored, dict):
            raise ValueError("the top level is not an object")
    except ValueError as err:
        # Sandbox state is disposable, so the bad file is kept for inspection and
        # the state starts afresh.
        move_aside(path, str(err))
        return _default_state()
    current = _default_state()
    current.update(stored)
    current["switches"] = {**_default_state()["switches"], **stored.get("switches", {})}
    return current


def apply_action(action: str, moment: datetime) -> None:
    """Apply a control panel action from ACTIONS to the shared state."""

    def change(current: dict[str, Any]) -> None:
        if action == "reset":
            # The epoch and the used codes stay, so no code can be used twice.
            current["invalidations"] = []
            current["switches"] = _default_state()["switches"]
        elif action in INVALIDATIONS:
            reason, subcode = INVALIDATIONS[action]
            current["epoch"] += 1
            current["invalidations"].append(
                {
                    "reason": reason,
                    "subcode": subcode,
                    "before_epoch": current["epoch"],
                    "at": to_iso(moment),
                }
            )
        else:
            switch = SWITCH_ACTIONS[action]
            current["switches"][switch] = not current["switches"][switch]

    _update(change)


def invalidation_for(token: dict[str, Any], current: dict[str, Any]) -> dict | None:
    """Return the first invalidation that covers this token, or None."""
    for invalidation in current["invalidations"]:
        if token["g"] < invalidation["before_epoch"]:
            return invalidation
    return None


# Signing --------------------------------------------------------------------------


def _key(purpose: str) -> bytes:
    secret = current_app.config["SECRET_KEY"]
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.new(secret, f"ownfeed sandbox {purpose}".encode(), "sha256").digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _seal(prefix: str, purpose: str, payload: dict[str, Any]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    signature = _b64(hmac.new(_key(purpose), body.encode(), "sha256").digest())
    return f"{prefix}{body}{signature}"


def _unseal(prefix: str, purpose: str, text: str) -> dict[str, Any] | None:
    """Return the payload of a sealed string, or None when it is not a valid one."""
    if not text.startswith(prefix) or len(text) <= len(prefix) + _SIGNATURE_LENGTH:
        return None
    body = text[len(prefix) : -_SIGNATURE_LENGTH]
    signature = text[-_SIGNATURE_LENGTH:]
    expected = _b64(hmac.new(_key(purpose), body.encode(), "sha256").digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _timestamp(moment: datetime) -> int:
    return int(moment.timestamp())


# Tokens and codes ---------------------------------------------------------------


def issue_token(kind: str, moment: datetime, lifetime: int) -> str:
    """Return a signed token of `kind` ("short" or "long") valid for `lifetime` s."""
    issued_at = _timestamp(moment)
    payload = {
        "k": kind,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "g": read()["epoch"],
        "n": secrets.token_hex(6),
    }
    return _seal(TOKEN_PREFIX, "token", payload)


def open_token(text: str) -> dict[str, Any] | None:
    """Return a token's payload (kind, issue and expiry times, epoch), or None."""
    return _unseal(TOKEN_PREFIX, "token", text)


def _uri_digest(redirect_uri: str) -> str:
    return hashlib.sha256(redirect_uri.encode()).hexdigest()


def issue_code(
    client_id: str, redirect_uri: str, scopes: list[str], moment: datetime
) -> str:
    """Return a signed authorization code, valid one hour, bound to app and URI."""
    payload = {
        "a": client_id,
        "r": _uri_digest(redirect_uri),
        "s": scopes,
        "exp": _timestamp(moment) + CODE_SECONDS,
        "n": secrets.token_hex(8),
    }
    return _seal(CODE_PREFIX, "code", payload)


def redeem_code(
    code: str, client_id: str, redirect_uri: str, moment: datetime
) -> list[str]:
    """Mark a code used and return its scopes.

    Raises CodeNotFound for an unknown, expired, foreign or used code, and
    RedirectMismatch when redirect_uri differs from the authorize request's by
    even one byte. A rejected code stays unused.
    """
    payload = _unseal(CODE_PREFIX, "code", code)
    now_ts = _timestamp(moment)
    if payload is None or payload["a"] != client_id or payload["exp"] <= now_ts:
        raise CodeNotFound()
    if not hmac.compare_digest(payload["r"], _uri_digest(redirect_uri)):
        raise RedirectMismatch()

    def mark_used(current: dict[str, Any]) -> None:
        # Expired codes fail on their expiry anyway, so their entries can go.
        used = {
            nonce: expires
            for nonce, expires in current["used_codes"].items()
            if expires > now_ts
        }
        if payload["n"] in used:
            raise CodeNotFound()
        used[payload["n"]] = payload["exp"]
        current["used_codes"] = used

    _update(mark_used)
    return list(payload["s"])


# CDN URLs ---------------------------------------------------------------------------


def sign_cdn(media_id: str, extension: str, oe: str) -> str:
    """Return the `oh` signature of a CDN file and its hex expiry time `oe`."""
    message = f"{media_id}.{extension}:{oe}".encode()
    return hmac.new(_key("cdn"), message, "sha256").hexdigest()[:32]


def cdn_url(media_id: str, extension: str) -> str:
    """Build a signed CDN URL that expires five days from now, like Instagram's."""
    oe = format(_timestamp(now() + CDN_URL_LIFETIME), "X")
    oh = sign_cdn(media_id, extension, oe)
    endpoint = "sandbox.cdn_video" if extension == "mp4" else "sandbox.cdn_image"
    return url_for(endpoint, media_id=media_id, oh=oh, oe=oe, _external=True)


def check_cdn_signature(
    media_id: str, extension: str, oh: str, oe: str, moment: datetime
) -> datetime | None:
    """Return the URL's expiry time, or None when it is forged or has expired."""
    if not re.fullmatch(r"[0-9A-Fa-f]{1,12}", oe):
        return None
    if not hmac.compare_digest(oh.encode(), sign_cdn(media_id, extension, oe).encode()):
        return None
    expires_at = datetime.fromtimestamp(int(oe, 16), UTC)
    if moment >= expires_at:
        return None
    return expires_at
