"""The providers an owner can connect, each adapting its API client to the admin flow.

The authorization-code flow in `oauth.py` has no Instagram-specific code. It
asks a provider for its authorize URL and hands it the code, and the provider returns
the record to keep in the token store.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Protocol

from flask import current_app, url_for

from instagram import InstagramError, LongLivedToken, TokenInvalidError
from services import instagram_client, now, token_store
from timeutil import to_iso
from x_provider import XProvider

logger = logging.getLogger(__name__)


class Provider(Protocol):
    """The interface the authorization-code flow uses to talk to a provider."""

    name: str
    title: str
    uses_pkce: bool

    def is_configured(self) -> bool:
        """Tell whether the provider has the credentials it needs to connect."""

    def redirect_uri(self) -> str:
        """Return the exact redirect URI sent in the authorize step and the exchange."""

    def authorization_url(
        self, state: str, redirect_uri: str, code_challenge: str | None
    ) -> str:
        """Return the provider's authorize URL for this attempt."""

    def connect(
        self, code: str, redirect_uri: str, code_verifier: str | None
    ) -> dict[str, Any]:
        """Exchange the code and return the token record to store."""

    def refresh(self, record: dict[str, Any]) -> dict[str, Any]:
        """Refresh the record's token; return the fields that change."""

    def import_token(self, access_token: str) -> dict[str, Any]:
        """Check a token made elsewhere and return its record."""

    # Refresh policy: the youngest token the provider refreshes, how long
    # before expiry a refresh is due, and when an expiry needs the owner.
    min_refresh_age: timedelta
    attention_window: timedelta

    def refresh_window(self, before_days: int) -> timedelta:
        """Return how long before expiry a refresh is due."""

    def can_refresh(self, record: dict[str, Any]) -> bool:
        """Tell whether the record's token can be refreshed at all."""

    def works_without_connection(self) -> bool:
        """Tell whether the provider serves posts with no connected account."""

    def expiry_is_final(self, record: dict[str, Any]) -> bool:
        """Tell whether an expired token can no longer be refreshed."""


class InstagramProvider:
    """Instagram API with Instagram Login, for professional accounts."""

    name = "instagram"
    title = "Instagram"
    uses_pkce = False
    scope = "instagram_business_basic"
    # Instagram refuses to refresh a token younger than 24 hours.
    min_refresh_age = timedelta(hours=24)
    # A token that expires within this needs the owner's attention.
    attention_window = timedelta(days=7)

    def refresh_window(self, before_days: int) -> timedelta:
        """Return how long before expiry a refresh is due (REFRESH_BEFORE_DAYS)."""
        return timedelta(days=before_days)

    def can_refresh(self, record: dict[str, Any]) -> bool:
        """Tell whether the record's token can be refreshed (always, on Instagram)."""
        return True

    def works_without_connection(self) -> bool:
        """Tell whether the provider serves posts with no connected account."""
        return False

    def expiry_is_final(self, record: dict[str, Any]) -> bool:
        """Tell whether an expired token is dead (always: only a new login helps)."""
        return True

    def is_configured(self) -> bool:
        """Tell whether an app ID and secret (or the sandbox's) are set."""
        config = current_app.config
        return bool(
            config.get("INSTAGRAM_CLIENT_ID") and config.get("INSTAGRAM_CLIENT_SECRET")
        )

    def redirect_uri(self) -> str:
        """Return INSTAGRAM_REDIRECT_URI, or this server's callback URL."""
        return callback_url(self.name, "INSTAGRAM_REDIRECT_URI")

    def authorization_url(
        self, state: str, redirect_uri: str, code_challenge: str | None = None
    ) -> str:
        """Return Instagram's authorize URL with client_id, scope and state."""
        return instagram_client().authorize_url(redirect_uri, state, scope=self.scope)

    def connect(
        self, code: str, redirect_uri: str, code_verifier: str | None = None
    ) -> dict[str, Any]:
        """Exchange the code, trade it for a long-lived token and read the profile."""
        client = instagram_client()
        short_lived = client.exchange_code(code, redirect_uri)
        long_lived = client.exchange_long_lived(short_lived.access_token)
        profile = client.get_profile(long_lived.access_token)
        return instagram_token_record(
            long_lived, profile, short_lived.permissions, now()
        )

    def refresh(self, record: dict[str, Any]) -> dict[str, Any]:
        """Trade the long-lived token for a new one lasting 60 days from now."""
        token = instagram_client().refresh(record["access_token"])
        refreshed_at = now()
        return {
            "access_token": token.access_token,
            "token_type": token.token_type.lower(),
            "expires_at": to_iso(refreshed_at + timedelta(seconds=token.expires_in)),
            "refreshed_at": to_iso(refreshed_at),
        }

    def import_token(self, access_token: str) -> dict[str, Any]:
        """Check a token made elsewhere (the App Dashboard) and build its record.

        The profile call proves the token works. A refresh then learns its expiry.
        When Instagram does not allow one yet (a token under 24 hours old), the
        expiry is recorded as unknown and the token is due from 24 hours on,
        unless the token is the one already stored, whose known times are kept.
        Raises InstagramError when the token does not work.
        """
        client = instagram_client()
        profile = client.get_profile(access_token)
        obtained_at = now()
        record = instagram_token_record(
            LongLivedToken(access_token, "bearer", 0), profile, [], obtained_at
        )
        record["expires_at"] = None
        try:
            record.update(self.refresh(record))
        except TokenInvalidError:
            raise
        except InstagramError as err:
            stored = token_store().get("instagram") or {}
            if stored.get("access_token") == access_token:
                for key in ("expires_at", "obtained_at", "refreshed_at"):
                    record[key] = stored.get(key)
                logger.info("Imported the stored token again, so its expiry is kept")
            else:
                logger.warning(
                    "Imported token not refreshed yet, expiry unknown: %s", err
                )
        return record


class RedirectUriError(ValueError):
    """No redirect URI is configured, and the Host header cannot be trusted."""


def callback_url(provider: str, key: str) -> str:
    """Return the configured redirect URI, or build it from a trusted host.

    Outside the sandbox the URL is built from the request's Host header only
    when TRUSTED_HOSTS lists the hosts Flask accepts, so a spoofed Host cannot
    send the code elsewhere. Raises RedirectUriError otherwise.
    """
    config = current_app.config
    if config.get(key):
        return config[key]
    if not config["OWNFEED_SANDBOX"] and not config.get("TRUSTED_HOSTS"):
        raise RedirectUriError(
            f"{key} is not set. Set it to the exact redirect URI registered with the "
            "provider (or list this site's host in TRUSTED_HOSTS); ownfeed does not "
            "build it from an unchecked Host header."
        )
    return url_for("admin.callback", provider=provider, _external=True)


def instagram_token_record(
    token: LongLivedToken,
    profile: dict[str, Any],
    permissions: list[str],
    obtained_at: datetime,
) -> dict[str, Any]:
    """Build the token store's record for a newly obtained long-lived token.

    `expires_in` becomes an absolute `expires_at` here, the one place where
    Instagram tokens enter the store.
    """
    return {
        "access_token": token.access_token,
        "token_type": token.token_type.lower(),
        "expires_at": to_iso(obtained_at + timedelta(seconds=token.expires_in)),
        "obtained_at": to_iso(obtained_at),
        "refreshed_at": None,
        "user_id": profile.get("user_id"),
        "app_user_id": profile.get("app_user_id"),
        "username": profile.get("username"),
        "account_type": profile.get("account_type"),
        "permissions": list(permissions),
        "status": "active",
        "last_error": None,
        "refresh_failures": 0,
    }


PROVIDERS: dict[str, Provider] = {
    "instagram": InstagramProvider(),
    "x": XProvider(),
}
