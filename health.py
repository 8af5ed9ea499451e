"""What needs the owner's attention: `/healthz`, the admin banners and `token status`.

A provider needs attention when it is configured but not connected, its token
was rejected, the token expires within 7 days (or has expired), or its last
refresh failed. `/healthz` also reports a feed that has had no successful fetch
for 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from providers import PROVIDERS
from services import now, token_store
from timeutil import parse_iso, to_iso
from token_store import TokenStoreError

bp = Blueprint("health", __name__)

FEED_OUTDATED_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class Problem:
    """One thing the owner must fix, with the one action that fixes it."""

    code: str
    message: str
    # "connect" (a first login), "generate" (a new login), "refresh" or "fetch".
    action: str

    @property
    def concerns_token(self) -> bool:
        """Tell whether the token needs the owner, rather than only the feed."""
        return self.code != "feed_outdated"


def provider_health(
    name: str, moment: datetime | None = None
) -> tuple[dict[str, Any], list[Problem]]:
    """Describe one provider's connection and feed (no secret), and its problems."""
    moment = moment or now()
    provider = PROVIDERS[name]
    unreadable = None
    try:
        record = token_store().get(name)
    except TokenStoreError as err:
        record, unreadable = None, str(err)
    feed_at = _feed_fetched_at(name)
    report: dict[str, Any] = {
        "configured": provider.is_configured() or provider.works_without_connection(),
        "connected": record is not None,
        "status": record.get("status") if record else None,
        "account": record.get("username") if record else None,
        "expires_at": None,
        "days_left": None,
        "last_refresh": None,
        "last_error_code": None,
        "feed_fetched_at": to_iso(feed_at),
        "feed_age_seconds": int((moment - feed_at).total_seconds())
        if feed_at
        else None,
    }
    if record is not None:
        expires_at = parse_iso(record.get("expires_at"))
        report.update(
            expires_at=to_iso(expires_at),
            days_left=(expires_at - moment).days if expires_at else None,
            last_refresh=record.get("refreshed_at"),
            last_error_code=(record.get("last_error") or {}).get("code"),
        )
    found = problems(name, report, record, unreadable)
    report["problems"] = [problem.code for problem in found]
    return report, found


def problems(
    name: str,
    report: dict[str, Any],
    record: dict[str, Any] | None,
    unreadable: str | None = None,
) -> list[Problem]:
    """List what needs the owner for one provider, most urgent first.

    `unreadable` is the token store's error when the token file cannot be read.
    """
    provider = PROVIDERS[name]
    title = provider.title
    if not report["configured"]:
        return []
    if unreadable is not None:
        return [Problem("token_file_unreadable", unreadable, "generate")]
    found = []
    aside = moved_aside_token_file()
    if record is None and aside is not None:
        message = (
            f"The token file could not be read and was moved to {aside}. Fix that "
            "file and move it back to tokens.json, or connect the account again."
        )
        return [Problem("token_file_unreadable", message, "generate")]
    if record is None and not provider.works_without_connection():
        return [Problem("not_connected", f"{title} is not connected.", "connect")]
    if record is None:
        return _feed_problems(title, report)

    error = record.get("last_error") or {}
    if record.get("status") == "reauthorization_required":
        message = (
            f"{title} needs you to connect the account again: {error.get('message')}"
        )
        found.append(Problem("reauthorization_required", message, "generate"))
    elif (
        report["days_left"] is not None
        and report["days_left"] < 0
        and provider.expiry_is_final(record)
    ):
        # An expired token cannot be refreshed, so only a new login helps.
        message = (
            f"The {title} token expired on {report['expires_at'][:10]}. "
            "Connect the account again."
        )
        found.append(Problem("expired", message, "generate"))
    elif (
        report["days_left"] is not None
        and report["days_left"] >= 0
        and timedelta(days=report["days_left"]) < provider.attention_window
    ):
        message = f"The {title} token expires in {_days(report['days_left'])}."
        found.append(Problem("expires_soon", message, "refresh"))
    if record.get("status") == "active" and record.get("refresh_failures"):
        message = f"The last {title} token refresh failed: {error.get('message')}"
        found.append(Problem("refresh_failing", message, "refresh"))
    return found + _feed_problems(title, report)


def _feed_problems(title: str, report: dict[str, Any]) -> list[Problem]:
    found = []
    age = report["feed_age_seconds"]
    if age is not None and age > FEED_OUTDATED_AFTER.total_seconds():
        hours = age // 3600
        message = (
            f"The {title} feed has not been fetched successfully for {hours} hours."
        )
        found.append(Problem("feed_outdated", message, "fetch"))
    return found


def moved_aside_token_file() -> Path | None:
    """Return the newest `tokens.json.corrupt-*` file if it is newer than the store."""
    store_path = token_store().path
    copies = sorted(store_path.parent.glob(f"{store_path.name}.corrupt-*"))
    if not copies:
        return None
    newest = copies[-1]
    if store_path.exists() and store_path.stat().st_mtime > newest.stat().st_mtime:
        return None
    return newest


def all_problems() -> list[tuple[str, Problem]]:
    """List every provider's problems as (provider name, problem) pairs."""
    moment = now()
    found = []
    for name in PROVIDERS:
        found.extend((name, problem) for problem in provider_health(name, moment)[1])
    return found


def _days(days: int) -> str:
    if days == 0:
        return "less than a day"
    return "1 day" if days == 1 else f"{days} days"


def _feed_fetched_at(name: str) -> datetime | None:
    from images import instagram_feed
    from tweets import x_feed

    if name == "x":
        return x_feed("timeline").snapshot().fetched_at
    if name != "instagram":
        return None
    return instagram_feed().snapshot().fetched_at


def _fetch_due_feeds() -> None:
    from images import instagram_feed, instagram_fetch

    try:
        record = token_store().get("instagram")
    except TokenStoreError:
        return
    if record is not None and record.get("status") == "active":
        instagram_feed().refresh_in_background_if_due(instagram_fetch())


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Report each provider's state: 200 when all is well, 503 when degraded.

    A feed that is due is fetched in the background, so an uptime monitor keeps
    it fresh on a site with few visitors.
    """
    _fetch_due_feeds()
    moment = now()
    reports = {name: provider_health(name, moment)[0] for name in PROVIDERS}
    degraded = any(report["problems"] for report in reports.values())
    body = {"status": "degraded" if degraded else "ok", "providers": reports}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, 503 if degraded else 200
