"""Logging set-up, with a filter that keeps secrets out of every log line.

The code never passes a secret to a logger, but other libraries log request
lines: Werkzeug's development server logs the callback URL with its `code`, and
urllib3 logs query strings at DEBUG. The filter masks those values on every
handler of the root logger.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMETERS = (
    "access_token",
    "client_secret",
    "code",
    "code_verifier",
    "refresh_token",
    "password",
    "state",
    "oauth_token",
    "oauth_signature",
)

_SECRET_IN_QUERY = re.compile(
    r"(?P<name>\b(?:" + "|".join(SECRET_PARAMETERS) + r"))=(?P<value>[^&\s\"']+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """Mask the values of secret query parameters and authorization headers."""
    text = _SECRET_IN_QUERY.sub(r"\g<name>=[redacted]", text)
    return _BEARER.sub(r"\1 [redacted]", text)


class RedactingFilter(logging.Filter):
    """Rewrite each record's message with `redact` before it is emitted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Send INFO and above to standard error, with secrets masked.

    A handler that the server (gunicorn) or a test runner already installed on
    the root logger is kept and gets the filter too.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
