"""Shared fixtures: apps on temporary instance folders, and live servers on loopback."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Keys a developer's shell might set; tests start from none of them. Importing
# `app` builds the module-level app, so it must not see them either, nor write
# into the repository's instance folder.
OWNFEED_KEYS = (
    "SECRET_KEY",
    "ADMIN_PASSWORD",
    "ADMIN_PASSWORD_HASH",
    "INSTAGRAM_CLIENT_ID",
    "INSTAGRAM_CLIENT_SECRET",
    "INSTAGRAM_REDIRECT_URI",
    "INSTAGRAM_AUTHORIZE_URL",
    "INSTAGRAM_TOKEN_URL",
    "INSTAGRAM_GRAPH_URL",
    "INSTAGRAM_API_VERSION",
    "OWNFEED_SANDBOX",
    "OWNFEED_SANDBOX_URL",
    "OWNFEED_INSTANCE_PATH",
    "FEED_CACHE_SECONDS",
    "FEED_MAX_POSTS",
    "IMAGES_ALLOWED_ORIGINS",
    "NOTIFY_WEBHOOK_URL",
    "NOTIFY_WEBHOOK_SECRET",
    "REFRESH_BEFORE_DAYS",
    "SANDBOX_TOKEN_RESPONSE",
    "SANDBOX_POST_COUNT",
    "MEDIA_PROXY",
    "MEDIA_WIDTHS",
    "MEDIA_CACHE_MAX_MB",
    "X_API_KEY",
    "X_API_SECRET",
    "X_BEARER_TOKEN",
    "X_ACCESS_TOKEN",
    "X_ACCESS_TOKEN_SECRET",
    "X_CLIENT_ID",
    "X_CLIENT_SECRET",
    "X_REDIRECT_URI",
    "X_USERNAME",
    "X_API_URL",
    "X_AUTHORIZE_URL",
    "X_TOKEN_URL",
    "X_CACHE_SECONDS",
    "X_FEED_MAX_POSTS",
    "SANDBOX_X_RATE_LIMIT",
    "SANDBOX_X_PUBLIC_CLIENT",
)
for _key in OWNFEED_KEYS:
    os.environ.pop(_key, None)
os.environ["OWNFEED_SANDBOX"] = "1"
os.environ["OWNFEED_INSTANCE_PATH"] = tempfile.mkdtemp(prefix="ownfeed-import-")

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TEST_PASSWORD = "correct horse battery staple"


class MonotonicClock:
    """Stands in for time.monotonic, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_app(tmp_path: Path):
    """Return a factory of apps on `tmp_path`, with settings overridden by keywords."""
    from app import create_app

    def factory(**overrides: Any):
        config = {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "SECRET_KEY": "test-session-key",
            "OWNFEED_SANDBOX": True,
        }
        config.update(overrides)
        return create_app(config)

    return factory


@pytest.fixture
def app(make_app):
    """An app in sandbox mode with an admin password."""
    return make_app(ADMIN_PASSWORD=TEST_PASSWORD)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    """A server process on loopback, with its combined output in `log_path`."""

    url: str
    process: subprocess.Popen
    log_path: Path
    instance_path: Path
    log_file: Any = None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
            SERVER_LOGS.append(self.log_text())
            self._remember_secrets()

    def _remember_secrets(self) -> None:
        """Learn the server's own secrets: its session key and stored tokens."""
        key_file = self.instance_path / "secret_key"
        if key_file.exists():
            remember_secret(key_file.read_text().strip())
        tokens_file = self.instance_path / "tokens.json"
        try:
            document = json.loads(tokens_file.read_text())
        except (OSError, ValueError):
            return
        for record in (document.get("providers") or {}).values():
            for field in SECRET_RECORD_FIELDS:
                remember_secret(record.get(field))


def start_server(
    tmp_path: Path,
    env: dict[str, str],
    command: str = "flask",
    name: str = "server",
    workers: int = 2,
    threads: int = 4,
) -> LiveServer:
    """Start ownfeed with `flask run` (or gunicorn) on a free loopback port.

    `workers` and `threads` apply to gunicorn only.
    """
    port = free_port()
    instance_path = tmp_path / f"{name}-instance"
    log_path = tmp_path / f"{name}.log"
    server_env = {
        key: value
        for key, value in os.environ.items()
        if key not in OWNFEED_KEYS and not key.startswith("FLASK_")
    }
    server_env.update(
        {"OWNFEED_INSTANCE_PATH": str(instance_path), "PYTHONUNBUFFERED": "1"}
    )
    server_env.update(env)
    if command == "flask":
        argv = [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "app",
            "run",
            "--port",
            str(port),
        ]
        argv += ["--host", "127.0.0.1"]
    else:
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
        argv += ["--workers", str(workers), "--threads", str(threads), "app:app"]
    log_file = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(
        argv, cwd=ROOT, env=server_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    server = LiveServer(
        f"http://127.0.0.1:{port}", process, log_path, instance_path, log_file
    )
    _wait_until_up(server)
    return server


def _wait_until_up(server: LiveServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"The server exited early:\n{server.log_text()}")
        try:
            requests.get(server.url + "/admin/login", timeout=1)
            return
        # A gunicorn worker that is still booting accepts but responds late.
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"The server did not start in {timeout} s:\n{server.log_text()}")


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator:
    """Start servers for a test and stop them all at its end."""
    servers: list[LiveServer] = []

    def factory(env: dict[str, str], **options: Any) -> LiveServer:
        server = start_server(tmp_path, env, **options)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing. Run `make test`, which installs chromium.")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


# --- no secret in any log line of the whole run ---------------------------

# Configuration keys whose values are secrets.
SECRET_CONFIG_KEYS = (
    "SECRET_KEY",
    "ADMIN_PASSWORD",
    "INSTAGRAM_CLIENT_SECRET",
    "NOTIFY_WEBHOOK_SECRET",
    "TOKEN_ENCRYPTION_KEY",
    "X_API_SECRET",
    "X_BEARER_TOKEN",
    "X_ACCESS_TOKEN",
    "X_ACCESS_TOKEN_SECRET",
    "X_CLIENT_SECRET",
)
# Record fields whose values are secrets.
SECRET_RECORD_FIELDS = ("access_token", "refresh_token")
# Shorter values (such as a code "C" in a unit test) would match ordinary text.
MIN_SECRET_LENGTH = 8

SECRETS: set[str] = set()
SERVER_LOGS: list[str] = []


class _Collector(logging.Handler):
    """Keeps every formatted log line, after the product's own redaction."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # A broken record must not fail the test that logged it.
            self.lines.append(str(record.msg))


def remember_secret(value: object) -> None:
    """Add a value that must never appear in any log line of the run."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        SECRETS.add(value)


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs():
    """Fail the run when any secret it used appears in a log line or server log.

    Secrets are learnt from every app's configuration and from every token
    record the token store writes.
    """
    import app as app_module
    import token_store
    from logs import RedactingFilter

    collector = _Collector()
    collector.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(collector)

    original_create_app = app_module.create_app
    original_stored_form = token_store.TokenStore._stored_form

    def recording_create_app(test_config=None):
        created = original_create_app(test_config)
        for key in SECRET_CONFIG_KEYS:
            remember_secret(created.config.get(key))
        return created

    def recording_stored_form(self, document):
        for record in document.get("providers", {}).values():
            for field in SECRET_RECORD_FIELDS:
                remember_secret(record.get(field))
        return original_stored_form(self, document)

    app_module.create_app = recording_create_app
    token_store.TokenStore._stored_form = recording_stored_form
    remember_secret(TEST_PASSWORD)
    yield
    app_module.create_app = original_create_app
    token_store.TokenStore._stored_form = original_stored_form
    root.removeHandler(collector)

    texts = collector.lines + SERVER_LOGS
    leaks = sorted(
        {secret[:4] + "…" for secret in SECRETS for text in texts if secret in text}
    )
    assert not leaks, f"secrets starting with {leaks} appear in the logs of this run"
