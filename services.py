"""The per-app services every blueprint reaches through `current_app`.

The factory puts one `Services` object in `app.extensions["ownfeed"]`; the
helpers below look it up, so tests can build several apps side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from flask import current_app, has_request_context, request

import sandbox
import sandbox_x
from instagram import Endpoints, InstagramClient
from token_store import TokenStore
from x import XClient, XEndpoints

logger = logging.getLogger(__name__)

# Where `flask run` listens by default; used in sandbox mode when no
# request says where the server is (the `flask token` and `flask feed` commands).
DEFAULT_LOCAL_URL = "http://127.0.0.1:5000"
# The server writes its own loopback URL here on its first request, for those commands.
SANDBOX_URL_FILE = "sandbox-url"


@dataclass
class Services:
    """The token store, the API clients and the clock of one app."""

    token_store: TokenStore
    clock: Callable[[], datetime]
    clients: dict[Endpoints, InstagramClient] = field(default_factory=dict)
    x_clients: dict[str, XClient] = field(default_factory=dict)
    feeds: dict[str, Any] = field(default_factory=dict)
    # The loopback URL of this server's sandbox, learnt from the last request,
    # for background threads that have no request of their own.
    sandbox_url: str | None = None
    # When public requests last looked for due tokens, by the app's clock.
    token_checked_at: datetime | None = None
    # Refreshed records that could not be written, by provider, with the
    # refresh token that each replaces (see tokens.refresh_token).
    unsaved_refreshes: dict[str, tuple[str, dict[str, Any]]] = field(
        default_factory=dict
    )
    clients_lock: threading.Lock = field(default_factory=threading.Lock)


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["ownfeed"]


def token_store() -> TokenStore:
    """Return the current app's token store."""
    return services().token_store


def now() -> datetime:
    """Return the current time from the app's clock (injectable in tests)."""
    return services().clock()


def instance_file(name: str) -> Path:
    """Return the path of `name` in the instance folder."""
    return Path(current_app.instance_path) / name


def instagram_endpoints() -> Endpoints:
    """Return the endpoint URLs the Instagram client calls.

    In sandbox mode the authorize page is on the host the browser used, and the
    server-side calls go to this same server over loopback.
    """
    config = current_app.config
    if not config["OWNFEED_SANDBOX"]:
        return Endpoints(
            authorize_url=config["INSTAGRAM_AUTHORIZE_URL"],
            token_url=config["INSTAGRAM_TOKEN_URL"],
            graph_url=config["INSTAGRAM_GRAPH_URL"],
            api_version=config["INSTAGRAM_API_VERSION"],
        )
    endpoints = sandbox.endpoints(
        _sandbox_server_url(), config["INSTAGRAM_API_VERSION"]
    )
    if has_request_context():
        browser_url = request.host_url.rstrip("/")
        endpoints = replace(
            endpoints, authorize_url=f"{browser_url}/sandbox/oauth/authorize"
        )
    return endpoints


def instagram_client() -> InstagramClient:
    """Return the app's Instagram client for the current endpoints, made once."""
    endpoints = instagram_endpoints()
    app_services = services()
    with app_services.clients_lock:
        client = app_services.clients.get(endpoints)
        if client is None:
            config = current_app.config
            client = InstagramClient(
                endpoints,
                config["INSTAGRAM_CLIENT_ID"],
                config["INSTAGRAM_CLIENT_SECRET"],
            )
            app_services.clients[endpoints] = client
    return client


def x_endpoints() -> XEndpoints:
    """Return the X endpoint URLs, on this server's X sandbox in sandbox mode."""
    config = current_app.config
    if not config["OWNFEED_SANDBOX"]:
        return XEndpoints(
            api_url=config["X_API_URL"],
            authorize_url=config["X_AUTHORIZE_URL"],
            token_url=config["X_TOKEN_URL"],
        )
    endpoints = sandbox_x.endpoints(_sandbox_server_url())
    if has_request_context():
        browser_url = request.host_url.rstrip("/")
        endpoints = replace(
            endpoints, authorize_url=f"{browser_url}/sandbox/x/i/oauth2/authorize"
        )
    return endpoints


def x_client() -> XClient:
    """Return the app's X client for the current endpoints, made once.

    One client per app matters: it remembers each endpoint's rate limit.
    """
    endpoints = x_endpoints()
    app_services = services()
    with app_services.clients_lock:
        client = app_services.x_clients.get(endpoints.api_url)
        if client is None:
            client = XClient(endpoints, clock=lambda: app_services.clock().timestamp())
            app_services.x_clients[endpoints.api_url] = client
        elif client.endpoints != endpoints:
            client.endpoints = endpoints
    return client


def note_sandbox_address() -> None:
    """Record the port this request came in on, when the sandbox is in use.

    Run before every request in sandbox mode, so that feeds saved while the
    server ran on another port are dropped before a page shows their images.
    """
    if not current_app.config.get("OWNFEED_SANDBOX_URL"):
        _sandbox_server_url()


def _sandbox_server_url() -> str:
    configured = current_app.config.get("OWNFEED_SANDBOX_URL")
    if configured:
        return configured.rstrip("/")
    app_services = services()
    if not has_request_context():
        return app_services.sandbox_url or _recorded_sandbox_url() or DEFAULT_LOCAL_URL
    # The port the server accepted this request on, never the Host header, which
    # the client chooses.
    port = request.environ.get("SERVER_PORT", "5000")
    url = f"http://127.0.0.1:{port}"
    if app_services.sandbox_url != url:
        previous = _recorded_sandbox_url()
        app_services.sandbox_url = url
        _record_sandbox_url(url)
        if previous is not None and previous != url:
            _forget_sandbox_x_feeds(app_services, previous, url)
    return url


def _forget_sandbox_x_feeds(app_services: Services, previous: str, url: str) -> None:
    """Drop the saved sandbox X feeds, whose image URLs name the old port.

    X sends absolute image URLs, and the sandbox's name the server it ran on,
    so feeds fetched before the server moved would show broken images. The
    next request fetches them again from the sandbox at the new address.
    """
    folder = Path(current_app.instance_path)
    removed = 0
    for path in folder.glob("feed-x-*.json"):
        path.unlink(missing_ok=True)
        removed += 1
    with app_services.clients_lock:
        for name in [name for name in app_services.feeds if name.startswith("x-")]:
            del app_services.feeds[name]
    if removed:
        logger.info(
            "The sandbox moved from %s to %s; removed %d saved X feed(s) so that "
            "their images are fetched from the new address.",
            previous,
            url,
            removed,
        )


def _record_sandbox_url(url: str) -> None:
    """Note where the server runs, so `flask token` and `flask feed` reach it."""
    try:
        instance_file(SANDBOX_URL_FILE).write_text(url + "\n", encoding="utf-8")
    except OSError:
        pass  # The commands then fall back to DEFAULT_LOCAL_URL.


def _recorded_sandbox_url() -> str | None:
    try:
        url = instance_file(SANDBOX_URL_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return url if url.startswith("http://127.0.0.1:") else None
