"""Configuration: read from the environment, converted to types, and checked.

Every key is documented in `.env.example` and in the README. Values are converted
where they are read, so the rest of the code sees ints, bools and lists.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from werkzeug.security import check_password_hash

INSTAGRAM_DEFAULTS = {
    "INSTAGRAM_AUTHORIZE_URL": "https://www.instagram.com/oauth/authorize",
    "INSTAGRAM_TOKEN_URL": "https://api.instagram.com/oauth/access_token",
    "INSTAGRAM_GRAPH_URL": "https://graph.instagram.com",
    # v25.0 is served until 2028-07-29 (Meta's versioning schedule).
    "INSTAGRAM_API_VERSION": "v25.0",
}

X_DEFAULTS = {
    "X_API_URL": "https://api.x.com",
    "X_AUTHORIZE_URL": "https://x.com/i/oauth2/authorize",
    "X_TOKEN_URL": "https://api.x.com/2/oauth2/token",
}
# The X keys that configure an X account, in any of the three kinds of auth.
X_AUTH_KEYS = (
    "X_BEARER_TOKEN",
    "X_API_KEY",
    "X_ACCESS_TOKEN",
    "X_CLIENT_ID",
)

STRING_KEYS = (
    "SECRET_KEY",
    "ADMIN_PASSWORD",
    "ADMIN_PASSWORD_HASH",
    "INSTAGRAM_CLIENT_ID",
    "INSTAGRAM_CLIENT_SECRET",
    "INSTAGRAM_REDIRECT_URI",
    "NOTIFY_WEBHOOK_URL",
    "NOTIFY_WEBHOOK_SECRET",
    "OWNFEED_SANDBOX_URL",
    *INSTAGRAM_DEFAULTS,
    *X_DEFAULTS,
    "X_API_KEY",
    "X_API_SECRET",
    "X_BEARER_TOKEN",
    "X_ACCESS_TOKEN",
    "X_ACCESS_TOKEN_SECRET",
    "X_CLIENT_ID",
    "X_CLIENT_SECRET",
    "X_REDIRECT_URI",
    "X_USERNAME",
)

# (key, default, minimum, maximum)
INTEGER_KEYS = (
    ("FEED_CACHE_SECONDS", 1800, 1, 7 * 24 * 3600),
    ("FEED_MAX_POSTS", 500, 1, 10_000),
    ("REFRESH_BEFORE_DAYS", 30, 1, 59),
    ("SANDBOX_POST_COUNT", 150, 1, 10_000),
    ("MEDIA_CACHE_MAX_MB", 500, 10, 1_000_000),
    # X bills each post it returns, so its feeds are kept longer and smaller.
    ("X_CACHE_SECONDS", 3600, 60, 7 * 24 * 3600),
    ("X_FEED_MAX_POSTS", 100, 5, 3200),
    # New distinct /tweets/search queries allowed per hour (each is a billed call).
    ("X_SEARCH_NEW_PER_HOUR", 20, 1, 10_000),
    # How many reverse proxies in front of ownfeed set X-Forwarded-* headers.
    ("TRUSTED_PROXIES", 0, 0, 5),
)

URL_KEYS = (
    "INSTAGRAM_AUTHORIZE_URL",
    "INSTAGRAM_TOKEN_URL",
    "INSTAGRAM_GRAPH_URL",
    "INSTAGRAM_REDIRECT_URI",
    "NOTIFY_WEBHOOK_URL",
    "OWNFEED_SANDBOX_URL",
    "X_API_URL",
    "X_AUTHORIZE_URL",
    "X_TOKEN_URL",
    "X_REDIRECT_URI",
)


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the configuration keys found in `environ`, converted to their types."""
    config: dict[str, Any] = {**INSTAGRAM_DEFAULTS, **X_DEFAULTS}
    for key in STRING_KEYS:
        value = environ.get(key, "").strip()
        if value:
            config[key] = value
    for key, default, minimum, maximum in INTEGER_KEYS:
        config[key] = _read_integer(environ, key, default, minimum, maximum)

    config["OWNFEED_SANDBOX"] = _read_sandbox_switch(environ)
    config["IMAGES_ALLOWED_ORIGINS"] = _read_origins(
        environ.get("IMAGES_ALLOWED_ORIGINS", "")
    )
    config["SANDBOX_TOKEN_RESPONSE"] = environ.get("SANDBOX_TOKEN_RESPONSE", "flat")
    config["MEDIA_PROXY"] = _read_switch(environ, "MEDIA_PROXY", default=True)
    config["MEDIA_WIDTHS"] = _read_widths(environ.get("MEDIA_WIDTHS", ""))
    hosts = [host.strip() for host in environ.get("TRUSTED_HOSTS", "").split(",")]
    config["TRUSTED_HOSTS"] = [host for host in hosts if host] or None
    key = environ.get("TOKEN_ENCRYPTION_KEY", "").strip()
    config["TOKEN_ENCRYPTION_KEY"] = key or None
    return config


# Prefixes of ownfeed's keys, to spot a misspelt key in the environment.
KEY_PREFIXES = (
    "ADMIN_",
    "FEED_",
    "IMAGES_",
    "INSTAGRAM_",
    "MEDIA_",
    "NOTIFY_",
    "OWNFEED_",
    "REFRESH_",
    "SANDBOX_",
    "TOKEN_",
    "TRUSTED_",
    "X_",
)
OTHER_KEYS = (
    "OWNFEED_SANDBOX",
    "OWNFEED_INSTANCE_PATH",
    "IMAGES_ALLOWED_ORIGINS",
    "SANDBOX_TOKEN_RESPONSE",
    "MEDIA_PROXY",
    "MEDIA_WIDTHS",
    "TRUSTED_HOSTS",
    "TOKEN_ENCRYPTION_KEY",
    "SANDBOX_X_RATE_LIMIT",
    "SANDBOX_X_PUBLIC_CLIENT",
)


def unknown_keys(environ: Mapping[str, str]) -> list[str]:
    """Describe environment keys that look like ownfeed's but are not, with a guess."""
    known = set(STRING_KEYS) | {key for key, *_ in INTEGER_KEYS} | set(OTHER_KEYS)
    notes = []
    for key in sorted(environ):
        if key in known or not key.startswith(KEY_PREFIXES):
            continue
        guess = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean {guess[0]}?" if guess else ""
        notes.append(f"{key} is not an ownfeed setting and is ignored{hint}")
    return notes


def resolve_mode(config: dict[str, Any], instance_path: Path) -> None:
    """Decide between sandbox and real provider, then check what that mode needs.

    Sandbox mode fills in a generated SECRET_KEY kept in the instance folder.
    Raises ConfigError naming the first missing or invalid key.
    """
    switch = config.get("OWNFEED_SANDBOX")
    has_client = bool(config.get("INSTAGRAM_CLIENT_ID"))
    # A site may show only its X posts, so X keys alone also mean real mode.
    has_provider = has_client or x_configured(config)
    if switch is None:
        config["OWNFEED_SANDBOX"] = not has_provider
    elif switch is False and not has_provider:
        raise ConfigError(
            "OWNFEED_SANDBOX is 0 but no provider is configured. Set "
            "INSTAGRAM_CLIENT_ID and INSTAGRAM_CLIENT_SECRET to the Instagram app ID "
            "and secret (or the X keys), or remove OWNFEED_SANDBOX to use the sandbox."
        )

    if config.get("ADMIN_PASSWORD") and config.get("ADMIN_PASSWORD_HASH"):
        raise ConfigError(
            "Both ADMIN_PASSWORD and ADMIN_PASSWORD_HASH are set. Set only one of them."
        )
    if config.get("ADMIN_PASSWORD_HASH"):
        _check_password_hash(config["ADMIN_PASSWORD_HASH"])
    if config.get("SANDBOX_TOKEN_RESPONSE") not in ("flat", "documented"):
        raise ConfigError(
            f"SANDBOX_TOKEN_RESPONSE is {config.get('SANDBOX_TOKEN_RESPONSE')!r}. "
            "Use 'flat' (the shape seen in live traffic) or 'documented'."
        )
    for key in URL_KEYS:
        if config.get(key):
            check_url(key, config[key])

    _check_x(config)
    _check_encryption_key(config.get("TOKEN_ENCRYPTION_KEY"))
    if config["OWNFEED_SANDBOX"]:
        if not config.get("SECRET_KEY"):
            config["SECRET_KEY"] = _instance_secret_key(instance_path)
        return
    required = (
        ("INSTAGRAM_CLIENT_SECRET", "SECRET_KEY") if has_client else ("SECRET_KEY",)
    )
    for key in required:
        if not config.get(key):
            raise ConfigError(f"{key} is not set. {_MISSING_HINTS[key]}")
    if not (config.get("ADMIN_PASSWORD") or config.get("ADMIN_PASSWORD_HASH")):
        raise ConfigError(
            "ADMIN_PASSWORD is not set. With a real Instagram app the admin pages "
            "need a password: set ADMIN_PASSWORD, or ADMIN_PASSWORD_HASH to a "
            "Werkzeug hash of it."
        )


_MISSING_HINTS = {
    "INSTAGRAM_CLIENT_SECRET": (
        "Copy the Instagram app secret from the app's Instagram Login settings."
    ),
    "SECRET_KEY": (
        "Set it to a long random value, for example the output of "
        "`python -c 'import secrets; print(secrets.token_hex(32))'`, and keep it "
        "the same across restarts and workers."
    ),
}


_HASH_COMMAND = (
    ".venv/bin/python -c 'from werkzeug.security import generate_password_hash; "
    'print(generate_password_hash("your password"))\''
)


def _check_password_hash(value: str) -> None:
    """Raise ConfigError unless `value` is a hash Werkzeug's check_password_hash reads.

    A Werkzeug hash is "method$salt$hash" with a hex hash, such as
    "scrypt:32768:8:1$...$...". Anything else makes every login fail. The
    message never quotes the value, because it may be a plain password pasted
    by mistake.
    """
    method, salt, digest = (value.split("$", 2) + ["", ""])[:3]
    valid = bool(method and salt and re.fullmatch(r"[0-9a-f]+", digest))
    if valid:
        # Werkzeug 3.1 has no public call that validates a hash, so checking an
        # empty password tests the method and its parameters. It costs one
        # login's hashing.
        try:
            check_password_hash(value, "")
        except ValueError:
            valid = False
    if not valid:
        raise ConfigError(
            "ADMIN_PASSWORD_HASH is not a Werkzeug password hash "
            '("method$salt$hash", such as scrypt:32768:8:1$...), so every login '
            f"would fail. Make one with `{_HASH_COMMAND}` and set "
            "ADMIN_PASSWORD_HASH to its output, in single quotes in a shell so $ is "
            "not expanded. Or set ADMIN_PASSWORD instead."
        )


def _check_encryption_key(key: str | None) -> None:
    """Raise ConfigError unless TOKEN_ENCRYPTION_KEY is unset or a Fernet key."""
    if not key:
        return
    from cryptography.fernet import Fernet

    try:
        Fernet(key)
    except ValueError:
        raise ConfigError(
            "TOKEN_ENCRYPTION_KEY is not a valid Fernet key (32 bytes, URL-safe "
            "base64). Make one with `python -c 'from cryptography.fernet import "
            "Fernet; print(Fernet.generate_key().decode())'`."
        ) from None


def _check_x(config: dict[str, Any]) -> None:
    """Raise ConfigError when an X key is set without the key it pairs with."""
    pairs = (
        ("X_API_KEY", "X_API_SECRET"),
        ("X_API_SECRET", "X_API_KEY"),
        ("X_ACCESS_TOKEN", "X_ACCESS_TOKEN_SECRET"),
        ("X_ACCESS_TOKEN_SECRET", "X_ACCESS_TOKEN"),
    )
    for key, partner in pairs:
        if config.get(key) and not config.get(partner):
            raise ConfigError(
                f"{key} is set but {partner} is not. Copy both from the X developer "
                "console, or remove both."
            )
    if config.get("X_ACCESS_TOKEN") and not config.get("X_API_KEY"):
        raise ConfigError(
            "X_ACCESS_TOKEN is set but X_API_KEY is not. OAuth 1.0a signing needs the "
            "app's X_API_KEY and X_API_SECRET as well as the access token and secret."
        )
    username = config.get("X_USERNAME")
    if username and not re.fullmatch(r"@?[A-Za-z0-9_]{1,15}", username):
        raise ConfigError(
            f"X_USERNAME is {username!r}. Use an X handle of 1 to 15 letters, digits "
            "or underscores, such as jack."
        )
    if username:
        config["X_USERNAME"] = username.lstrip("@")


def x_configured(config: dict[str, Any]) -> bool:
    """Tell whether any kind of X auth is configured."""
    return any(config.get(key) for key in X_AUTH_KEYS)


def check_url(key: str, url: str) -> None:
    """Raise ConfigError unless `url` is https, or http on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return
    raise ConfigError(
        f"{key} is {url!r}. Use an https:// URL; plain http:// is accepted only "
        "for loopback hosts such as 127.0.0.1 or localhost."
    )


def is_loopback(host: str) -> bool:
    """Tell whether `host` names this machine: localhost, 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_integer(
    environ: Mapping[str, str], key: str, default: int, minimum: int, maximum: int
) -> int:
    text = environ.get(key, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(
            f"{key} is {text!r}, not a whole number. Set it to a number from "
            f"{minimum} to {maximum}, or remove it to use {default}."
        ) from None
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"{key} is {value}. Set it to a number from {minimum} to {maximum}, "
            f"or remove it to use {default}."
        )
    return value


def _read_sandbox_switch(environ: Mapping[str, str]) -> bool | None:
    text = environ.get("OWNFEED_SANDBOX", "").strip()
    if not text:
        return None
    if text in ("1", "0"):
        return text == "1"
    raise ConfigError(
        f"OWNFEED_SANDBOX is {text!r}. Set it to 1 to force the sandbox, 0 to "
        "forbid it, or remove it to use the sandbox when INSTAGRAM_CLIENT_ID is unset."
    )


def _read_switch(environ: Mapping[str, str], key: str, default: bool) -> bool:
    text = environ.get(key, "").strip()
    if not text:
        return default
    if text in ("1", "0"):
        return text == "1"
    raise ConfigError(f"{key} is {text!r}. Set it to 1 or 0.")


def _read_widths(text: str) -> tuple[int, ...]:
    """Read MEDIA_WIDTHS, a comma list of image widths in pixels."""
    if not text.strip():
        return (150, 320, 640, 1080)
    widths = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 16 <= int(part) <= 4096:
            raise ConfigError(
                f"MEDIA_WIDTHS contains {part!r}. List widths in pixels from 16 to "
                "4096, separated by commas, for example 150,320,640,1080."
            )
        widths.append(int(part))
    return tuple(sorted(set(widths)))


def _read_origins(text: str) -> list[str]:
    origins = [origin.strip().rstrip("/") for origin in text.split(",")]
    origins = [origin for origin in origins if origin]
    for origin in origins:
        parts = urlsplit(origin)
        valid = origin == "*" or (
            parts.scheme in ("http", "https") and parts.netloc and not parts.path
        )
        if not valid:
            raise ConfigError(
                f"IMAGES_ALLOWED_ORIGINS contains {origin!r}. List origins such as "
                "https://example.com (scheme and host, no path), separated by "
                "commas, or * for any origin."
            )
    return origins


def _instance_secret_key(instance_path: Path) -> str:
    """Return the sandbox's session key, generating `instance/secret_key` once.

    The key is written to a temporary file and linked into place, so a worker
    that starts at the same moment reads a whole key, never an empty file.
    """
    key_file = instance_path / "secret_key"
    if not key_file.exists():
        temp_file = instance_path / f".secret_key.{secrets.token_hex(8)}"
        fd = os.open(temp_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as key_output:
            key_output.write(secrets.token_hex(32) + "\n")
        try:
            os.link(temp_file, key_file)
        except FileExistsError:
            pass  # Another worker created it first; every worker uses that one.
        finally:
            temp_file.unlink()
    return key_file.read_text(encoding="utf-8").strip()
