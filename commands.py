"""The `flask token ...` and `flask feed ...` commands, for cron and monitoring."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import AppGroup

import notify
import provider_feeds
import tokens
from health import provider_health
from instagram import InstagramError, TokenInvalidError
from instagram_errors import UpstreamUnavailableError
from providers import PROVIDERS
from services import instagram_endpoints, now, token_store
from token_store import SCHEMA_VERSION, TokenStoreError


class CommandGroup(AppGroup):
    """A command group that reports an unreadable token file as a one-line error.

    The token store's errors name the file and the fix, so they are shown as
    the command's error (exit 1) rather than as a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TokenStoreError as err:
            raise click.ClickException(str(err)) from None


token_cli = CommandGroup("token", help="Inspect, refresh and import provider tokens.")
feed_cli = CommandGroup("feed", help="Fetch the cached feeds.")

PROVIDER_OPTION = click.Choice(sorted(PROVIDERS))
# Only providers whose `import_token` can succeed: X rejects every import,
# because its user tokens come from configuration or a login.
IMPORT_PROVIDER_OPTION = click.Choice(["instagram"])
# Seconds to wait for the ownfeed server's port when telling whether it runs.
SANDBOX_PROBE_TIMEOUT = 2.0


@token_cli.command("status")
def token_status() -> None:
    """Print each provider's token state; exit 1 when a token needs attention.

    An outdated feed is printed too, but only `/healthz` reports it as degraded.
    """
    moment = now()
    header = (
        "provider",
        "connected",
        "account",
        "expires in",
        "last refresh",
        "status",
    )
    rows = [header]
    attention: list[str] = []
    notes: list[str] = []
    for name in PROVIDERS:
        report, problems = provider_health(name, moment)
        if not report["configured"] and not report["connected"]:
            continue  # A provider with no keys at all is not in use.
        days = report["days_left"]
        rows.append(
            (
                name,
                "yes" if report["connected"] else "no",
                f"@{report['account']}" if report["account"] else "-",
                _days_text(days),
                (report["last_refresh"] or "never")[:16],
                report["status"] or "-",
            )
        )
        for problem in problems:
            line = f"{name}: {problem.message}"
            (attention if problem.concerns_token else notes).append(line)

    widths = [
        max(len(str(row[column])) for row in rows) for column in range(len(header))
    ]
    for row in rows:
        cells = zip(row, widths, strict=True)
        click.echo("  ".join(str(cell).ljust(width) for cell, width in cells))
    for line in attention:
        click.echo(f"needs attention: {line}", err=True)
    for line in notes:
        click.echo(f"note: {line}", err=True)
    sys.exit(1 if attention else 0)


@token_cli.command("refresh")
@click.option("--provider", type=PROVIDER_OPTION, help="Refresh only this provider.")
@click.option(
    "--force", is_flag=True, help="Refresh even when the token is not due yet."
)
def token_refresh(provider: str | None, force: bool) -> None:
    """Refresh the tokens that are due (cron-friendly); exit 1 on failure."""
    stop_if_sandbox_down()
    failed = False
    for name in [provider] if provider else list(PROVIDERS):
        result = tokens.refresh_token(name, "command", force=force)
        if result.outcome == "not_connected" and not provider:
            continue
        message = result.message
        if result.outcome == "failed":
            message = sandbox_down_message() or message
        click.echo(f"{name}: {result.outcome}: {message}")
        refused = force and result.outcome == "too_young"
        failed = failed or result.failed or refused
    notify.wait_for_deliveries()
    sys.exit(1 if failed else 0)


@token_cli.command("import")
@click.option("--provider", type=IMPORT_PROVIDER_OPTION, required=True)
def token_import(provider: str) -> None:
    """Store a token generated elsewhere, read from standard input or a prompt."""
    if sys.stdin.isatty():
        token = click.prompt("Access token", hide_input=True)
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise click.ClickException(
            "No token was given. Pipe it on standard input, for example "
            f"`flask token import --provider {provider} < token.txt`."
        )

    try:
        record = PROVIDERS[provider].import_token(token)
        tokens.store_new_connection(provider, record)
    except InstagramError as err:
        raise click.ClickException(import_failure_message(err)) from None
    except TokenStoreError as err:
        raise click.ClickException(f"The token was not stored: {err}") from None
    expiry = record["expires_at"] or "unknown until the first refresh"
    account = record["username"]
    click.echo(f"Stored the {provider} token for @{account}; expires {expiry}.")
    notify.wait_for_deliveries()


@token_cli.command("encrypt")
def token_encrypt() -> None:
    """Encrypt the token file with TOKEN_ENCRYPTION_KEY (Fernet)."""
    store = token_store()
    state = token_file_state(store.path)
    if state == "missing":
        if current_app.config.get("TOKEN_ENCRYPTION_KEY"):
            advice = "TOKEN_ENCRYPTION_KEY is set, so ownfeed writes it encrypted."
        else:
            advice = "Set TOKEN_ENCRYPTION_KEY, and ownfeed writes it encrypted."
        click.echo(
            f"There is no token file at {store.path} yet, so there is nothing to "
            f"encrypt. {advice}"
        )
        return
    try:
        if state == "encrypted":
            # Reading proves the configured key opens the file, and raises otherwise.
            store.all()
            click.echo(
                f"{store.path} is already encrypted with TOKEN_ENCRYPTION_KEY; "
                "nothing to do."
            )
            return
        store.rewrite(encrypted=True)
    except TokenStoreError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Encrypted {store.path}.")


@token_cli.command("decrypt")
def token_decrypt() -> None:
    """Write the token file back as plain JSON (TOKEN_ENCRYPTION_KEY must be set)."""
    store = token_store()
    state = token_file_state(store.path)
    key_note = ""
    if current_app.config.get("TOKEN_ENCRYPTION_KEY"):
        key_note = " Remove TOKEN_ENCRYPTION_KEY, or the next write encrypts it again."
    if state == "missing":
        click.echo(
            f"There is no token file at {store.path}, so there is nothing to decrypt."
        )
        return
    if state == "plain":
        click.echo(f"{store.path} is already plain JSON; nothing to do.{key_note}")
        return
    try:
        store.rewrite(encrypted=False)
    except TokenStoreError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Decrypted {store.path}.{key_note}")


@feed_cli.command("refresh")
@click.option(
    "--provider", type=PROVIDER_OPTION, default="instagram", show_default=True
)
def feed_refresh(provider: str) -> None:
    """Fetch the feed now, showing progress across pages; exit 1 on failure."""
    feed = provider_feeds.feed_for(provider)
    if feed is None:
        raise click.ClickException(f"{provider} has no feed.")
    cache, fetch = feed
    stop_if_sandbox_down()
    if provider == "instagram":
        from images import instagram_fetch

        max_posts = current_app.config["FEED_MAX_POSTS"]
        with click.progressbar(length=max_posts, label="Fetching posts") as progress:
            snapshot = cache.refresh_now(instagram_fetch(on_page=progress.update))
    else:
        click.echo(f"Fetching the {provider} timeline...")
        snapshot = cache.refresh_now(fetch)
    if snapshot.failed_at is not None:
        error = snapshot.last_error or {}
        message = error.get("message")
        if error.get("code") == "upstream_unavailable":
            message = sandbox_down_message() or message
        raise click.ClickException(f"Fetching the {provider} feed failed: {message}")
    click.echo(f"Saved {len(snapshot.posts or [])} {provider} posts.")


# --- messages ----------------------------------------------------------------


def import_failure_message(err: InstagramError) -> str:
    """Explain why an imported Instagram token was not stored, and what to do."""
    rejected = isinstance(err, TokenInvalidError) or (
        not err.retryable and err.status in (400, 401)
    )
    if rejected:
        details = [f"HTTP {err.status}"] if err.status is not None else []
        if err.code is not None:
            details.append(f"code {err.code}")
        if err.subcode is not None:
            details.append(f"subcode {err.subcode}")
        detail = f" ({', '.join(details)})" if details else ""
        return (
            f"Instagram rejected the pasted token as invalid or expired{detail}, so "
            "nothing was stored. Generate a new token in the Meta App Dashboard "
            "(API setup with Instagram login, Generate access tokens) and import "
            "it, or connect the account through /admin/generate."
        )
    if isinstance(err, UpstreamUnavailableError):
        down = sandbox_down_message()
        if down:
            return f"The token was not stored: {down}"
    return f"The token was not stored: {err}"


def _days_text(days: int | None) -> str:
    """Word the days left as the admin page does."""
    if days is None:
        return "unknown"
    if days == 0:
        return "less than a day"
    return "1 day" if days == 1 else f"{days} days"


def stop_if_sandbox_down() -> None:
    """Exit with the sandbox message before a call that cannot reach the sandbox.

    Checked first, so that a stopped server is not recorded as a failed fetch
    or refresh (a wrong last error, a failure count, a webhook event).
    """
    down = sandbox_down_message()
    if down is not None:
        raise click.ClickException(down)


def sandbox_down_message() -> str | None:
    """Return the message for a failed sandbox call when the ownfeed server is down.

    In sandbox mode the provider APIs are served by the running ownfeed server
    itself, so a failed connection there means that server is down, not that the
    network is. Returns None outside sandbox mode or when the server's port
    accepts a connection.
    """
    if not current_app.config["OWNFEED_SANDBOX"]:
        return None
    address = urlsplit(instagram_endpoints().graph_url)
    port = address.port or (443 if address.scheme == "https" else 80)
    try:
        with socket.create_connection(
            (address.hostname, port), timeout=SANDBOX_PROBE_TIMEOUT
        ):
            return None
    except OSError:
        pass
    server_url = f"{address.scheme}://{address.netloc}"
    start = "make run" if port == 5000 else f"make run PORT={port}"
    return (
        f"No ownfeed server is running at {server_url}. In sandbox mode the "
        f"sandbox provider runs inside the ownfeed server, so start it with "
        f"`{start}` (or the command that started it), then run this command "
        "again. If it runs at another address, set OWNFEED_SANDBOX_URL to that "
        "address for this command."
    )


def token_file_state(path: Path) -> str | None:
    """Tell whether the token file is "missing", "encrypted" or "plain" JSON.

    Returns None for a file that cannot be read or parsed, which the token store
    then reports, or moves aside, when the command rewrites it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "missing"
    except (OSError, UnicodeDecodeError):
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("version") != SCHEMA_VERSION:
        return None
    if isinstance(document.get("encrypted"), str):
        return "encrypted"
    if isinstance(document.get("providers"), dict):
        return "plain"
    return None
