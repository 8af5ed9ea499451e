"""Soak ownfeed under gunicorn while a stand-in for Instagram fails at random.

`make soak` runs it for SOAK_SECONDS (600 by default). The stand-in from
tests/standin.py serves Instagram's Graph API on 127.0.0.1. It fails a share
of the calls (SOAK_FAULT_RATE, 0.3) with a random fault: HTTP 500, 502 or 503,
429 or Graph code 4 with a short Retry-After, an HTML page, truncated JSON, a
closed connection, silence past ownfeed's read timeout, or a body trickled
past its response deadline. ownfeed's feed cache lasts 2 seconds, so fetches
keep happening, and its token is due for refresh at the start.

Client threads meanwhile request `/images` with varied parameters (some
invalid), `/images/embed`, `/healthz`, `/embed.js` and `/media/...` images.

Checks, each printed with its figures:
- no 5xx from ownfeed, except `/healthz` 503 with `"status": "degraded"`,
  which documents a failed refresh;
- every worker's resident memory grew by less than SOAK_MAX_RSS_GROWTH_MB (5)
  between the end of the warm-up and the end, and no worker was replaced;
- tokens.json parses and contains a token the stand-in issued;
- no traceback in the server's log.

It prints a JSON summary and exits 1 when a check fails. Every process it
starts listens on 127.0.0.1 and is stopped at the end; the working folder is
removed unless SOAK_KEEP_FOLDER=1 (then its path is printed).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from standin import (  # noqa: E402  (needs the tests folder on sys.path)
    FakeInstagram,
    Reply,
    Request,
    StandIn,
    graph_error,
    html_reply,
    token_record,
)

from token_store import TokenStore  # noqa: E402

# The soak's own settings: they configure this script, never ownfeed.
SOAK_KEYS = {
    "SOAK_SECONDS": 600.0,
    "SOAK_WARMUP_SECONDS": 60.0,
    "SOAK_FAULT_RATE": 0.3,
    "SOAK_WORKERS": 4.0,
    "SOAK_THREADS": 2.0,
    "SOAK_CLIENTS": 8.0,
    "SOAK_MAX_RSS_GROWTH_MB": 5.0,
}
FEED_CACHE_SECONDS = 2
POST_COUNT = 150
WIDTHS = (150, 320, 640, 1080)
QUERIES = ["", "standin", "#standin", "-standin", "post 1", "café", "#nothing"]
TYPES = ["", "image", "video", "image,carousel_album"]
INVALID = [
    "limit=0",
    "limit=abc",
    "format=xml",
    "type=reel",
    "after=%%%",
    "q=" + "a" * 201,
]
# How often the memory of the workers is sampled, in seconds.
SAMPLE_SECONDS = 10.0
# Requests a client sends on one connection before opening another.
CONNECTION_REQUESTS = 20


@dataclass
class Settings:
    """The soak's numbers, from the SOAK_* environment variables."""

    seconds: float
    warmup: float
    fault_rate: float
    workers: int
    threads: int
    clients: int
    max_growth_mb: float

    @classmethod
    def from_environment(cls) -> Settings:
        values = {}
        for key, default in SOAK_KEYS.items():
            text = os.environ.get(key, "").strip()
            try:
                values[key] = float(text) if text else default
            except ValueError:
                sys.exit(f"{key} is {text!r}, not a number; unset it for {default}.")
        seconds = values["SOAK_SECONDS"]
        return cls(
            seconds=seconds,
            warmup=min(values["SOAK_WARMUP_SECONDS"], seconds / 5),
            fault_rate=values["SOAK_FAULT_RATE"],
            workers=int(values["SOAK_WORKERS"]),
            threads=int(values["SOAK_THREADS"]),
            clients=int(values["SOAK_CLIENTS"]),
            max_growth_mb=values["SOAK_MAX_RSS_GROWTH_MB"],
        )


# --- the faulty stand-in ------------------------------------------------------


class FaultyInstagram(FakeInstagram):
    """Working Instagram endpoints that fail a share of the Graph API calls."""

    def __init__(self, standin: StandIn, fault_rate: float, seed: int) -> None:
        super().__init__(standin, post_count=POST_COUNT)
        self.fault_rate = fault_rate
        self.random = random.Random(seed)
        self.faults: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def install(self) -> FaultyInstagram:
        super().install()
        for step in ("refresh", "profile", "media"):
            responder = self.standin.responder_for("GET", self.path(step))
            self.standin.route("GET", self.path(step), self._faulty(step, responder))
        return self

    def _faulty(self, step: str, responder: Any) -> Any:
        def respond(request: Request) -> Reply:
            with self._lock:
                self.calls[step] += 1
                if self.random.random() >= self.fault_rate:
                    kind = None
                else:
                    kind = self.random.choices(FAULT_KINDS, FAULT_WEIGHTS)[0]
                    self.faults[kind] += 1
                retry_after = self.random.randint(1, 3)
            if kind is None:
                return responder(request)
            return make_fault(kind, lambda: responder(request), retry_after)

        return respond


FAULT_KINDS = (
    "http_500",
    "http_502_html",
    "http_503",
    "http_429",
    "graph_code_4",
    "html_200",
    "truncated_json",
    "closed",
    "read_timeout",
    "trickle",
)
# The slow faults hold the single feed fetch for 10 to 30 seconds, so they are
# drawn less often, leaving time for the others.
FAULT_WEIGHTS = (3, 3, 3, 3, 3, 3, 3, 3, 1, 1)


def make_fault(kind: str, healthy: Callable[[], Reply], wait: int) -> Reply:
    """Return the Reply of one fault kind.

    `healthy` makes the working reply (only the faults that cut it call it,
    so a failed refresh issues no token), and `wait` is the Retry-After.
    """
    retry_after = {"Retry-After": str(wait)}
    if kind == "http_500":
        return graph_error(1, "An unknown error occurred", 500)
    if kind == "http_502_html":
        return html_reply("<html><body>Bad gateway</body></html>", 502)
    if kind == "http_503":
        return Reply(status=503)
    if kind == "http_429":
        return Reply(status=429, body=b"Too Many Requests", headers=retry_after)
    if kind == "graph_code_4":
        reply = graph_error(4, "Application request limit reached")
        reply.headers.update(retry_after)
        return reply
    if kind == "html_200":
        return html_reply("<html><body>Sorry, something went wrong.</body></html>")
    if kind == "truncated_json":
        body = healthy().body
        return Reply(body=body[: len(body) // 2])
    if kind == "closed":
        return Reply(close=True)
    if kind == "read_timeout":
        return Reply(delay=11.0)  # ownfeed's read timeout is 10 s
    # ownfeed's response deadline is 30 s; this body takes about 40 s.
    return Reply(body=healthy().body[:80], trickle=0.5, chunk_size=1)


# --- ownfeed under gunicorn ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(
    folder: Path, fake: FakeInstagram, settings: Settings
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ownfeed in real mode on a free port; return it, its URL and its log."""
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("INSTAGRAM_", "OWNFEED_", "X_", "FLASK_", "SOAK_"))
    }
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "OWNFEED_SANDBOX": "0",
            "OWNFEED_INSTANCE_PATH": str(folder / "instance"),
            "INSTAGRAM_CLIENT_ID": "1234567890",
            "INSTAGRAM_CLIENT_SECRET": "soak-app-secret",
            "INSTAGRAM_REDIRECT_URI": "http://127.0.0.1/admin/callback/instagram",
            "SECRET_KEY": "soak-session-key",
            "ADMIN_PASSWORD": "soak password",
            "FEED_CACHE_SECONDS": str(FEED_CACHE_SECONDS),
            **fake.config(),
        }
    )
    log_path = folder / "gunicorn.log"
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
    argv += ["--workers", str(settings.workers), "--threads", str(settings.threads)]
    argv += ["app:app"]
    with log_path.open("wb") as log_file:
        # The working folder is the soak's own, so no .env is read.
        process = subprocess.Popen(
            argv, cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    return process, f"http://127.0.0.1:{port}", log_path


def wait_for_feed(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    """Wait until `/images` serves posts; the stand-in's faults may delay it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("gunicorn exited during start-up; see its log.")
        try:
            response = requests.get(f"{url}/images", timeout=5)
            if response.status_code == 200 and response.json()["data"]:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"/images served no posts within {seconds:.0f} s.")


def worker_pids(master: int) -> list[int]:
    """Return the PIDs of the gunicorn master's child processes."""
    children = Path(f"/proc/{master}/task/{master}/children")
    return sorted(int(pid) for pid in children.read_text().split())


def rss_kb(pid: int) -> int:
    """Return a process's resident set size in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no VmRSS line")


# --- load ---------------------------------------------------------------------


class Client(threading.Thread):
    """Requests a random mix of public routes until `deadline`."""

    def __init__(self, url: str, deadline: float, seed: int) -> None:
        super().__init__(daemon=True, name=f"soak-client-{seed}")
        self.url = url
        self.deadline = deadline
        self.random = random.Random(seed)
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.unexpected: list[str] = []
        self.errors: Counter[str] = Counter()
        self.images: list[str] = []
        self.next_url: str | None = None

    def run(self) -> None:
        session = requests.Session()
        sent = 0
        while time.monotonic() < self.deadline:
            # A new connection now and then, as new visitors make, so the
            # kernel spreads them over every worker.
            sent += 1
            if sent % CONNECTION_REQUESTS == 0:
                session.close()
                session = requests.Session()
            route, path = self.pick()
            try:
                response = session.get(f"{self.url}{path}", timeout=40)
            except requests.RequestException as err:
                self.errors[type(err).__name__] += 1
                continue
            self.statuses[(route, response.status_code)] += 1
            self.check(route, path, response)

    def pick(self) -> tuple[str, str]:
        roll = self.random.random()
        if roll < 0.45:
            return "/images", self.feed_path()
        if roll < 0.55 and self.next_url:
            path = self.next_url.split("://", 1)[1].split("/", 1)[1]
            return "/images", f"/{path}"
        if roll < 0.62:
            return "/images/embed", f"/images/embed?limit={self.random.randint(1, 30)}"
        if roll < 0.70:
            return "/healthz", "/healthz"
        if roll < 0.74:
            return "/embed.js", "/embed.js"
        if roll < 0.92 and self.images:
            return "/media", self.random.choice(self.images)
        return "/images (invalid)", f"/images?{self.random.choice(INVALID)}"

    def feed_path(self) -> str:
        query = {
            "limit": str(self.random.randint(1, 100)),
            "q": self.random.choice(QUERIES),
            "type": self.random.choice(TYPES),
            "format": self.random.choice(["json", "json", "html"]),
        }
        return "/images?" + urlencode({k: v for k, v in query.items() if v})

    def check(self, route: str, path: str, response: requests.Response) -> None:
        status = response.status_code
        if route == "/images (invalid)":
            if status != 400:
                self.unexpected.append(f"{status} for {path}")
            return
        if status < 500:
            if (
                route == "/images"
                and status == 200
                and "json" in response.headers.get("Content-Type", "")
            ):
                self.learn(response.json())
            return
        if route == "/healthz" and status == 503:
            if response.json().get("status") == "degraded":
                return
        self.unexpected.append(f"{status} for {path}")

    def learn(self, body: dict[str, Any]) -> None:
        """Remember image URLs and a next page from a feed response."""
        self.next_url = body["paging"]["next"]
        for item in body["data"][:5]:
            for url in (item.get("sizes") or {}).values():
                path = "/" + url.split("://", 1)[1].split("/", 1)[1]
                if len(self.images) < 200:
                    self.images.append(path)


# --- the run ------------------------------------------------------------------


def write_due_token(instance: Path) -> str:
    """Store a token issued 40 days ago that expires in 20: due for refresh."""
    instance.mkdir(mode=0o700, parents=True)
    now = datetime.now(UTC)
    token = "IGAA-soak-initial"
    record = token_record(token, now - timedelta(days=40), now + timedelta(days=20))
    TokenStore(instance / "tokens.json").set("instagram", record)
    return token


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run(settings: Settings, folder: Path) -> dict[str, Any]:
    """Run the soak in `folder` and return its figures and checks."""
    write_due_token(folder / "instance")
    with StandIn() as standin:
        fake = FaultyInstagram(standin, settings.fault_rate, seed=20261204).install()
        process, url, log_path = start_gunicorn(folder, fake, settings)
        try:
            return measure(settings, folder, fake, process, url, log_path)
        finally:
            stop(process)


def measure(
    settings: Settings,
    folder: Path,
    fake: FaultyInstagram,
    process: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
) -> dict[str, Any]:
    wait_for_feed(url, process, 120)
    started = time.monotonic()
    deadline = started + settings.seconds
    clients = [Client(url, deadline, seed) for seed in range(settings.clients)]
    for client in clients:
        client.start()

    # Memory: after the warm-up has filled the caches, then until the end.
    time.sleep(settings.warmup)
    workers = worker_pids(process.pid)
    first = {pid: rss_kb(pid) for pid in workers}
    peak = dict(first)
    while time.monotonic() < deadline:
        time.sleep(min(SAMPLE_SECONDS, max(0.0, deadline - time.monotonic())))
        for pid in workers:
            try:
                peak[pid] = max(peak[pid], rss_kb(pid))
            except (FileNotFoundError, ProcessLookupError):
                pass
    for client in clients:
        client.join(60)
    last = {}
    for pid in workers:
        try:
            last[pid] = rss_kb(pid)
        except (FileNotFoundError, ProcessLookupError):
            last[pid] = None
    replaced = sorted(set(worker_pids(process.pid)) ^ set(workers))

    statuses: Counter[tuple[str, int]] = Counter()
    errors: Counter[str] = Counter()
    unexpected: list[str] = []
    for client in clients:
        statuses += client.statuses
        errors += client.errors
        unexpected += client.unexpected
    growth_mb = {
        str(pid): round((last[pid] - first[pid]) / 1024, 2)
        for pid in workers
        if last[pid] is not None
    }
    token_check = check_token_file(folder / "instance" / "tokens.json")
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    checks = {
        "no unexpected 5xx or status": not unexpected,
        "no client errors": not errors,
        "workers kept": not replaced and None not in last.values(),
        "memory flat": all(mb < settings.max_growth_mb for mb in growth_mb.values()),
        "token file whole": token_check == "ok",
        "no traceback in the log": "Traceback" not in log_text,
    }
    return {
        "settings": settings.__dict__,
        "seconds_measured": round(time.monotonic() - started, 1),
        "requests": sum(statuses.values()),
        "statuses": {
            f"{route} {code}": n for (route, code), n in sorted(statuses.items())
        },
        "client_errors": dict(errors),
        "unexpected": unexpected[:20],
        "upstream_calls": dict(fake.calls),
        "faults_injected": dict(fake.faults),
        "rss_kb_after_warmup": {str(pid): kb for pid, kb in first.items()},
        "rss_kb_peak": {str(pid): kb for pid, kb in peak.items()},
        "rss_kb_end": {str(pid): kb for pid, kb in last.items()},
        "rss_growth_mb": growth_mb,
        "workers_replaced": replaced,
        "token_file": token_check,
        "log_warnings": log_text.count(" WARNING "),
        "log_errors": log_text.count(" ERROR "),
        "checks": checks,
        "passed": all(checks.values()),
    }


def check_token_file(path: Path) -> str:
    """Return "ok" when tokens.json parses and contains an issued token, else why."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        token = document["providers"]["instagram"]["access_token"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable: {type(err).__name__}: {err}"
    return (
        "ok" if token.startswith("IGAA-") else "holds a token the stand-in never issued"
    )


def main() -> int:
    settings = Settings.from_environment()
    folder = Path(tempfile.mkdtemp(prefix="ownfeed-soak-"))
    try:
        summary = run(settings, folder)
    finally:
        if os.environ.get("SOAK_KEEP_FOLDER") == "1":
            print(f"Kept the soak's folder {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(summary, indent=2, sort_keys=True))
    for name, passed in summary["checks"].items():
        print(f"{'ok    ' if passed else 'FAILED'} {name}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
