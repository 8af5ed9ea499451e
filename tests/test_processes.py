"""Several processes at once: gunicorn workers, token writers, readers and kills.

- Four gunicorn workers (two threads each) serve `/images` to client threads
  for `OWNFEED_RELIABILITY_SECONDS` (default 20; `make soak` runs a longer
  load), in real mode against a stand-in for Instagram, with a short feed
  cache so fetches keep happening. The stored token is due for refresh, and a
  separate process keeps writing another record of the same token file while
  another keeps reading the file. Instagram must see exactly one refresh, no
  write may be lost, and every read must parse.
- A process killed with SIGKILL while it writes the feed file leaves the old
  file or the new one, never a partial one.
- A refresh that succeeds at Instagram but cannot be saved (read-only instance
  folder, full disk) fails with a message naming the file, and the old token
  file stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ROOT, TEST_PASSWORD
from standin import FakeInstagram, StandIn, token_record

import tokens
from token_store import TokenStore

RELIABILITY_SECONDS = float(os.environ.get("OWNFEED_RELIABILITY_SECONDS", "20"))
CLIENT_THREADS = 8
IS_ROOT = os.geteuid() == 0
WAIT_SECONDS = 10.0
INITIAL_TOKEN = "IGAA-initial-due-token"
CLIENT_SECRET = "processes-app-secret"

# Reads the token file until the time is up; prints the number of reads. Any
# read that does not parse, or lacks the token, ends it with a traceback.
CHILD_READER = """
import json, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
reads = 0
while time.monotonic() < deadline and reads < 5_000_000:
    with open(path, encoding="utf-8") as source:
        document = json.loads(source.read())
    token = document["providers"]["instagram"]["access_token"]
    assert token.startswith("IGAA-"), "the token is not one the stand-in issued"
    reads += 1
print(reads, flush=True)
"""

# Increments the "loadtest" record's counter under the store's lock until the
# time or the count is up; prints the number of increments.
CHILD_WRITER = """
import sys, time
from token_store import TokenStore
store = TokenStore(sys.argv[1])
seconds, limit = float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + seconds
writes = 0
def bump(record):
    record["writes"] += 1
while time.monotonic() < deadline and writes < limit:
    store.update("loadtest", bump)
    writes += 1
    time.sleep(0.005)
print(writes, flush=True)
"""

# Saves generation after generation of a large feed until killed. Every post
# of a generation carries that generation's digest, so a reader can tell a
# whole file from a torn one.
CHILD_FEED_WRITER = """
import hashlib, sys
from datetime import UTC, datetime
from pathlib import Path
from feed import FeedCache, Fetched
cache = FeedCache(Path(sys.argv[1]), lambda: datetime.now(UTC), 60)
generation = int(sys.argv[2])
print("ready", flush=True)
while True:
    digest = hashlib.sha256(str(generation).encode()).hexdigest()
    posts = [
        {"id": str(n), "generation": generation, "caption": digest * 40}
        for n in range(2000)
    ]
    cache.refresh_now(lambda: Fetched(posts, {"username": "owner"}))
    generation += 1
"""


def start_child(code: str, *args: object) -> subprocess.Popen[str]:
    """Start `code` in a new interpreter that imports from the project root."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_child(child: subprocess.Popen[str], timeout: float) -> int:
    """Wait for a counting child and return the count it printed."""
    try:
        output, errors = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate(timeout=WAIT_SECONDS)
        raise AssertionError(f"a child process still ran after {timeout} s") from None
    assert child.returncode == 0, errors
    return int(output.strip())


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def fake(standin: StandIn) -> FakeInstagram:
    return FakeInstagram(standin, post_count=120).install()


def real_mode_env(fake: FakeInstagram, **extra: str) -> dict[str, str]:
    """Return the environment of ownfeed in real mode against the stand-in."""
    env = {
        "OWNFEED_SANDBOX": "0",
        "INSTAGRAM_CLIENT_ID": "1234567890",
        "INSTAGRAM_CLIENT_SECRET": CLIENT_SECRET,
        "INSTAGRAM_REDIRECT_URI": "http://127.0.0.1/admin/callback/instagram",
        "SECRET_KEY": "processes-session-key",
        "ADMIN_PASSWORD": TEST_PASSWORD,
        **fake.config(),
    }
    env.update(extra)
    return env


# --- gunicorn under load ------------------------------------------------------


class LoadClient(threading.Thread):
    """Requests `/images` pages with varied parameters until `deadline`."""

    def __init__(self, url: str, deadline: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.deadline = deadline
        self.random = random.Random(seed)
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        session = requests.Session()
        queries = ["", "?limit=5", "?q=standin", "?type=image", "?format=html"]
        while time.monotonic() < self.deadline:
            query = self.random.choice(queries)
            try:
                response = session.get(f"{self.url}/images{query}", timeout=30)
            except requests.RequestException as err:
                self.errors.append(type(err).__name__)
                continue
            self.statuses[response.status_code] += 1


def test_processes_gunicorn_one_refresh_no_lost_write(
    live_server_factory, tmp_path: Path, fake: FakeInstagram
) -> None:
    # The token was issued 40 days ago and expires in 20: due for refresh.
    now = datetime.now(UTC)
    instance = tmp_path / "load-instance"
    instance.mkdir(mode=0o700)
    tokens_file = instance / "tokens.json"
    store = TokenStore(tokens_file)
    record = token_record(
        INITIAL_TOKEN, now - timedelta(days=40), now + timedelta(days=20)
    )
    store.set("instagram", record)
    store.set("loadtest", {"writes": 0})

    server = live_server_factory(
        real_mode_env(fake, FEED_CACHE_SECONDS="1"),
        command="gunicorn",
        name="load",
        workers=4,
        threads=2,
    )
    seconds = RELIABILITY_SECONDS
    reader = start_child(CHILD_READER, tokens_file, seconds)
    writer = start_child(CHILD_WRITER, tokens_file, seconds, 100_000)
    deadline = time.monotonic() + seconds
    clients = [LoadClient(server.url, deadline, seed) for seed in range(CLIENT_THREADS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(seconds + 60)

    reads = finish_child(reader, seconds + 30)
    writes = finish_child(writer, seconds + 30)
    statuses = sum((client.statuses for client in clients), Counter())
    errors = [error for client in clients for error in client.errors]
    final = json.loads(tokens_file.read_text(encoding="utf-8"))["providers"]
    refreshes = fake.standin.requests(fake.path("refresh"))
    media_calls = fake.standin.requests(fake.path("media"))

    assert not any(client.is_alive() for client in clients)
    assert errors == []
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > CLIENT_THREADS
    assert len(refreshes) == 1
    assert refreshes[0].value("access_token") == INITIAL_TOKEN
    assert final["instagram"]["access_token"] == "IGAA-refreshed-1"
    assert final["instagram"]["refreshed_at"] is not None
    assert final["loadtest"]["writes"] == writes
    assert writes > 0
    assert reads > 0
    # The one-second cache makes fetches keep happening under the load.
    assert len(media_calls) > 2
    assert "Traceback" not in server.log_text()


# --- SIGKILL during a feed write ----------------------------------------------


def feed_temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".feed-instagram.json.*.tmp"))


def test_processes_sigkill_feed_write_keeps_whole_file(tmp_path: Path) -> None:
    feed_file = tmp_path / "feed-instagram.json"
    rng = random.Random(20261204)
    generation = 0
    advanced = 0
    torn_writes = 0

    for attempt in range(10):
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD_FEED_WRITER)]
            + [str(feed_file), str(generation + 1)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            if attempt % 2:
                # Aim inside a write: the temporary file exists until os.replace.
                wait_until(lambda: bool(feed_temp_files(tmp_path)), WAIT_SECONDS)
                time.sleep(rng.uniform(0.0, 0.01))
            else:
                time.sleep(rng.uniform(0.05, 0.5))
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=WAIT_SECONDS)
            child.stdout.close()

        if not feed_file.exists():
            assert generation == 0  # killed before its first write finished
            continue
        document = json.loads(feed_file.read_text(encoding="utf-8"))
        generations = {post["generation"] for post in document["posts"]}
        assert len(generations) == 1
        current = generations.pop()
        digest = hashlib.sha256(str(current).encode()).hexdigest()
        assert all(post["caption"] == digest * 40 for post in document["posts"])
        assert len(document["posts"]) == 2000
        assert current >= generation
        advanced += current > generation
        generation = current
        torn_writes += len(feed_temp_files(tmp_path))
        for leftover in feed_temp_files(tmp_path):
            leftover.unlink()

    # Both counts show that kills landed inside writes and that writes completed.
    assert torn_writes > 0
    assert advanced > 0


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
    raise AssertionError(f"the condition did not hold within {timeout} s")


# --- a refresh that cannot be saved -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def refresh_app(make_app, fake: FakeInstagram):
    """ownfeed in real mode with a token that is old enough to refresh."""
    clock = Clock()
    app = make_app(
        OWNFEED_SANDBOX=False,
        INSTAGRAM_CLIENT_ID="1234567890",
        INSTAGRAM_CLIENT_SECRET=CLIENT_SECRET,
        INSTAGRAM_REDIRECT_URI="http://127.0.0.1/admin/callback/instagram",
        ADMIN_PASSWORD=TEST_PASSWORD,
        CLOCK=clock,
        **fake.config(),
    )
    record = token_record(
        INITIAL_TOKEN, clock() - timedelta(days=40), clock() + timedelta(days=20)
    )
    app.extensions["ownfeed"].token_store.set("instagram", record)
    return app


def make_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `folder` read-only: chmod, or as root (where chmod does not stop
    writes) refuse every new file in it, as the kernel does for other users."""
    if not IS_ROOT:
        folder.chmod(0o500)
        return
    real_open = os.open

    def open_read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        creates = flags & os.O_CREAT and not os.path.exists(path)
        if creates and Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_read_only)


def fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make creating any temporary file fail as on a full disk."""

    def full(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)


def fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make fsync fail as on a full disk (the data does not fit on flush)."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


BREAKERS = {
    "read_only": lambda folder, patch: make_read_only(folder, patch),
    "disk_full": lambda folder, patch: fill_disk(patch),
    "fsync_fails": lambda folder, patch: fail_fsync(patch),
}


@pytest.mark.parametrize("breaker", sorted(BREAKERS))
def test_processes_refresh_unsaved_keeps_token(
    breaker: str,
    refresh_app,
    fake: FakeInstagram,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens_file = Path(refresh_app.instance_path) / "tokens.json"
    before = tokens_file.read_bytes()
    BREAKERS[breaker](tokens_file.parent, monkeypatch)
    caplog.clear()

    with refresh_app.app_context():
        result = tokens.refresh_token("instagram", "command", force=True)
    monkeypatch.undo()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

    assert len(fake.standin.requests(fake.path("refresh"))) == 1
    assert result.failed
    assert str(tokens_file) in result.message
    assert tokens_file.read_bytes() == before
    assert len(errors) == 1
    assert str(tokens_file) in errors[0]


def test_processes_refresh_unsaved_on_summary(
    refresh_app, fake: FakeInstagram, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens_file = Path(refresh_app.instance_path) / "tokens.json"
    before = tokens_file.read_bytes()
    client = refresh_app.test_client()
    login = client.get("/admin/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)
    client.post("/admin/login", data={"password": TEST_PASSWORD, "csrf_token": token})
    summary = client.get("/admin/summary").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', summary).group(1)
    fill_disk(monkeypatch)

    response = client.post("/admin/refresh/instagram", data={"csrf_token": token})
    monkeypatch.undo()
    page = client.get("/admin/summary").get_data(as_text=True)

    assert response.status_code == 303
    assert str(tokens_file) in page
    assert "No space left on device" in page
    assert tokens_file.read_bytes() == before
