"""The admin blueprint and the provider-agnostic authorization-code flow.

The callback follows the protocol in order: the provider's error, the state, the
code exchange, the token store, the redirect to the summary. Each `state` is
random, bound to the browser session that started it, single use, and valid for
ten minutes; it is kept server side with the redirect URI and the PKCE verifier,
so none of them travels in a cookie.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

import access
import auth
import health
import provider_feeds
import tokens
from instagram import InstagramError
from providers import PROVIDERS, Provider, RedirectUriError
from services import instance_file, now, token_store
from timeutil import parse_iso, to_iso
from token_store import TokenStoreError, file_lock, write_json_atomic
from x_errors import XError

logger = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin")

STATE_LIFETIME = timedelta(minutes=10)
MAX_MESSAGE_LENGTH = 500
# Used states are remembered this long after they expire, to report a replay
# as "already used" rather than "unknown".
USED_STATE_MEMORY = timedelta(hours=1)


class StateError(Exception):
    """The callback's `state` is missing, unknown, reused, expired or foreign."""


@dataclass(frozen=True)
class PendingAuthorization:
    """The redirect URI and PKCE verifier saved at the authorize step."""

    redirect_uri: str
    code_verifier: str | None


class PendingAuthorizations:
    """Started authorizations, keyed by a hash of their state, in a 0600 file."""

    def __init__(self) -> None:
        self.path = instance_file("oauth-pending.json")

    def begin(
        self, provider: Provider, binding: str, redirect_uri: str
    ) -> tuple[str, str | None]:
        """Record a new attempt; return its state and its PKCE S256 challenge."""
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64) if provider.uses_pkce else None
        entry = {
            "provider": provider.name,
            "binding": _digest(binding),
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "expires_at": to_iso(now() + STATE_LIFETIME),
            "used_at": None,
        }
        with file_lock(self.path):
            entries = self._read_pruned()
            entries[_digest(state)] = entry
            write_json_atomic(self.path, entries)
        return state, _s256(verifier) if verifier else None

    def complete(
        self, provider: Provider, state: str, binding: str
    ) -> PendingAuthorization:
        """Consume the attempt that `state` names, or raise StateError saying why."""
        if not state:
            raise StateError(
                "The callback has no state parameter, so it cannot be matched to an "
                "authorization started here. Start again from the Generate button."
            )
        with file_lock(self.path):
            entries = self._read_pruned()
            entry = entries.get(_digest(state))
            problem = self._problem(entry, provider, binding)
            if entry is not None and entry["used_at"] is None:
                entry["used_at"] = to_iso(now())
                verifier, entry["code_verifier"] = entry["code_verifier"], None
                write_json_atomic(self.path, entries)
        if problem:
            raise StateError(problem + " Start again from the Generate button.")
        return PendingAuthorization(entry["redirect_uri"], verifier)

    @staticmethod
    def _problem(entry: dict[str, Any] | None, provider: Provider, binding: str) -> str:
        if entry is None or entry["provider"] != provider.name:
            return "The state parameter does not match any authorization started here."
        if entry["used_at"] is not None:
            return "This authorization was already completed; a callback works once."
        if parse_iso(entry["expires_at"]) <= now():
            return "The authorization was started more than 10 minutes ago and expired."
        if not secrets.compare_digest(entry["binding"], _digest(binding)):
            return "The authorization was started in another browser session."
        return ""

    def _read_pruned(self) -> dict[str, Any]:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        cutoff = now() - USED_STATE_MEMORY
        return {
            key: entry
            for key, entry in entries.items()
            if parse_iso(entry["expires_at"]) > cutoff
        }


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --- access control -------------------------------------------------------


@bp.before_request
def require_admin() -> Response | None:
    """Send anonymous requests to the login page; only login itself is open."""
    if request.endpoint == "admin.login" or access.is_admin():
        return None
    if request.method == "GET":
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    abort(403)


@bp.after_request
def keep_codes_private(response: Response) -> Response:
    """Keep admin URLs (the callback carries the code) out of Referer headers."""
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def admin_template_values() -> dict[str, Any]:
    """Give every template the password warning, and admin pages their banners."""
    values: dict[str, Any] = {
        "admin_is_open": not access.password_required(),
        "providers": PROVIDERS,
        "banners": [],
    }
    if request.blueprint == "admin" and access.is_admin():
        values["banners"] = health.all_problems()
    return values


def _safe_next(target: str | None) -> str:
    """Return `target` when it is a path on this site's admin pages, else generate."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/admin/"):
            if "\\" not in target:
                return target
    return url_for("admin.generate")


# --- login ----------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int, dict[str, str]]:
    """Show the password form and start an admin session on the right password."""
    next_url = _safe_next(request.values.get("next"))
    if not access.password_required():
        return redirect(next_url)
    if request.method == "GET":
        return render_template("login.html", next_url=next_url)

    throttle = auth.LoginThrottle()
    address = request.remote_addr or "unknown"
    wait = throttle.retry_after(address)
    if wait:
        logger.warning("Login throttled for %s for %d s", address, wait)
        message = (
            f"Too many failed logins from your address. Try again in {wait} seconds."
        )
        page = render_template("login.html", next_url=next_url, error=message)
        return page, 429, {"Retry-After": str(wait)}

    if not auth.check_password(request.form.get("password", "")):
        throttle.record_failure(address)
        logger.warning("Failed admin login from %s", address)
        page = render_template(
            "login.html", next_url=next_url, error="The password is incorrect."
        )
        return page, 401, {}

    throttle.clear(address)
    auth.start_admin_session()
    logger.info("Admin logged in from %s", address)
    return redirect(next_url, code=303)


@bp.post("/logout")
def logout() -> Response:
    """End the admin session."""
    auth.end_admin_session()
    return redirect(url_for("admin.login"), code=303)


# --- connecting -----------------------------------------------------------


def _provider_or_404(name: str) -> Provider:
    provider = PROVIDERS.get(name)
    if provider is None:
        abort(404, description=f"Unknown provider {name!r}.")
    return provider


@bp.get("/generate")
def generate() -> str:
    """List each provider with its connection status and a Generate button."""
    return render_template("generate.html", connections=_connections())


@bp.post("/generate/<provider>")
def start_authorization(provider: str) -> Response:
    """Start an authorization: 303 to the provider with a fresh state."""
    chosen = _provider_or_404(provider)
    if not chosen.is_configured():
        _record_attempt(chosen, False, f"{chosen.title} is not configured.")
        return redirect(url_for("admin.summary"), code=303)

    try:
        redirect_uri = chosen.redirect_uri()
    except RedirectUriError as err:
        return _fail(chosen, str(err))
    state, challenge = PendingAuthorizations().begin(
        chosen, auth.session_binding(), redirect_uri
    )
    logger.info("Starting %s authorization", chosen.name)
    return redirect(chosen.authorization_url(state, redirect_uri, challenge), code=303)


@bp.get("/callback/<provider>")
def callback(provider: str) -> Response:
    """Complete an authorization: check state, exchange the code, store the token."""
    chosen = _provider_or_404(provider)
    state = request.args.get("state", "")

    # The state is checked first, so only the provider's own redirect, in the
    # browser that started it, can put its text (an error reason) on the page.
    try:
        pending = PendingAuthorizations().complete(
            chosen, state, auth.session_binding()
        )
    except StateError as err:
        return _fail(chosen, str(err))

    if "error" in request.args:
        error = request.args.get("error", "")
        message = _authorization_error_message(
            chosen, error, request.args.get("error_description")
        )
        # A press of Deny is the owner's choice, not a fault worth a warning.
        level = logging.INFO if error == "access_denied" else logging.WARNING
        return _fail(chosen, message, level)

    code = request.args.get("code", "").removesuffix("#_")
    if not code:
        return _fail(chosen, f"{chosen.title} sent no authorization code. Start again.")

    try:
        record = chosen.connect(code, pending.redirect_uri, pending.code_verifier)
        tokens.store_new_connection(chosen.name, record)
    except (InstagramError, XError, TokenStoreError) as err:
        return _fail(chosen, str(err))

    logger.info("Connected %s account %s", chosen.name, record.get("username"))
    _record_attempt(chosen, True, f"Connected @{record.get('username')}.")
    _fetch_feed_in_background(chosen.name)
    return redirect(url_for("admin.summary"), code=303)


def _fetch_feed_in_background(provider: str) -> None:
    """Fetch the new account's feed at once, whatever the backoff of the old one."""
    feed = provider_feeds.feed_for(provider)
    if feed is None:
        return
    cache, fetch = feed
    app = current_app._get_current_object()

    def run() -> None:
        try:
            with app.app_context():
                cache.refresh_now(fetch)
        except Exception:
            # The thread has no caller; visitors' requests fetch again later.
            logger.exception("Fetching the %s feed after connecting failed", provider)

    threading.Thread(target=run, name=f"feed-{provider}", daemon=True).start()


def _authorization_error_message(
    provider: Provider, error: str, description: str | None
) -> str:
    """Describe the error that the provider sent back from its authorize page.

    A provider with an `authorization_error_message` method (X) turns the
    error code into a sentence with the next step. Otherwise the provider's
    own error_description is shown, as Instagram's is a sentence already.
    """
    describe = getattr(provider, "authorization_error_message", None)
    if describe is not None:
        return describe(error, description)
    message = f"{provider.title} did not grant access: {description or error}"
    if error == "access_denied":
        message = message.rstrip(".") + (
            f". To connect the account, press Generate again and allow access on "
            f"{provider.title}'s page."
        )
    return message


def _fail(provider: Provider, message: str, level: int = logging.WARNING) -> Response:
    """Log the failed attempt once, at `level`, and show it on the summary page."""
    # The message may carry the provider's error_description, which anyone can
    # make long; it goes into the session cookie, which browsers cap at 4 KB.
    if len(message) > MAX_MESSAGE_LENGTH:
        message = message[: MAX_MESSAGE_LENGTH - 1] + "…"
    logger.log(level, "%s connection failed: %s", provider.title, message)
    _record_attempt(provider, False, message)
    return redirect(url_for("admin.summary"), code=303)


def _record_attempt(provider: Provider, succeeded: bool, message: str) -> None:
    session["last_attempt"] = {
        "provider": provider.title,
        "succeeded": succeeded,
        "message": message,
        "at": to_iso(now()),
    }


# --- summary --------------------------------------------------------------


@bp.get("/summary")
def summary() -> str:
    """Show the last attempt's outcome and each connection."""
    return render_template(
        "summary.html",
        last_attempt=session.get("last_attempt"),
        connections=_connections(),
        feed_views=provider_feeds.feed_views(),
    )


@bp.post("/refresh/<provider>")
def refresh(provider: str) -> Response:
    """Refresh the provider's token now, if the provider allows it yet."""
    chosen = _provider_or_404(provider)
    result = tokens.refresh_token(chosen.name, "admin", force=True)
    _record_attempt(
        chosen, not result.failed and result.outcome != "too_young", result.message
    )
    return redirect(url_for("admin.summary"), code=303)


@bp.post("/feed/<provider>/refresh")
def refresh_feed(provider: str) -> Response:
    """Fetch the provider's feed now and show the outcome."""
    chosen = _provider_or_404(provider)
    feed = provider_feeds.feed_for(chosen.name)
    if feed is None:
        abort(404)
    cache, fetch = feed
    snapshot = cache.refresh_now(fetch)
    if snapshot.failed_at is not None and snapshot.last_error:
        message = f"Fetching the feed failed: {snapshot.last_error['message']}"
        _record_attempt(chosen, False, message)
    else:
        count = len(snapshot.posts or [])
        _record_attempt(chosen, True, f"Fetched the feed: {count} posts kept.")
    return redirect(url_for("admin.summary"), code=303)


@bp.post("/disconnect/<provider>")
def disconnect(provider: str) -> Response:
    """Forget the provider's token."""
    chosen = _provider_or_404(provider)
    if token_store().delete(chosen.name):
        logger.info("Disconnected %s", chosen.name)
        _record_attempt(chosen, True, f"Disconnected {chosen.title}.")
    return redirect(url_for("admin.summary"), code=303)


def _connections() -> list[dict[str, Any]]:
    """Describe each provider's connection for the templates, without its token."""
    records = token_store().all()
    moment = now()
    connections = []
    for provider in PROVIDERS.values():
        record = records.get(provider.name)
        view: dict[str, Any] = {
            "provider": provider,
            "configured": provider.is_configured(),
            "connected": record is not None,
        }
        if record is not None:
            expires_at = parse_iso(record.get("expires_at"))
            view.update(
                username=record.get("username"),
                account_type=record.get("account_type"),
                status=record.get("status"),
                expires_at=expires_at,
                days_left=(expires_at - moment).days if expires_at else None,
                refreshed_at=parse_iso(record.get("refreshed_at")),
                obtained_at=parse_iso(record.get("obtained_at")),
                last_error=record.get("last_error"),
                refresh_attempts=record.get("refresh_attempts") or [],
            )
        connections.append(view)
    return connections
