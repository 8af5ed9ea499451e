"""The ownfeed application factory; `flask run` and gunicorn find `app` here."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
from dotenv import load_dotenv
from flask import Flask, Response, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import (
    HTTPException,
    MethodNotAllowed,
    NotFound,
    RequestedRangeNotSatisfiable,
)

import allocator
import commands
import hardening
import health
import images
import media
import oauth
import sandbox
import sandbox_x
import services
import settings
import tokens
import tweets
from auth import SESSION_LIFETIME
from extensions import csrf
from feed import FeedError
from logs import configure_logging
from messages import shown_value
from services import Services
from timeutil import utc_now
from token_store import TokenStore, TokenStoreError

logger = logging.getLogger(__name__)

# The public API's paths: each prefix and every path below it. Their 404 and
# 405 errors are JSON, or an HTML page on the embed pages. Other paths keep
# Werkzeug's HTML error pages.
PUBLIC_PREFIXES = ("/images", "/embed.js", "/media", "/tweets", "/healthz")
EMBED_PAGES = ("/images/embed", "/tweets/embed")
PUBLIC_ROUTES = (
    "/images, /images/embed, /embed.js, /media/<post_id>/<width>.jpg, "
    "/media/<post_id>/<child_id>/<width>.jpg, "
    "/tweets, /tweets/search, /tweets/liked, /tweets/embed and /healthz"
)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Create and configure an ownfeed app.

    `test_config` overrides the environment, and `.env` is not read when it is
    given, so tests see only what they set. Raises settings.ConfigError, naming
    the key, when the configuration cannot work.
    """
    allocator.fix_mmap_threshold()

    # Environment: .env fills in what the real environment does not set.
    if test_config is None:
        load_dotenv(Path.cwd() / ".env")
    config = settings.read_environment(os.environ)
    config.update(test_config or {})

    # Instance folder: the token file, the feed cache and generated keys.
    instance_path = config.get("INSTANCE_PATH") or os.environ.get(
        "OWNFEED_INSTANCE_PATH"
    )
    app = Flask(
        __name__, instance_path=instance_path and str(Path(instance_path).resolve())
    )
    Path(app.instance_path).mkdir(mode=0o700, parents=True, exist_ok=True)

    # Defaults, each with its reason, then the checked configuration.
    app.config.update(
        # Flask-WTF tokens last as long as the admin session, not 1 hour, so a
        # login form left open does not fail.
        WTF_CSRF_TIME_LIMIT=None,
        # Flask-WTF's HTTPS check needs a Referer header, which the admin pages'
        # Referrer-Policy: no-referrer withholds; the session-bound token (with
        # SameSite=Lax cookies) is the protection.
        WTF_CSRF_SSL_STRICT=False,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.config.update(config)
    settings.resolve_mode(app.config, Path(app.instance_path))
    if app.config["OWNFEED_SANDBOX"]:
        client_id, client_secret = sandbox.credentials(app.config["SECRET_KEY"])
        app.config["INSTAGRAM_CLIENT_ID"] = client_id
        app.config["INSTAGRAM_CLIENT_SECRET"] = client_secret
        if not settings.x_configured(app.config):
            sandbox_keys = sandbox_x.credentials(app.config["SECRET_KEY"])
            for name, value in sandbox_keys.items():
                app.config[f"X_{name.upper()}"] = value

    # Services: logging, the token store and the clock.
    if not app.testing:
        configure_logging()
    app.extensions["ownfeed"] = Services(
        token_store=TokenStore(
            Path(app.instance_path) / "tokens.json",
            encryption_key=app.config.get("TOKEN_ENCRYPTION_KEY"),
        ),
        clock=config.get("CLOCK", utc_now),
    )
    app.extensions["ownfeed_clock"] = app.extensions["ownfeed"].clock
    csrf.init_app(app)
    hardening.init_app(app)

    # Blueprints.
    register_blueprints(app)
    app.register_error_handler(CSRFError, _csrf_failed)
    app.register_error_handler(TokenStoreError, _token_store_failed)
    app.register_error_handler(NotFound, _public_http_error)
    app.register_error_handler(MethodNotAllowed, _public_http_error)
    app.register_error_handler(RequestedRangeNotSatisfiable, _range_not_satisfiable)
    _log_mode(app)
    if test_config is None:
        for note in settings.unknown_keys(os.environ):
            logger.warning("%s", note)
    return app


def register_blueprints(app: Flask) -> None:
    """Attach the blueprints (the sandbox only when it is on) and the commands."""
    app.register_blueprint(oauth.bp)
    app.register_blueprint(images.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(tweets.bp)
    app.register_blueprint(media.bp)
    app.before_request(_refresh_due_tokens)
    if app.config["OWNFEED_SANDBOX"]:
        app.before_request(_note_sandbox_address)
        app.register_blueprint(sandbox.bp)
        app.register_blueprint(sandbox_x.bp)
        app.jinja_env.globals["x_sandbox_on"] = True
    app.cli.add_command(commands.token_cli)
    app.cli.add_command(commands.feed_cli)


def _refresh_due_tokens() -> None:
    """Keep tokens alive from visitors' requests, in the background."""
    if request.blueprint in ("images", "tweets"):
        tokens.refresh_in_background_if_due()


def _note_sandbox_address() -> None:
    """Notice a sandbox server that moved port before any feed is served."""
    services.note_sandbox_address()


def _csrf_failed(error: CSRFError) -> tuple[str, int]:
    message = (
        "The form was missing its security token or it did not match this browser "
        "session. Reload the page and submit the form again."
    )
    return render_template("message.html", title="Form expired", message=message), 400


def _token_store_failed(error: TokenStoreError) -> Response | tuple[str, int]:
    """Return a 503 when the token file cannot be read, without exposing its path."""
    logger.error("The token store failed: %s", error)
    if request.blueprint == "admin":
        page = render_template("message.html", title="Token file", message=str(error))
        return page, 503
    message = "The service cannot read its settings right now. Try again later."
    if request.path in EMBED_PAGES:
        return images.embed_error_page(503, message)
    try:
        page_format = images.parse_format(images.first_parameters().get("format"))
    except images.ParameterError:
        page_format = "json"
    # As for any 503 of a feed route, HTML is an empty grid for visitors.
    failure = FeedError("upstream_unavailable", message)
    return images.unavailable_response(failure, "images", page_format)


def _is_public_path(path: str) -> bool:
    return any(
        path == prefix or path.startswith(prefix + "/") for prefix in PUBLIC_PREFIXES
    )


def _range_not_satisfiable(
    error: RequestedRangeNotSatisfiable,
) -> Response | HTTPException:
    """Return a 416 from /media as the API's JSON error, with its Content-Range."""
    if not _is_public_path(request.path):
        return error
    sent = shown_value(request.headers.get("Range", ""), 100)
    size = "" if error.length is None else f", which is {error.length} bytes"
    message = (
        f"The Range header {sent} does not name one part of the file{size}. "
        "Send one byte range within it, such as bytes=0-1023, or no Range header."
    )
    response = images.error_response(416, "range_not_satisfiable", message)
    if error.length is not None:
        response.headers["Content-Range"] = f"{error.units} */{error.length}"
    return response


def _public_http_error(error: HTTPException) -> Response | HTTPException:
    """Return a 404 or 405 on a public path as the API's JSON error.

    The embed pages get an HTML page instead, because an iframe shows it to the
    visitor. Other paths keep Werkzeug's HTML page (`error` itself).
    """
    path = request.path
    if not _is_public_path(path):
        return error

    shown_path = shown_value(path, 100)
    allowed: list[str] = []
    if isinstance(error, MethodNotAllowed):
        allowed = sorted(error.valid_methods or [])
        code = "method_not_allowed"
        *others, last = allowed
        methods = f"{', '.join(others)} or {last}" if others else last
        message = (
            f"Method {request.method} is not allowed on {shown_path}. Use {methods}."
        )
    else:
        code = "not_found"
        # A route that called abort(404, description) explains which part of
        # the URL is wrong. A path that matches no route gets the route list.
        if error.description != NotFound.description:
            message = error.description
        else:
            message = (
                f"No public route matches {shown_path}. Check the URL against the "
                f"public routes: {PUBLIC_ROUTES}."
            )

    if path in EMBED_PAGES:
        response = images.embed_error_page(error.code, message)
    else:
        response = images.error_response(error.code, code, message)
    if allowed:
        response.headers["Allow"] = ", ".join(allowed)
    return response


def _log_mode(app: Flask) -> None:
    """Log the mode and instance folder: at INFO for a server, else at DEBUG.

    A command such as `flask token refresh` from cron would otherwise put
    the line on stderr, which cron mails to the owner every time.
    """
    level = logging.DEBUG if _loaded_by_command() else logging.INFO
    mode = "in sandbox mode" if app.config["OWNFEED_SANDBOX"] else "for Instagram"
    logger.log(level, "ownfeed started %s; instance folder %s", mode, app.instance_path)


def _loaded_by_command() -> bool:
    """Tell whether a `flask` command other than `flask run` is loading the app."""
    context = click.get_current_context(silent=True)
    return context is not None and context.info_name != "run"


try:
    app = create_app()
except settings.ConfigError as err:
    # One clear line instead of a traceback, for `flask run`, commands and gunicorn.
    raise SystemExit(f"ownfeed cannot start: {err}") from None
