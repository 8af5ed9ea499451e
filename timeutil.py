"""UTC time helpers shared by the token store, the clients and the feed cache."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_iso(moment: datetime | None) -> str | None:
    """Format an aware datetime as ISO 8601 with an explicit +00:00 offset."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def parse_iso(text: str | None) -> datetime | None:
    """Parse ISO 8601 text, including Instagram's "+0000" offsets, into UTC.

    Text without an offset is taken as UTC. Raises ValueError on text that is not
    a timestamp.
    """
    if not text:
        return None
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
