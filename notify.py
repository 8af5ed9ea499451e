"""The owner's webhook: one signed JSON POST when a token's state changes.

Events are `reauthorization_required`, `refresh_failing` and `recovered`. The
body is signed with HMAC-SHA256 of the raw bytes, keyed with
NOTIFY_WEBHOOK_SECRET, in `X-Ownfeed-Signature: sha256=<hex>`. Delivery runs in a
background thread and is retried with backoff, so no request waits for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from typing import Any

import requests
from flask import current_app

from services import now
from timeutil import to_iso

logger = logging.getLogger(__name__)

# Seconds to wait before each retry; a delivery makes len + 1 attempts in all.
RETRY_DELAYS = (2, 10, 60)
TIMEOUT = (3.05, 10)

_deliveries: list[threading.Thread] = []
_deliveries_lock = threading.Lock()


def signature(body: bytes, secret: str) -> str:
    """Return the X-Ownfeed-Signature header value for `body`."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def send_event(event: str, provider: str, reason: str) -> None:
    """Post one event to NOTIFY_WEBHOOK_URL in the background, if it is set."""
    config = current_app.config
    url = config.get("NOTIFY_WEBHOOK_URL")
    if not url:
        return
    payload = {
        "event": event,
        "provider": provider,
        "reason": reason,
        "at": to_iso(now()),
    }
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "ownfeed-webhook"}
    if config.get("NOTIFY_WEBHOOK_SECRET"):
        headers["X-Ownfeed-Signature"] = signature(
            body, config["NOTIFY_WEBHOOK_SECRET"]
        )

    delays = config.get("NOTIFY_RETRY_DELAYS", RETRY_DELAYS)
    thread = threading.Thread(
        target=_deliver, args=(url, body, headers, event, provider, delays), daemon=True
    )
    with _deliveries_lock:
        _deliveries[:] = [known for known in _deliveries if known.is_alive()]
        _deliveries.append(thread)
    thread.start()


def wait_for_deliveries(timeout: float = sum(RETRY_DELAYS) + 30.0) -> None:
    """Wait for webhook deliveries under way, so a command does not exit before them."""
    deadline = time.monotonic() + timeout
    with _deliveries_lock:
        pending = list(_deliveries)
    for thread in pending:
        thread.join(max(0.0, deadline - time.monotonic()))


def _deliver(
    url: str,
    body: bytes,
    headers: dict[str, str],
    event: str,
    provider: str,
    delays: tuple[float, ...],
) -> None:
    for attempt, delay in enumerate((0, *delays), start=1):
        time.sleep(delay)
        try:
            response = requests.post(url, data=body, headers=headers, timeout=TIMEOUT)
        except requests.RequestException as err:
            outcome: Any = type(err).__name__
        else:
            if response.status_code < 300:
                logger.info("Webhook %s for %s delivered", event, provider)
                return
            outcome = f"HTTP {response.status_code}"
        logger.warning(
            "Webhook %s for %s failed on attempt %d (%s)",
            event,
            provider,
            attempt,
            outcome,
        )
    logger.error("Webhook %s for %s was not delivered; gave up", event, provider)
