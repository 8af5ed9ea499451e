"""The feed cache: a provider's posts in memory and on disk, refreshed once.

Each provider's feed lives in `instance/feed-<name>.json`, written like the token
file (atomic replace, 0600). Every worker process keeps the parsed file in memory
and re-reads it when it changes on disk.

A stale feed is served at once while one background thread, in one process,
fetches the new one: the fetch holds a non-blocking `flock` on
`feed-<name>.json.refresh`, so other workers skip it. A cold start, with nothing
to serve, waits for the same lock, so many concurrent first requests make one
fetch. A failed fetch keeps the last good posts, records the error, and backs
off before the next attempt (the provider's own wait after a rate limit).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from search import SearchIndex, search_key
from timeutil import parse_iso, to_iso
from token_store import TokenStoreError, file_lock, write_json_atomic

logger = logging.getLogger(__name__)

# Waiting after consecutive failures: 1, 2, 4, ... minutes, at most the cache time.
FIRST_BACKOFF_SECONDS = 60
# With MEDIA_PROXY=0, the feed is refetched this long before a served link expires.
LINK_EXPIRY_MARGIN = timedelta(hours=1)
MIN_LINK_REFETCH_INTERVAL = timedelta(minutes=5)
# How long public requests reuse the feed in memory before looking at the file
# for a newer one. In a profile of a gunicorn worker, the two stat calls of each
# cached response took about a tenth of its time.
PUBLIC_RECHECK_SECONDS = 1.0
# How many derived values, such as the posts serialised for one host name, one
# feed version keeps. Past that, more host names are served without keeping.
MAX_MEMO_KEYS = 8
# How long a cold request waits for another worker's first fetch before giving up.
COLD_WAIT_SECONDS = 60.0


class FeedError(Exception):
    """No feed can be served; `code` is the public error code.

    `reported` is true when the cause was already logged as an error (a
    rejected token), so a failed fetch logs it again only at INFO.
    """

    def __init__(
        self,
        code: str,
        message: str,
        retry_after: int | None = None,
        reported: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.reported = reported


@dataclass(frozen=True)
class Fetched:
    """The result of one successful fetch: posts and account."""

    posts: list[dict[str, Any]]
    account: dict[str, Any]


# A fetch callable returns Fetched or raises FeedError; it is prepared in the
# request (which has the server's address) and may run in a background thread.
Fetch = Callable[[], Fetched]


@dataclass
class Snapshot:
    """One version of the feed file, with what is derived from it once."""

    posts: list[dict[str, Any]] | None
    account: dict[str, Any]
    fetched_at: datetime | None
    last_error: dict[str, Any] | None
    failed_at: datetime | None
    retry_at: datetime | None
    failures: int
    version: str
    links_expire_at: datetime | None = None
    _search_index: SearchIndex | None = field(default=None, repr=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def has_posts(self) -> bool:
        return self.posts is not None

    def search_index(self) -> SearchIndex:
        """Return the index that search and type filters use, built once per version."""
        with self._index_lock:
            if self._search_index is None:
                posts = self.posts or []
                self._search_index = SearchIndex(
                    [
                        search_key(post.get("caption", post.get("text")))
                        for post in posts
                    ],
                    [post.get("media_type") for post in posts],
                )
            return self._search_index

    def memo(self, key: Any, build: Callable[[], Any]) -> Any:
        """Return what `build` made for `key` for this version, building it once.

        At most MAX_MEMO_KEYS keys are kept; past that `build` runs every time,
        so request data in a key (a Host header) cannot fill the memory.
        """
        with self._index_lock:
            value = self._memo.get(key)
            if value is None:
                value = build()
                if len(self._memo) < MAX_MEMO_KEYS:
                    self._memo[key] = value
            return value

    def is_stale(self, now: datetime, ttl: timedelta, fetchable: bool = True) -> bool:
        """Tell whether the posts are past their time because they cannot be fetched.

        That is when the last fetch failed, or when no fetch can run (the token
        needs a new login).
        """
        if self.fetched_at is None or now - self.fetched_at <= ttl:
            return False
        if not fetchable:
            return True
        return self.failed_at is not None and self.failed_at >= self.fetched_at

    def needs_fetch(self, now: datetime, ttl: timedelta) -> bool:
        """Tell whether a fetch is due: never done or too old, and not backing off."""
        if self.retry_at is not None and now < self.retry_at:
            return False
        return self.fetched_at is None or now - self.fetched_at > ttl


class FeedCache:
    """The cached feed of one provider."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], datetime],
        ttl_seconds: int,
        track_link_expiry: bool = False,
    ) -> None:
        self.path = Path(path)
        # With Instagram's own (expiring) media URLs served, the feed is also
        # refetched before the first of them expires.
        self.track_link_expiry = track_link_expiry
        self.refresh_lock_path = Path(f"{path}.refresh")
        self.clock = clock
        self.ttl = timedelta(seconds=ttl_seconds)
        self._snapshot: Snapshot | None = None
        self._signature: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._memory_lock = threading.Lock()
        self._background: threading.Thread | None = None

    # --- reading ----------------------------------------------------------

    def snapshot(self, recheck_after: float = 0.0) -> Snapshot:
        """Return the current version of the feed file (an empty one when none).

        With `recheck_after`, the file is looked at only when it was not in the
        last `recheck_after` seconds; this process's own saves show at once.
        """
        checked_at = time.monotonic()
        if recheck_after:
            with self._memory_lock:
                if (
                    self._snapshot is not None
                    and checked_at - self._checked_at < recheck_after
                ):
                    return self._snapshot
        signature = self._file_signature()
        with self._memory_lock:
            if self._snapshot is not None and signature == self._signature:
                self._checked_at = checked_at
                return self._snapshot
        snapshot = self._read_file()
        with self._memory_lock:
            self._snapshot, self._signature = snapshot, signature
            self._checked_at = checked_at
        return snapshot

    def get(self, fetch: Fetch) -> Snapshot:
        """Return a feed to serve now, fetching first only when none was ever saved.

        Raises FeedError when there are no posts to serve and the fetch failed.
        """
        return self.get_lazily(lambda: fetch)

    def get_lazily(self, make_fetch: Callable[[], Fetch]) -> Snapshot:
        """Do what `get` does, preparing the fetch only when one is due.

        Preparing a fetch looks up the API client, which a cached request
        need not pay for. A feed that another process saved is served within
        PUBLIC_RECHECK_SECONDS; the file is always looked at before a fetch.
        """
        snapshot = self.snapshot(PUBLIC_RECHECK_SECONDS)
        now = self.clock()
        if not snapshot.has_posts or self._due(snapshot, now):
            snapshot = self.snapshot()
        if snapshot.has_posts:
            if self._due(snapshot, now):
                self.refresh_in_background(make_fetch())
            return snapshot
        if self._due(snapshot, now):
            snapshot = self._refresh_cold(make_fetch())
        if not snapshot.has_posts:
            raise _error_of(snapshot, now)
        return snapshot

    def _due(self, snapshot: Snapshot, now: datetime) -> bool:
        """Tell whether a fetch is due, counting served links about to expire."""
        if snapshot.needs_fetch(now, self.ttl):
            return True
        expiry = snapshot.links_expire_at if self.track_link_expiry else None
        if expiry is None or now < expiry - LINK_EXPIRY_MARGIN:
            return False
        # Links that came back already expired must not cause a fetch per request.
        fetched_at = snapshot.fetched_at
        if fetched_at is not None and now - fetched_at < MIN_LINK_REFETCH_INTERVAL:
            return False
        return snapshot.retry_at is None or now >= snapshot.retry_at

    # --- editing ----------------------------------------------------------

    def replace_post(self, post: dict[str, Any]) -> None:
        """Replace the kept post with the same id (after renewing its links)."""

        def change(posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [post if known["id"] == post["id"] else known for known in posts]

        self._edit_posts(change)

    def remove_post(self, post_id: str) -> None:
        """Remove a post that no longer exists from the kept feed."""
        self._edit_posts(
            lambda posts: [known for known in posts if known["id"] != post_id]
        )

    def _edit_posts(
        self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> None:
        with file_lock(self.path):
            try:
                document = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return
            if not isinstance(document.get("posts"), list):
                return
            document["posts"] = change(document["posts"])
            self._write(document)

    # --- refreshing -------------------------------------------------------

    def refresh_in_background(self, fetch: Fetch) -> None:
        """Start one background fetch in this process unless one is running."""
        with self._memory_lock:
            if self._background is not None and self._background.is_alive():
                return
            self._background = threading.Thread(
                target=self._refresh_if_free,
                args=(fetch,),
                name="feed-refresh",
                daemon=True,
            )
            self._background.start()

    def refresh_in_background_if_due(self, fetch: Fetch) -> None:
        """Start a background fetch when one is due, without waiting for it."""
        if self._due(self.snapshot(), self.clock()):
            self.refresh_in_background(fetch)

    def wait_for_background(self, timeout: float = 30.0) -> None:
        """Wait for this process's background fetch, if any (tests and commands)."""
        thread = self._background
        if thread is not None:
            thread.join(timeout)

    def refresh_now(self, fetch: Fetch) -> Snapshot:
        """Fetch now, whatever the cache time, waiting for any fetch under way."""
        with self._refresh_lock(blocking=True):
            return self._fetch_and_save(fetch)

    def _refresh_if_free(self, fetch: Fetch) -> None:
        try:
            with self._refresh_lock(blocking=False) as acquired:
                if not acquired:
                    return
                # Another worker may have fetched while this one was deciding.
                if self._due(self.snapshot(), self.clock()):
                    self._fetch_and_save(fetch)
        except Exception:
            # A background thread has no caller to raise to: log and go on
            # serving the saved feed.
            logger.exception("Background feed refresh of %s failed", self.path.name)

    def _refresh_cold(self, fetch: Fetch) -> Snapshot:
        with self._refresh_lock(blocking=True):
            snapshot = self.snapshot()
            if self._due(snapshot, self.clock()):
                snapshot = self._fetch_and_save(fetch)
            return snapshot

    def _fetch_and_save(self, fetch: Fetch) -> Snapshot:
        """Run one fetch and save its outcome: new posts, or the error and backoff."""
        previous = self.snapshot()
        started = self.clock()
        try:
            fetched = fetch()
        except FeedError as err:
            return self._save_failure(previous, err, started)
        document = {
            "posts": fetched.posts,
            "account": fetched.account,
            "fetched_at": to_iso(started),
            "last_error": None,
            "failed_at": None,
            "retry_at": None,
            "failures": 0,
        }
        self._write(document)
        logger.info("Saved %d posts to %s", len(fetched.posts), self.path.name)
        return self.snapshot()

    def _save_failure(
        self, previous: Snapshot, err: FeedError, at: datetime
    ) -> Snapshot:
        failures = previous.failures + 1
        wait = err.retry_after
        if wait is None:
            wait = min(
                FIRST_BACKOFF_SECONDS * 2 ** (failures - 1), self.ttl.total_seconds()
            )
        document = {
            "posts": previous.posts,
            "account": previous.account,
            "fetched_at": to_iso(previous.fetched_at),
            "last_error": {"at": to_iso(at), "code": err.code, "message": err.message},
            "failed_at": to_iso(at),
            "retry_at": to_iso(at + timedelta(seconds=wait)),
            "failures": failures,
        }
        logger.log(
            logging.INFO if err.reported else logging.WARNING,
            "Feed fetch for %s failed (%s), next try in %d s: %s",
            self.path.name,
            err.code,
            wait,
            err.message,
        )
        self._write(document)
        return self.snapshot()

    def _write(self, document: dict[str, Any]) -> None:
        try:
            with file_lock(self.path):
                write_json_atomic(self.path, document, compact=True)
        except TokenStoreError as err:
            # The posts and the backoff stay in memory, tied to the file now on
            # disk, so they are served until another process replaces that file.
            logger.error("Cannot save the feed: %s", err)
            signature = self._file_signature()
            with self._memory_lock:
                self._snapshot = _snapshot_of(document)
                self._signature = signature

    # --- files ------------------------------------------------------------

    def _file_signature(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (status.st_ino, status.st_size, status.st_mtime_ns)

    def _read_file(self) -> Snapshot:
        try:
            raw = self.path.read_bytes()
            document = json.loads(raw)
        except FileNotFoundError:
            return _snapshot_of({})
        except (OSError, ValueError) as err:
            logger.error("Ignoring unreadable feed file %s: %s", self.path, err)
            return _snapshot_of({})
        if not isinstance(document, dict):
            return _snapshot_of({})
        # The file's own bytes name the version, with no second serialisation.
        return _snapshot_of(document, hashlib.sha256(raw).hexdigest()[:16])

    def _refresh_lock(self, blocking: bool) -> _RefreshLock:
        return _RefreshLock(self.refresh_lock_path, blocking)


class _RefreshLock:
    """An flock on the refresh lock file; `as` gives whether it was acquired.

    Blocking acquisition polls, so a worker stuck in a fetch cannot hold a cold
    request for longer than COLD_WAIT_SECONDS.
    """

    def __init__(self, path: Path, blocking: bool) -> None:
        self.path = path
        self.blocking = blocking
        self.fd: int | None = None

    def __enter__(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + COLD_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except BlockingIOError:
                if not self.blocking:
                    os.close(fd)
                    return False
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise FeedError(
                        "upstream_unavailable",
                        "Another worker's feed fetch has not finished. Try again soon.",
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _snapshot_of(document: dict[str, Any], version: str | None = None) -> Snapshot:
    posts = document.get("posts")
    if version is None:
        body = json.dumps(
            [posts, document.get("fetched_at"), document.get("failed_at")],
            sort_keys=True,
        )
        version = hashlib.sha256(body.encode()).hexdigest()[:16]
    return Snapshot(
        posts=posts if isinstance(posts, list) else None,
        account=document.get("account") or {},
        fetched_at=parse_iso(document.get("fetched_at")),
        last_error=document.get("last_error"),
        failed_at=parse_iso(document.get("failed_at")),
        retry_at=parse_iso(document.get("retry_at")),
        failures=int(document.get("failures") or 0),
        version=version,
        links_expire_at=_links_expire_at(posts if isinstance(posts, list) else []),
    )


_SIGNED_EXPIRY = re.compile(r"[?&]oe=([0-9A-Fa-f]{1,12})(?:&|$)")


def _links_expire_at(posts: list[dict[str, Any]]) -> datetime | None:
    """Return the earliest expiry of the posts' signed CDN URLs (their `oe` value).

    Instagram's CDN URLs carry `oe`, the expiry as hexadecimal Unix seconds.
    """
    earliest = None
    for post in posts:
        urls = [post.get("media_url"), post.get("thumbnail_url")]
        for child in post.get("children") or []:
            urls += [child.get("media_url"), child.get("thumbnail_url")]
        for url in urls:
            match = _SIGNED_EXPIRY.search(url or "")
            if match:
                moment = int(match.group(1), 16)
                earliest = moment if earliest is None else min(earliest, moment)
    return datetime.fromtimestamp(earliest, UTC) if earliest is not None else None


def _error_of(snapshot: Snapshot, now: datetime) -> FeedError:
    """Describe why there are no posts, from the last recorded failure."""
    error = snapshot.last_error or {}
    code = error.get("code") or "upstream_unavailable"
    message = error.get("message") or "The feed has not been fetched yet."
    retry_after = None
    if snapshot.retry_at is not None:
        retry_after = max(1, int((snapshot.retry_at - now).total_seconds()))
    return FeedError(code, message, retry_after)
