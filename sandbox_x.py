"""The embedded stand-in for X, served under /sandbox/x/ when no real X app is set.

It speaks X's wire format so the real client runs against it unchanged: the
app-only bearer endpoint (`/oauth2/token`), the OAuth 2.0 authorize page and
token endpoint with PKCE and refresh-token rotation, and the API v2 reads (users,
timelines, recent search, liked posts) for all three kinds of credentials: the
app-only bearer, OAuth 2.0 user tokens and OAuth 1.0a signed requests. Every API
response carries x-rate-limit-* headers, and the control panel switches on 429s.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

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

import sandbox_x_api
import sandbox_x_auth as auth
import sandbox_x_data as data
from access import admin_only
from extensions import csrf
from sandbox_data import draw_jpeg
from sandbox_x_api import Reject, json_response, now, old_error
from x import XEndpoints

logger = logging.getLogger(__name__)

bp = Blueprint("sandbox_x", __name__, url_prefix="/sandbox/x")
bp.register_blueprint(sandbox_x_api.bp)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def credentials(secret_key: str | bytes) -> dict[str, str]:
    """Derive the sandbox's keys, secrets and access token from the Flask secret key.

    The keys are api_key, api_secret, access_token, access_token_secret,
    client_id and client_secret.
    """
    return auth.credentials(secret_key)


def endpoints(base_url: str) -> XEndpoints:
    """Return the client endpoints that point at the sandbox served from `base_url`."""
    base = f"{base_url.rstrip('/')}/sandbox/x"
    return XEndpoints(
        api_url=base,
        authorize_url=f"{base}/i/oauth2/authorize",
        token_url=f"{base}/2/oauth2/token",
    )


@bp.errorhandler(Reject)
def _reject(error: Reject) -> Response:
    logger.info(
        "Sandbox X rejected %s %s with HTTP %s",
        request.method,
        request.path,
        error.response.status_code,
    )
    return error.response


@bp.errorhandler(auth.TokenRequestError)
def _token_error(error: auth.TokenRequestError) -> Response:
    logger.info("Sandbox X token request rejected: %s", error.error)
    body = {"error": error.error, "error_description": error.description}
    return json_response(body, error.status)


# Pages ------------------------------------------------------------------------


@bp.get("/")
@admin_only
def index() -> str:
    """Show that the X sandbox is active, its switches and the control panel."""
    creds = auth.accepted()
    return render_template(
        "sandbox_x/index.html",
        switches=auth.read()["switches"],
        actions=auth.ACTIONS,
        owner=data.OWNER,
        post_count=len(data.owner_posts()),
        liked_count=len(data.liked_posts()),
        api_key=creds["api_key"],
        client_id=creds["client_id"],
        api_url=url_for("sandbox_x.index", _external=True).rstrip("/"),
    )


@bp.post("/control")
@admin_only
def control() -> Response:
    """Apply one control panel action, then go back to the panel."""
    action = request.form.get("action", "")
    if action not in auth.ACTIONS:
        abort(
            400, description=f"Invalid sandbox action {action!r}: use a panel button."
        )
    auth.apply_action(action)
    logger.info("Sandbox X control action %s applied", action)
    return redirect(url_for("sandbox_x.index"), 303)


@bp.get("/pbs/<name>.jpg")
def image(name: str) -> Response:
    """Serve a generated JPEG for a media key or a "profile_<username>" picture."""
    if name.startswith("profile_"):
        user = data.find_user(username=name.removeprefix("profile_"))
        if user is None:
            return Response("Not found", 404, content_type="text/plain")
        body = draw_jpeg(name, "@", user["username"], (400, 400))
    else:
        media = data.find_media(name)
        if media is None:
            return Response("Not found", 404, content_type="text/plain")
        size = (media["width"], media["height"])
        body = draw_jpeg(name, media["type"].replace("_", " "), "X sandbox", size)
    response = Response(body, content_type="image/jpeg")
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


# App-only bearer token ------------------------------------------------------------


@bp.post("/oauth2/token")
@csrf.exempt
def app_token() -> Response:
    """Return the app-only bearer token for HTTP Basic api_key:api_secret."""
    creds = auth.accepted()
    key, secret = _basic_credentials()
    if not (
        auth.same(key, creds["api_key"]) and auth.same(secret, creds["api_secret"])
    ):
        raise Reject(
            old_error(
                403,
                99,
                "Unable to verify your credentials",
                label="authenticity_token_error",
            )
        )
    if request.form.get("grant_type") != "client_credentials":
        raise Reject(
            old_error(
                403,
                170,
                "Missing required parameter: grant_type",
                label="forbidden_missing_parameter",
            )
        )
    logger.info("Sandbox X issued the app-only bearer token")
    return json_response({"token_type": "bearer", "access_token": auth.app_bearer()})


def _basic_credentials() -> tuple[str, str]:
    """Return the URL-decoded user and password of HTTP Basic, or two empties."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return unquote(user), unquote(password)


# OAuth 2.0 authorization code with PKCE ------------------------------------------


@bp.route("/i/oauth2/authorize", methods=["GET", "POST"])
def authorize() -> Any:
    """Show the consent page, or send the browser back with a code or an error."""
    source = request.form if request.method == "POST" else request.args
    problem_text = _authorize_problem(source)
    if problem_text:
        logger.info("Sandbox X authorize request rejected: %s", problem_text)
        return render_template("sandbox_x/error.html", message=problem_text), 400
    scopes = source["scope"].split()
    redirect_uri = source["redirect_uri"]

    if request.method == "GET":
        return render_template(
            "sandbox_x/authorize.html", params=source, scopes=scopes, owner=data.OWNER
        )
    if request.form.get("decision") != "allow":
        logger.info("Sandbox X authorization denied by the user")
        params = {"error": "access_denied", "state": source["state"]}
        return redirect(_with_query(redirect_uri, params), 303)

    code = auth.issue_code(
        source["client_id"], redirect_uri, source["code_challenge"], scopes, now()
    )
    logger.info("Sandbox X authorization allowed, so a code was issued")
    return redirect(
        _with_query(redirect_uri, {"state": source["state"], "code": code}), 303
    )


def _authorize_problem(source: Any) -> str | None:
    """Return the error page's message for a bad authorize request, or None."""
    if source.get("client_id") != auth.accepted()["client_id"]:
        return "Invalid client_id: this app is not known to the sandbox."
    if source.get("response_type") != "code":
        return 'Invalid response_type: only "code" is supported.'
    redirect_uri = source.get("redirect_uri", "")
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        return "Invalid redirect_uri: send an absolute http or https URL."
    # The sandbox has no registered URIs. It accepts X_REDIRECT_URI, its own host
    # and loopback hosts, so it cannot send a browser and a code elsewhere.
    own_host = parts.netloc == request.host or parts.hostname in LOOPBACK_HOSTS
    if redirect_uri != current_app.config.get("X_REDIRECT_URI") and not own_host:
        return (
            f"Invalid redirect_uri: the sandbox only redirects to {request.host}, "
            "a loopback host or X_REDIRECT_URI."
        )
    scopes = source.get("scope", "").split()
    unknown = [name for name in scopes if name not in auth.KNOWN_SCOPES]
    if not scopes or unknown:
        return f"Invalid scope: {' '.join(unknown) or '(none)'}."
    if not source.get("state"):
        return "Missing state: X requires a state value."
    if source.get("code_challenge_method") != "S256":
        return "Invalid code_challenge_method: the sandbox accepts only S256."
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", source.get("code_challenge", "")):
        return "Invalid code_challenge: send the base64url SHA-256 of the verifier."
    return None


def _with_query(uri: str, params: dict[str, str]) -> str:
    separator = "&" if urlsplit(uri).query else "?"
    if uri.endswith(("?", "&")):
        separator = ""
    return f"{uri}{separator}{urlencode(params)}"


@bp.post("/2/oauth2/token")
@csrf.exempt
def user_token() -> Response:
    """Exchange a code (with its PKCE verifier) or a refresh token for tokens."""
    form = request.form
    client_id = _check_client(form)
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        for name in ("code", "redirect_uri", "code_verifier"):
            _require(form, name)
        scopes = auth.redeem_code(
            form["code"], client_id, form["redirect_uri"], form["code_verifier"], now()
        )
        logger.info("Sandbox X code exchanged for user tokens")
    elif grant_type == "refresh_token":
        _require(form, "refresh_token")
        scopes = auth.redeem_refresh_token(form["refresh_token"], client_id, now())
        logger.info("Sandbox X refresh token rotated")
    else:
        _require(form, "grant_type")
        raise auth.TokenRequestError(
            "invalid_request", "Value passed for the grant_type was invalid."
        )
    return json_response(auth.issue_tokens(client_id, scopes, now()))


def _check_client(form: Any) -> str:
    """Check HTTP Basic for a confidential client, or client_id for a public one."""
    creds = auth.accepted()
    user, password = _basic_credentials()
    if creds["client_secret"]:
        valid = auth.same(user, creds["client_id"]) and auth.same(
            password, creds["client_secret"]
        )
        if not valid or form.get("client_id", user) != user:
            raise auth.TokenRequestError(
                "unauthorized_client", "Missing valid authorization header", 401
            )
        return user
    _require(form, "client_id")
    if form["client_id"] != creds["client_id"]:
        raise auth.TokenRequestError("invalid_request", auth.INVALID_TOKEN)
    return form["client_id"]


def _require(form: Any, name: str) -> None:
    if not form.get(name):
        raise auth.TokenRequestError(
            "invalid_request", f"Missing required parameter [{name}]."
        )
