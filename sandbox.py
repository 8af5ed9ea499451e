"""The embedded stand-in for Instagram, served under /sandbox/ when no real app is set.

It speaks Instagram's wire format, quirks included, so the real client runs against
it unchanged: the authorize page, the code exchange (api.instagram.com), the
long-lived exchange, refresh, /me and media on graph.instagram.com, and the CDN.
Tokens and codes are signed with a key derived from SECRET_KEY, so any gunicorn
worker can check them. What must be shared (used codes, switches, invalidations)
lives in `instance/sandbox-state.json`, read and written under a file lock.
"""

from __future__ import annotations

import hmac
import logging
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)

import sandbox_data as data
import sandbox_graph
import sandbox_state as state
from access import admin_only
from extensions import csrf
from sandbox_graph import Outage, json_response

if TYPE_CHECKING:
    from instagram import Endpoints

logger = logging.getLogger(__name__)

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox")
bp.register_blueprint(sandbox_graph.bp)

SHORT_TOKEN_SECONDS = 3600
KNOWN_SCOPES = frozenset(
    {
        "instagram_business_basic",
        "instagram_business_content_publish",
        "instagram_business_manage_messages",
        "instagram_business_manage_comments",
        "instagram_business_manage_insights",
    }
)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CODE_NOT_FOUND = "Matching code was not found or was already used"
REDIRECT_MISMATCH = (
    "Error validating verification code. Please make sure your redirect_uri is "
    "identical to the one you used in the OAuth dialog request"
)
OUTAGE_PAGE = (
    "<!DOCTYPE html><html><head><title>Error</title></head><body>"
    "<h1>Sorry, something went wrong.</h1><p>We're working on it and we'll get it "
    "fixed as soon as we can.</p></body></html>"
)


def credentials(secret_key: str) -> tuple[str, str]:
    """Return the sandbox app's (client_id, client_secret), derived from the key."""
    return state.CLIENT_ID, state.derive_client_secret(secret_key)


def endpoints(base_url: str, api_version: str) -> Endpoints:
    """Return the client endpoints that point at the sandbox served from `base_url`."""
    # Imported here so that instagram.py may import this module without a cycle.
    from instagram import Endpoints

    base = base_url.rstrip("/")
    return Endpoints(
        authorize_url=f"{base}/sandbox/oauth/authorize",
        token_url=f"{base}/sandbox/oauth/access_token",
        graph_url=f"{base}/sandbox/graph",
        api_version=api_version,
    )


class ExchangeError(Exception):
    """A code exchange error, sent in the exchange's own flat shape."""


@bp.errorhandler(ExchangeError)
def _exchange_error(error: ExchangeError) -> Response:
    logger.info("Sandbox code exchange rejected: %s", error)
    body = {"error_type": "OAuthException", "code": 400, "error_message": str(error)}
    return json_response(body, 400)


@bp.errorhandler(Outage)
def _outage(_error: Outage) -> Response:
    return Response(OUTAGE_PAGE, 503, content_type="text/html; charset=utf-8")


# Pages ------------------------------------------------------------------------


@bp.get("/")
@admin_only
def index() -> str:
    """Show that the sandbox is active, its switches and the control panel."""
    current = state.read()
    return render_template(
        "sandbox/index.html",
        switches=current["switches"],
        invalidations=current["invalidations"],
        client_id=state.client_id(),
        username=data.USERNAME,
        post_count=state.post_count(),
        actions=state.ACTIONS,
        graph_url=url_for("sandbox.index", _external=True) + "graph",
    )


@bp.post("/control")
@admin_only
def control() -> Response:
    """Apply one control panel action, then go back to the panel."""
    action = request.form.get("action", "")
    if action not in state.ACTIONS:
        logger.info("Sandbox control action %r rejected", action)
        abort(
            400,
            description=f"Invalid sandbox action {action!r}: use a panel button.",
        )
    state.apply_action(action, state.now())
    logger.info("Sandbox control action %s applied", action)
    return redirect(url_for("sandbox.index"), 303)


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> Any:
    """Show the consent page, or send the browser back with a code or an error."""
    source = request.form if request.method == "POST" else request.args
    client_id = source.get("client_id", "")
    redirect_uri = source.get("redirect_uri", "")
    scope = source.get("scope", "")
    oauth_state = source.get("state")

    problem = _authorize_problem(client_id, redirect_uri, source)
    if problem:
        logger.info("Sandbox authorize request rejected: %s", problem)
        return render_template("sandbox/error.html", message=problem), 400
    scopes = [name for name in re.split(r"[,\s]+", scope) if name]

    if request.method == "GET":
        return render_template(
            "sandbox/authorize.html",
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            scopes=scopes,
            oauth_state=oauth_state,
            username=data.USERNAME,
        )

    if request.form.get("decision") != "allow":
        logger.info("Sandbox authorization denied by the user")
        params = {
            "error": "access_denied",
            "error_reason": "user_denied",
            "error_description": "The user denied your request.",
        }
        return redirect(_with_query(redirect_uri, params, oauth_state), 303)

    code = state.issue_code(client_id, redirect_uri, scopes, state.now())
    logger.info("Sandbox authorization allowed, so a code was issued")
    # Instagram appends "#_" to the redirect, and it is not part of the code.
    return redirect(_with_query(redirect_uri, {"code": code}, oauth_state) + "#_", 303)


def _authorize_problem(client_id: str, redirect_uri: str, source: Any) -> str | None:
    """Return the error page's message for a bad authorize request, or None."""
    if client_id != state.client_id():
        return "Invalid platform app"
    if source.get("response_type") != "code":
        return 'Invalid response_type: only "code" is supported.'
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        return (
            "Invalid redirect_uri: send an absolute http or https URL without a "
            "fragment."
        )
    # The sandbox has no registered URIs. It accepts the configured one, its own
    # host and loopback hosts, so it cannot send a browser and a code elsewhere.
    configured = current_app.config.get("INSTAGRAM_REDIRECT_URI")
    own_host = parts.netloc == request.host or parts.hostname in LOOPBACK_HOSTS
    if redirect_uri != configured and not own_host:
        return (
            f"Invalid redirect_uri: the sandbox only redirects to {request.host}, "
            "a loopback host or INSTAGRAM_REDIRECT_URI."
        )
    scopes = [name for name in re.split(r"[,\s]+", source.get("scope", "")) if name]
    if not scopes:
        return "Invalid Scopes: ask for instagram_business_basic."
    unknown = [name for name in scopes if name not in KNOWN_SCOPES]
    if unknown:
        return f"Invalid Scopes: {', '.join(unknown)}"
    return None


def _with_query(uri: str, params: dict[str, str], oauth_state: str | None) -> str:
    """Append parameters to a redirect URI that may already have a query."""
    if oauth_state is not None:
        params = {**params, "state": oauth_state}
    query = urlencode(params)
    if uri.endswith(("?", "&")):
        return f"{uri}{query}"
    if urlsplit(uri).query:
        return f"{uri}&{query}"
    return f"{uri}?{query}"


# The code exchange (api.instagram.com) --------------------------------------


@bp.post("/oauth/access_token")
@csrf.exempt
def exchange_code() -> Response:
    """Exchange an authorization code for a short-lived token."""
    if state.read()["switches"]["outage"]:
        raise Outage()
    form = request.form
    for name in ("client_id", "client_secret", "grant_type", "redirect_uri", "code"):
        if not form.get(name):
            raise ExchangeError(f"You must provide a {name}")
    if form["client_id"] != state.client_id():
        raise ExchangeError("Invalid platform app")
    if not hmac.compare_digest(form["client_secret"], state.client_secret()):
        raise ExchangeError("Error validating client secret.")
    if form["grant_type"] != "authorization_code":
        raise ExchangeError("Invalid grant_type: expected authorization_code")

    now = state.now()
    try:
        scopes = state.redeem_code(
            form["code"], form["client_id"], form["redirect_uri"], now
        )
    except state.CodeNotFound as err:
        raise ExchangeError(CODE_NOT_FOUND) from err
    except state.RedirectMismatch as err:
        raise ExchangeError(REDIRECT_MISMATCH) from err
    token = state.issue_token("short", now, SHORT_TOKEN_SECONDS)
    logger.info("Sandbox code exchanged for a short-lived token")

    if current_app.config.get("SANDBOX_TOKEN_RESPONSE", "flat") == "documented":
        record = {
            "access_token": token,
            "user_id": data.APP_SCOPED_ID,
            "permissions": ",".join(scopes),
        }
        return json_response({"data": [record]})
    flat = {
        "access_token": token,
        "user_id": int(data.APP_SCOPED_ID),
        "permissions": scopes,
    }
    return json_response(flat)


# CDN ----------------------------------------------------------------------------


@bp.get("/cdn/<media_id>.jpg")
def cdn_image(media_id: str) -> Response:
    """Serve a generated JPEG for a post, an album child or the profile picture."""
    expires_at = _check_cdn_request(media_id, "jpg")
    if expires_at is None:
        return Response("URL signature expired", 403, content_type="text/plain")
    if media_id == data.PROFILE_PICTURE_ID:
        record = None
    else:
        record = data.find_media(state.post_count(), media_id)
        if record is None:
            logger.info("Sandbox CDN has no image for media %s", media_id)
            return Response("Not found", 404, content_type="text/plain")

    label, note = data.image_text(record)
    body = data.draw_jpeg(media_id, label, note, data.image_size(record))
    response = Response(body, content_type="image/jpeg")
    max_age = int((expires_at - state.now()).total_seconds())
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


@bp.get("/cdn/<media_id>.mp4")
def cdn_video(media_id: str) -> Response:
    """Explain that there are no video files, after checking the signature."""
    expires_at = _check_cdn_request(media_id, "mp4")
    if expires_at is None:
        return Response("URL signature expired", 403, content_type="text/plain")
    return Response(
        "The sandbox has no video files; use the cover image (thumbnail_url).",
        404,
        content_type="text/plain",
    )


def _check_cdn_request(media_id: str, extension: str) -> datetime | None:
    oh = request.args.get("oh", "")
    oe = request.args.get("oe", "")
    expires_at = state.check_cdn_signature(media_id, extension, oh, oe, state.now())
    if expires_at is None:
        logger.info(
            "Sandbox CDN URL for %s.%s is expired or forged", media_id, extension
        )
    return expires_at
