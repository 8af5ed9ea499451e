"""The X provider: OAuth 2.0 with PKCE through the admin flow, and the other two auths.

X has three kinds of auth, each where it fits. An app-only bearer token
(X_BEARER_TOKEN, or fetched once with X_API_KEY and X_API_SECRET and kept in the
token store) reads timelines and search. User context, needed for liked posts,
comes from OAuth 1.0a keys in the configuration (X_ACCESS_TOKEN and its
secret, signed by oauthlib) or from an OAuth 2.0 connection made through
/admin/generate/x, whose access token lasts two hours and is refreshed with a
rotating refresh token.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import requests
from flask import current_app

from services import now, token_store, x_client
from timeutil import parse_iso, to_iso
from x import BearerAuth, XUserToken, oauth1_auth
from x_errors import XAuthError, XError

logger = logging.getLogger(__name__)

SCOPE = "tweet.read users.read like.read offline.access"
# The app-only bearer token fetched with the API key, kept beside the user token.
APP_BEARER_RECORD = "x_app"

_AGAIN = "then press Generate X token again."
# The error codes an authorize page may send back (RFC 6749, section 4.1.2.1),
# each with what it means for ownfeed and the next step.
AUTHORIZATION_ERRORS = {
    "access_denied": (
        "Access to the X account was not granted (access_denied). To connect it, "
        "press Generate X token again and allow access on X's authorize page."
    ),
    "invalid_request": (
        "X rejected the authorization request as invalid (invalid_request). Check "
        "that X_CLIENT_ID is the app's OAuth 2.0 Client ID and that X_REDIRECT_URI "
        f"is a callback URI registered for the app, {_AGAIN}"
    ),
    "unauthorized_client": (
        "X does not let this app request an authorization code "
        "(unauthorized_client). In the X developer console, under User "
        f"authentication settings, turn on OAuth 2.0 for a Web App, {_AGAIN}"
    ),
    "unsupported_response_type": (
        "The authorize page does not support the authorization code flow "
        "(unsupported_response_type). Remove X_AUTHORIZE_URL to use "
        f"https://x.com/i/oauth2/authorize, {_AGAIN}"
    ),
    "invalid_scope": (
        f"X rejected the requested scopes, {SCOPE} (invalid_scope). In the X "
        "developer console, check that the app's User authentication settings "
        f"allow reading, {_AGAIN}"
    ),
    "server_error": (
        "X failed with an internal error while authorizing (server_error). Wait a "
        "few minutes, then press Generate X token again."
    ),
    "temporarily_unavailable": (
        "X cannot authorize right now (temporarily_unavailable). Wait a few "
        "minutes, then press Generate X token again."
    ),
}


class XProvider:
    """X (Twitter) API v2."""

    name = "x"
    title = "X"
    uses_pkce = True
    scope = SCOPE
    min_refresh_age = timedelta(0)
    # Access tokens last two hours; a refresh is due in the last 15 minutes.
    attention_window = timedelta(0)

    def refresh_window(self, before_days: int) -> timedelta:
        """Return how long before expiry a refresh is due: 15 minutes."""
        return timedelta(minutes=15)

    def can_refresh(self, record: dict[str, Any]) -> bool:
        """Tell whether the connection has a refresh token (scope offline.access)."""
        return bool(record.get("refresh_token"))

    def expiry_is_final(self, record: dict[str, Any]) -> bool:
        """Tell whether an expired access token is dead (it has no refresh token)."""
        return not self.can_refresh(record)

    def is_configured(self) -> bool:
        """Tell whether an OAuth 2.0 client is set, for the Generate button."""
        return bool(current_app.config.get("X_CLIENT_ID"))

    def works_without_connection(self) -> bool:
        """Tell whether configured keys already give access with no connection."""
        config = current_app.config
        return bool(
            config.get("X_BEARER_TOKEN")
            or config.get("X_API_KEY")
            or config.get("X_ACCESS_TOKEN")
        )

    def redirect_uri(self) -> str:
        """Return X_REDIRECT_URI, or this server's callback URL."""
        from providers import callback_url

        return callback_url(self.name, "X_REDIRECT_URI")

    def authorization_url(
        self, state: str, redirect_uri: str, code_challenge: str | None
    ) -> str:
        """Return X's authorize URL with the PKCE S256 challenge."""
        client_id = current_app.config["X_CLIENT_ID"]
        return x_client().authorize_url(
            client_id, redirect_uri, state, code_challenge, scope=self.scope
        )

    def authorization_error_message(self, error: str, description: str | None) -> str:
        """Describe the error code that X's authorize page sent back, with the fix.

        X's error_description, when it sends one, is added to every code except
        access_denied, where it adds nothing. An unknown code is shown as sent,
        and the summary page escapes it.
        """
        known = AUTHORIZATION_ERRORS.get(error)
        if known is None:
            message = (
                f"X did not grant access ({error or 'no error code'}). Press Generate "
                "X token again, and check the app's User authentication settings in "
                "the X developer console if this persists."
            )
        else:
            message = known
        if description and error != "access_denied":
            message += f" X's description: {description}"
        return message

    def connect(
        self, code: str, redirect_uri: str, code_verifier: str | None
    ) -> dict[str, Any]:
        """Exchange the code with the PKCE verifier and read the account."""
        config = current_app.config
        client = x_client()
        token = client.exchange_code(
            config["X_CLIENT_ID"],
            config.get("X_CLIENT_SECRET"),
            code,
            redirect_uri,
            code_verifier or "",
        )
        profile = client.get_me(BearerAuth(token.access_token))
        obtained_at = now()
        record = {
            "token_type": "bearer",
            "obtained_at": to_iso(obtained_at),
            "refreshed_at": None,
            "user_id": profile.get("id"),
            "username": profile.get("username"),
            "account_type": None,
            "status": "active",
            "last_error": None,
            "refresh_failures": 0,
        }
        record.update(_token_fields(token, obtained_at))
        return record

    def refresh(self, record: dict[str, Any]) -> dict[str, Any]:
        """Trade the refresh token for new tokens; the old refresh token dies.

        The caller holds the token store's lock and stores the result before the
        new access token is used, so no worker ever holds a dead refresh token.
        """
        config = current_app.config
        token = x_client().refresh(
            config["X_CLIENT_ID"],
            config.get("X_CLIENT_SECRET"),
            record["refresh_token"],
        )
        refreshed_at = now()
        changes = _token_fields(token, refreshed_at)
        changes["refreshed_at"] = to_iso(refreshed_at)
        return changes

    def import_token(self, access_token: str) -> dict[str, Any]:
        """Reject an import: X user access tokens come from configuration or a login."""
        raise XError(
            "X tokens are not imported. Set X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET "
            "from the X developer console, or connect through /admin/generate."
        )


def _token_fields(token: XUserToken, at: Any) -> dict[str, Any]:
    expires_at = at + timedelta(seconds=token.expires_in) if token.expires_in else None
    return {
        "access_token": token.access_token,
        "refresh_token": token.refresh_token,
        "expires_at": to_iso(expires_at),
        "permissions": token.scopes,
    }


# --- choosing the auth for a call -------------------------------------------


def user_auth() -> requests.auth.AuthBase | None:
    """Return user-context auth: the OAuth 2.0 connection, else OAuth 1.0a keys.

    An OAuth 2.0 token about to expire is refreshed first, under the store's
    lock. A connection that needs a new login is skipped. So is an expired token
    whose refresh failed, because X would answer 401 and the connection, whose
    refresh token may still work, would be marked as needing a new login.
    """
    record = token_store().get("x")
    if record is not None and record.get("status") == "active":
        expires_at = parse_iso(record.get("expires_at"))
        if expires_at is not None and expires_at - now() < timedelta(minutes=1):
            from tokens import refresh_token

            # The refresh is not forced, so a worker that waited for another
            # worker's refresh finds the new token not due and uses it.
            refresh_token("x", "fetch")
            record = token_store().get("x") or {}
            expires_at = parse_iso(record.get("expires_at"))
        usable = expires_at is None or expires_at > now()
        if record.get("status") == "active" and record.get("access_token") and usable:
            return BearerAuth(record["access_token"])
    config = current_app.config
    if config.get("X_ACCESS_TOKEN") and config.get("X_API_KEY"):
        return oauth1_auth(
            config["X_API_KEY"],
            config["X_API_SECRET"],
            config["X_ACCESS_TOKEN"],
            config["X_ACCESS_TOKEN_SECRET"],
        )
    return None


def app_auth() -> requests.auth.AuthBase | None:
    """Return app-only auth: X_BEARER_TOKEN, else a bearer fetched once and kept."""
    config = current_app.config
    if config.get("X_BEARER_TOKEN"):
        return BearerAuth(config["X_BEARER_TOKEN"])
    if not (config.get("X_API_KEY") and config.get("X_API_SECRET")):
        return None
    store = token_store()
    kept = store.get(APP_BEARER_RECORD)
    if kept and kept.get("access_token"):
        return BearerAuth(kept["access_token"])
    with store.transaction() as providers:
        kept = providers.get(APP_BEARER_RECORD)
        if not (kept and kept.get("access_token")):
            # X returns the same app token on every request, and asking too often
            # gets code 99, so it is fetched once and kept.
            bearer = x_client().fetch_app_bearer(
                config["X_API_KEY"], config["X_API_SECRET"]
            )
            kept = {
                "access_token": bearer,
                "token_type": "bearer",
                "obtained_at": to_iso(now()),
            }
            providers[APP_BEARER_RECORD] = kept
    return BearerAuth(kept["access_token"])


def any_auth() -> requests.auth.AuthBase | None:
    """Return the auth for calls that accept any: user context first, else app-only."""
    return user_auth() or app_auth()


def unusable_connection() -> tuple[str, str] | None:
    """Describe why a stored OAuth 2.0 connection gives no user auth: (code, message).

    Returns None when there is no connection, so the caller's own message about
    the missing keys applies.
    """
    record = token_store().get("x")
    if record is None:
        return None
    error = (record.get("last_error") or {}).get("message") or "no error was recorded"
    if record.get("status") == "reauthorization_required":
        return (
            "reauthorization_required",
            f"X rejected the connection ({error}). Connect the X account again from "
            "/admin/generate/x.",
        )
    if not record.get("refresh_token"):
        return (
            "reauthorization_required",
            "The X access token expired, and the connection has no refresh token "
            "(scope offline.access). Connect the X account again from "
            "/admin/generate/x.",
        )
    return (
        "upstream_unavailable",
        f"The X access token expired and refreshing it failed ({error}). ownfeed "
        "tries again on later requests; `flask token refresh --provider x` tries "
        "at once.",
    )


def liked_needs_user_context() -> XAuthError:
    """Build the error for /tweets/liked with only app-only auth configured."""
    return XAuthError(
        "Liked posts need user context, which app-only auth cannot give. Set "
        "X_ACCESS_TOKEN and X_ACCESS_TOKEN_SECRET (with X_API_KEY and X_API_SECRET), "
        "or set X_CLIENT_ID and connect the account from /admin/generate."
    )
