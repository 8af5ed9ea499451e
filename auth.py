"""Admin authentication: the password check, the session, and login throttling."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from datetime import timedelta
from typing import Any

from flask import current_app, session
from werkzeug.security import check_password_hash

from services import instance_file, now
from token_store import file_lock, write_json_atomic

# Failed logins allowed from one client address within the window, before 429.
MAX_FAILED_LOGINS = 5
FAILED_LOGIN_WINDOW = timedelta(minutes=1)
SESSION_LIFETIME = timedelta(hours=12)


def check_password(candidate: str) -> bool:
    """Compare `candidate` with the configured password in constant time."""
    config = current_app.config
    if config.get("ADMIN_PASSWORD_HASH"):
        return check_password_hash(config["ADMIN_PASSWORD_HASH"], candidate)
    expected = config.get("ADMIN_PASSWORD") or ""
    # Digests have equal length, so compare_digest's time does not depend on
    # how long either password is.
    return hmac.compare_digest(
        hashlib.sha256(candidate.encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


def start_admin_session() -> None:
    """Replace the session with a new admin session after a successful login."""
    session.clear()
    session.permanent = True
    session["admin"] = True
    session["session_id"] = secrets.token_urlsafe(16)


def end_admin_session() -> None:
    """Forget the admin session."""
    session.clear()


def session_binding() -> str:
    """Return a random value tied to this browser's session, creating it if needed.

    The authorization flow binds each `state` to it, so a callback is accepted
    only in the browser that started the authorization.
    """
    if "session_id" not in session:
        session["session_id"] = secrets.token_urlsafe(16)
    return session["session_id"]


class LoginThrottle:
    """Failed logins per client address, shared by all workers through a file."""

    def __init__(self) -> None:
        self.path = instance_file("login-failures.json")

    def retry_after(self, address: str) -> int:
        """Return the seconds until `address` may try again, or 0 when it may now."""
        failures = self._recent(self._read(), address)
        if len(failures) < MAX_FAILED_LOGINS:
            return 0
        oldest = min(failures)
        window = FAILED_LOGIN_WINDOW.total_seconds()
        return max(1, math.ceil(oldest + window - now().timestamp()))

    def record_failure(self, address: str) -> None:
        """Count one failed login from `address`."""
        with file_lock(self.path):
            failures = self._read()
            for known in list(failures):
                failures[known] = self._recent(failures, known)
                if not failures[known]:
                    del failures[known]
            failures.setdefault(address, []).append(now().timestamp())
            write_json_atomic(self.path, failures)

    def clear(self, address: str) -> None:
        """Forget the failures of `address` after it logged in."""
        with file_lock(self.path):
            failures = self._read()
            if failures.pop(address, None) is not None:
                write_json_atomic(self.path, failures)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _recent(failures: dict[str, Any], address: str) -> list[float]:
        cutoff = now().timestamp() - FAILED_LOGIN_WINDOW.total_seconds()
        return [moment for moment in failures.get(address, []) if moment > cutoff]
