"""Token lifecycle: refresh before expiry, and alert the owner when only they can act.

One code path, `refresh_token`, serves the three triggers: a background refresh
started by visitors' requests, `flask token refresh` from cron, and the admin's
Refresh button. It runs under the token store's lock, so two workers never
refresh the same token, and a failure never replaces the working token.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app, has_request_context

import notify
from instagram import InstagramError, TokenInvalidError
from providers import PROVIDERS
from services import instagram_endpoints, now, services, token_store, x_endpoints
from timeutil import parse_iso, to_iso
from token_store import TokenStoreError
from x_errors import XAuthError, XError

logger = logging.getLogger(__name__)

# Instagram refuses to refresh a token younger than this.
MIN_TOKEN_AGE = timedelta(hours=24)
# Background refreshes start at most this often. After failures the pause
# doubles from the second one on (10, 20, 40 ... minutes), up to 6 hours.
BACKGROUND_INTERVAL = timedelta(minutes=10)
MAX_BACKGROUND_BACKOFF = timedelta(hours=6)
# A token that expires within this many days needs the owner's attention.
ATTENTION_DAYS = 7
HISTORY_SIZE = 10

# Errors that mean only a new login helps, and all errors a provider call raises.
REJECTED_ERRORS = (TokenInvalidError, XAuthError)
PROVIDER_ERRORS = (InstagramError, XError)

_background_lock = threading.Lock()
# Public requests look for due tokens at most this often in each process.
BACKGROUND_CHECK = timedelta(seconds=30)


@dataclass(frozen=True)
class RefreshResult:
    """The outcome of one refresh attempt, for a command's exit code or the admin."""

    provider: str
    outcome: str
    message: str

    @property
    def failed(self) -> bool:
        return self.outcome in ("failed", "reauthorization_required", "not_connected")


# --- policy ---------------------------------------------------------------


def age_start(record: dict[str, Any]) -> datetime | None:
    """Return when the current token was issued: its last refresh, else its grant."""
    return parse_iso(record.get("refreshed_at")) or parse_iso(record.get("obtained_at"))


def refresh_allowed_at(
    record: dict[str, Any], min_age: timedelta = MIN_TOKEN_AGE
) -> datetime | None:
    """Return the first moment the provider accepts a refresh of this token."""
    start = age_start(record)
    return start + min_age if start else None


def is_due(
    record: dict[str, Any],
    moment: datetime,
    before_days: int,
    *,
    min_age: timedelta = MIN_TOKEN_AGE,
    window: timedelta | None = None,
) -> bool:
    """Tell whether the token should be refreshed now.

    It is due once it is at least `min_age` old (24 hours, Instagram's rule)
    and expires within `window` (default `before_days`), or when its expiry is
    unknown.
    """
    if record.get("status") != "active":
        return False
    allowed_at = refresh_allowed_at(record, min_age)
    if allowed_at is None or moment < allowed_at:
        return False
    expires_at = parse_iso(record.get("expires_at"))
    window = window if window is not None else timedelta(days=before_days)
    return expires_at is None or expires_at - moment <= window


def is_due_for(provider: str, record: dict[str, Any], moment: datetime) -> bool:
    """Apply the provider's own refresh policy (Instagram: days; X: minutes)."""
    policy = PROVIDERS[provider]
    if not policy.can_refresh(record):
        return False
    before_days = current_app.config["REFRESH_BEFORE_DAYS"]
    return is_due(
        record,
        moment,
        before_days,
        min_age=policy.min_refresh_age,
        window=policy.refresh_window(before_days),
    )


def background_wait(record: dict[str, Any]) -> timedelta:
    """Return the pause before the next background attempt after this many failures."""
    failures = min(int(record.get("refresh_failures") or 0), 10)
    doublings = max(failures - 1, 0)
    return min(BACKGROUND_INTERVAL * 2**doublings, MAX_BACKGROUND_BACKOFF)


# --- refreshing -----------------------------------------------------------


def refresh_token(provider: str, trigger: str, force: bool = False) -> RefreshResult:
    """Refresh the provider's token if it is due (or `force`), under the store's lock.

    `trigger` is "background", "command" or "admin"; background attempts also
    wait BACKGROUND_INTERVAL (with backoff) between tries across all workers.
    """
    events: list[tuple[str, str]] = []
    unsaved = services().unsaved_refreshes
    replaced = None
    record = None
    loaded = False
    try:
        with token_store().transaction() as providers:
            loaded = True
            record = providers.get(provider)
            replaced = (record or {}).get("refresh_token")
            pending = unsaved.get(provider)
            if pending is not None and pending[0] == replaced:
                providers[provider] = record = copy.deepcopy(pending[1])
                result = RefreshResult(
                    provider, "refreshed", "Saved the tokens of an earlier refresh."
                )
            else:
                result = _refresh_locked(provider, record, trigger, force, events)
    except TokenStoreError as err:
        if loaded:
            result = _unsaved_result(provider, record, replaced, err)
        else:
            logger.error("Cannot read the token file to refresh %s: %s", provider, err)
            result = RefreshResult(provider, "failed", str(err))
    else:
        if unsaved.pop(provider, None) is not None:
            logger.info("Saved the %s tokens of an earlier refresh", provider)
    for event, reason in events:
        notify.send_event(event, provider, reason)
    return result


def _unsaved_result(
    provider: str,
    record: dict[str, Any] | None,
    replaced: str | None,
    err: TokenStoreError,
) -> RefreshResult:
    """Report a refresh that could not be written, and hold rotated tokens.

    A provider that rotates refresh tokens (X) has already invalidated the old
    one, so the new record is kept in this process and written by the next
    refresh_token call, which background refreshes make while it is held.
    """
    logger.error("Cannot save the %s refresh: %s", provider, err)
    rotated = record is not None and record.get("refresh_token") not in (None, replaced)
    if not rotated or replaced is None:
        return RefreshResult(provider, "failed", str(err))
    services().unsaved_refreshes[provider] = (replaced, copy.deepcopy(record))
    logger.error(
        "The new %s tokens are held in this process until they can be saved. "
        "The stored refresh token no longer works",
        provider,
    )
    message = (
        f"{err} The new tokens are held in memory and saved at the next refresh "
        "attempt. Free space or fix permissions, then refresh now; if the server "
        "stops first, connect the account again."
    )
    return RefreshResult(provider, "failed", message)


def _refresh_locked(
    provider: str,
    record: dict[str, Any] | None,
    trigger: str,
    force: bool,
    events: list[tuple[str, str]],
) -> RefreshResult:
    moment = now()
    if record is None:
        title = PROVIDERS[provider].title
        return RefreshResult(provider, "not_connected", f"{title} is not connected.")
    if record.get("status") == "reauthorization_required":
        message = (record.get("last_error") or {}).get("message", "")
        return RefreshResult(provider, "reauthorization_required", message)

    policy = PROVIDERS[provider]
    if not policy.can_refresh(record):
        message = f"The {policy.title} token cannot be refreshed; connect again."
        return RefreshResult(provider, "not_due", message)
    allowed_at = refresh_allowed_at(record, policy.min_refresh_age)
    if allowed_at is not None and moment < allowed_at:
        message = (
            f"The token is less than 24 hours old, so {policy.title} does not refresh "
            f"it yet. It can be refreshed from {allowed_at:%Y-%m-%d %H:%M} UTC."
        )
        return RefreshResult(provider, "too_young", message)
    if not force and not is_due_for(provider, record, moment):
        return RefreshResult(provider, "not_due", "The token is not due for refresh.")
    if trigger == "background":
        last_try = parse_iso(record.get("refresh_attempted_at"))
        if last_try is not None and moment - last_try < background_wait(record):
            return RefreshResult(provider, "skipped", "A refresh was tried recently.")

    record["refresh_attempted_at"] = to_iso(moment)
    try:
        changes = policy.refresh(record)
    except REJECTED_ERRORS as err:
        _record_rejection(provider, record, err, events)
        _remember_attempt(record, moment, trigger, "reauthorization_required", str(err))
        return RefreshResult(provider, "reauthorization_required", owner_message(err))
    except PROVIDER_ERRORS as err:
        _record_failure(provider, record, err, moment, events)
        _remember_attempt(record, moment, trigger, "failed", str(err))
        return RefreshResult(provider, "failed", str(err))

    recovered = bool(record.get("refresh_failures"))
    record.update(changes)
    record.update(status="active", last_error=None, refresh_failures=0)
    if recovered:
        events.append(("recovered", "The token was refreshed again."))
    _remember_attempt(record, moment, trigger, "refreshed", "Refreshed.")
    logger.info(
        "Refreshed the %s token (%s); expires %s",
        provider,
        trigger,
        record.get("expires_at"),
    )
    return RefreshResult(
        provider, "refreshed", f"Refreshed; expires {record['expires_at']}."
    )


def _record_failure(
    provider: str,
    record: dict[str, Any],
    err: Exception,
    moment: datetime,
    events: list[tuple[str, str]],
) -> None:
    """Keep the working token and count the failure, announcing the first one."""
    record["refresh_failures"] = int(record.get("refresh_failures") or 0) + 1
    record["last_error"] = {
        "at": to_iso(moment),
        "code": _error_code(err),
        "message": str(err),
    }
    logger.warning(
        "Refreshing the %s token failed (%d in a row); the current token is kept: %s",
        provider,
        record["refresh_failures"],
        err,
    )
    if record["refresh_failures"] == 1:
        events.append(("refresh_failing", str(err)))


def _record_rejection(
    provider: str,
    record: dict[str, Any],
    err: Exception,
    events: list[tuple[str, str]],
) -> None:
    """Mark the token as needing a new login; log and announce only the change."""
    changed = record.get("status") != "reauthorization_required"
    record["status"] = "reauthorization_required"
    record["last_error"] = {
        "at": to_iso(now()),
        "code": _error_code(err),
        "message": owner_message(err),
    }
    if changed:
        logger.error("The %s token was rejected: %s", provider, owner_message(err))
        events.append(("reauthorization_required", owner_message(err)))


def record_token_rejected(
    provider: str, err: Exception, access_token: str | None = None
) -> None:
    """Mark the provider's token as needing a new login after any rejected call.

    Given the `access_token` the call used, the record is marked only while it
    still contains that token, so a call that started before a reconnection or a
    refresh cannot mark the new token as rejected.
    """
    events: list[tuple[str, str]] = []

    def change(record: dict[str, Any]) -> None:
        if access_token is not None and record.get("access_token") != access_token:
            logger.info("Ignored a rejection of a replaced %s token", provider)
            return
        _record_rejection(provider, record, err, events)

    token_store().update(provider, change)
    for event, reason in events:
        notify.send_event(event, provider, reason)


def store_new_connection(provider: str, record: dict[str, Any]) -> None:
    """Store a newly connected token, announcing recovery from a previous problem."""
    with token_store().transaction() as providers:
        previous = providers.get(provider) or {}
        providers[provider] = record
    if previous.get("status") == "reauthorization_required" or previous.get(
        "refresh_failures"
    ):
        notify.send_event("recovered", provider, "The account was connected again.")


def _remember_attempt(
    record: dict[str, Any], moment: datetime, trigger: str, outcome: str, message: str
) -> None:
    attempts = list(record.get("refresh_attempts") or [])
    attempts.insert(
        0,
        {
            "at": to_iso(moment),
            "trigger": trigger,
            "outcome": outcome,
            "message": message,
        },
    )
    record["refresh_attempts"] = attempts[:HISTORY_SIZE]


def owner_message(err: Exception) -> str:
    """Say in the owner's words why a token was rejected and what to do."""
    message = getattr(err, "owner_message", None)
    if message:
        return message
    return (
        f"X rejected the connection ({err}). "
        "Connect the account again from /admin/generate."
    )


def _error_code(err: Exception) -> str:
    if getattr(err, "code", None) is None:
        return type(err).__name__
    subcode = getattr(err, "subcode", None)
    return f"{err.code}/{subcode}" if subcode else str(err.code)


# --- the background trigger -----------------------------------------------


def refresh_in_background_if_due() -> None:
    """Start a background refresh of each connected token that is due.

    Called on public requests, so it only reads the cached token file; the
    refresh itself checks again under the lock.
    """
    app_services = services()
    moment = now()
    checked = app_services.token_checked_at
    if checked is not None and timedelta(0) <= moment - checked < BACKGROUND_CHECK:
        return
    app_services.token_checked_at = moment
    try:
        records = token_store().peek_all()
    except TokenStoreError:
        # Nothing can be refreshed; /healthz and the admin pages report the file.
        return
    for provider, record in records.items():
        if provider in app_services.unsaved_refreshes:
            _start_background_refresh(provider)
            continue
        if provider not in PROVIDERS or not is_due_for(provider, record, moment):
            continue
        last_try = parse_iso(record.get("refresh_attempted_at"))
        if last_try is not None and moment - last_try < background_wait(record):
            continue
        _start_background_refresh(provider)


def _start_background_refresh(provider: str) -> None:
    app = current_app._get_current_object()
    if has_request_context():
        # Learn the sandbox's loopback address from this request for the thread.
        instagram_endpoints()
        x_endpoints()
    if not _background_lock.acquire(blocking=False):
        return

    def run() -> None:
        try:
            with app.app_context():
                refresh_token(provider, "background")
        except Exception:
            # The thread has no caller: log, and the next request tries again later.
            logger.exception("Background refresh of %s failed", provider)
        finally:
            _background_lock.release()

    threading.Thread(target=run, name=f"refresh-{provider}", daemon=True).start()
