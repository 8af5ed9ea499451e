"""The `flask token ...` and `flask feed ...` commands, for cron and monitoring."""

from __future__ import annotations

import sys

import click
from flask import current_app
from flask.cli import AppGroup

import notify
import provider_feeds
import tokens
from health import provider_health
from instagram import InstagramError, TokenInvalidError
from providers import PROVIDERS
from services import now, token_store
from token_store import TokenStoreError
from x_errors import XError

token_cli = AppGroup("token", help="Inspect, refresh and import provider tokens.")
feed_cli = AppGroup("feed", help="Fetch the cached feeds.")

PROVIDER_OPTION = click.Choice(sorted(PROVIDERS))


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
                f"{days} days" if days is not None else "unknown",
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
    failed = False
    for name in [provider] if provider else list(PROVIDERS):
        result = tokens.refresh_token(name, "command", force=force)
        if result.outcome == "not_connected" and not provider:
            continue
        click.echo(f"{name}: {result.outcome}: {result.message}")
        refused = force and result.outcome == "too_young"
        failed = failed or result.failed or refused
    notify.wait_for_deliveries()
    sys.exit(1 if failed else 0)


@token_cli.command("import")
@click.option("--provider", type=PROVIDER_OPTION, required=True)
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
            "`flask token import --provider instagram < token.txt`."
        )

    try:
        record = PROVIDERS[provider].import_token(token)
        tokens.store_new_connection(provider, record)
    except TokenInvalidError as err:
        raise click.ClickException(
            f"The token was not stored because {provider} rejected it: "
            f"{err.owner_message}"
        ) from None
    except (InstagramError, XError, TokenStoreError) as err:
        raise click.ClickException(f"The token was not stored: {err}") from None
    expiry = record["expires_at"] or "unknown until the first refresh"
    account = record["username"]
    click.echo(f"Stored the {provider} token for @{account}; expires {expiry}.")
    notify.wait_for_deliveries()


@token_cli.command("encrypt")
def token_encrypt() -> None:
    """Encrypt the token file with TOKEN_ENCRYPTION_KEY (Fernet)."""
    try:
        token_store().rewrite(encrypted=True)
    except TokenStoreError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"Encrypted {token_store().path}.")


@token_cli.command("decrypt")
def token_decrypt() -> None:
    """Write the token file back as plain JSON (TOKEN_ENCRYPTION_KEY must be set)."""
    try:
        token_store().rewrite(encrypted=False)
    except TokenStoreError as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"Decrypted {token_store().path}. Remove TOKEN_ENCRYPTION_KEY, or the next "
        "write encrypts it again."
    )


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
    if provider == "instagram":
        from images import instagram_fetch

        max_posts = current_app.config["FEED_MAX_POSTS"]
        with click.progressbar(length=max_posts, label="Fetching posts") as progress:
            snapshot = cache.refresh_now(instagram_fetch(on_page=progress.update))
    else:
        click.echo(f"Fetching the {provider} timeline...")
        snapshot = cache.refresh_now(fetch)
    if snapshot.failed_at is not None:
        message = (snapshot.last_error or {}).get("message")
        raise click.ClickException(f"Fetching the {provider} feed failed: {message}")
    click.echo(f"Saved {len(snapshot.posts or [])} {provider} posts.")
