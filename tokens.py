"""Token lifecycle: what happens to a stored token when a provider rejects it."""

from __future__ import annotations

import logging
from typing import Any

from instagram import TokenInvalidError
from services import now, token_store
from timeutil import to_iso

logger = logging.getLogger(__name__)


def record_token_rejected(provider: str, err: TokenInvalidError) -> None:
    """Mark the provider's token as needing a new login, keeping the token itself.

    Logs one ERROR when the status changes, not on every rejected call.
    """
    changed = False

    def mark(record: dict[str, Any]) -> None:
        nonlocal changed
        changed = record.get("status") != "reauthorization_required"
        record["status"] = "reauthorization_required"
        record["last_error"] = {
            "at": to_iso(now()),
            "code": f"190/{err.subcode}" if err.subcode else "190",
            "message": err.owner_message,
        }

    token_store().update(provider, mark)
    if changed:
        logger.error("%s token rejected: %s", provider, err.owner_message)
