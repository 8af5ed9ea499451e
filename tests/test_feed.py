"""Tests for feed.py: the feed cache on disk and in memory, single flight, backoff."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MonotonicClock

import feed
from feed import FeedCache, FeedError, Fetched
from timeutil import utc_now
from token_store import TokenStoreWriteError

TTL = 1800
THREADS = 20
# Upper bound, in seconds, for a step that should finish at once. It is generous
# because a loaded machine can pause a thread for a second or more.
PROMPT_SECONDS = 5.0


class Clock:
    """A settable clock, starting at a fixed moment."""

    def __init__(self) -> None:
        self.moment = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def make_posts(prefix: str, count: int = 3) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}{i}",
            "media_type": "IMAGE",
            "caption": f"post {prefix}{i}",
            "timestamp": f"2026-01-{count - i:02d}T00:00:00+00:00",
        }
        for i in range(count)
    ]


class FakeFetch:
    """A fetch callable that counts its calls and can wait or fail.

    With `hold` set, each call sets `started` and then blocks until `release` is
    set. With `error` set, each call raises it.
    """

    def __init__(
        self, posts: list[dict[str, Any]], hold: bool = False, error: Any = None
    ) -> None:
        self.posts = posts
        self.hold = hold
        self.error = error
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> Fetched:
        with self._lock:
            self.calls += 1
        self.started.set()
        if self.hold:
            assert self.release.wait(PROMPT_SECONDS * 2), "the test never released"
        if self.error is not None:
            raise self.error
        return Fetched(list(self.posts), {"username": "owner.handle"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def feed_path(tmp_path: Path) -> Path:
    return tmp_path / "feed-instagram.json"


@pytest.fixture
def cache(feed_path: Path, clock: Clock) -> FeedCache:
    return FeedCache(feed_path, clock, TTL)


def seed(cache: FeedCache, posts: list[dict[str, Any]]) -> None:
    """Save `posts` as fetched at the cache clock's current time."""
    cache.refresh_now(FakeFetch(posts))


def unavailable(message: str = "Instagram responded with HTTP 500.") -> FeedError:
    return FeedError("upstream_unavailable", message)


def run_threads(target: Any, count: int = THREADS) -> list[Any]:
    """Run `target` in `count` threads started together and return their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = target()
        except Exception as err:  # Reported to the test as the thread's result.
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PROMPT_SECONDS * 3)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    return results


# --- fetching when needed -------------------------------------------------


def test_get_cold_start_fetches_once(cache, clock):
    fetch = FakeFetch(make_posts("a"))

    snapshot = cache.get(fetch)

    assert fetch.calls == 1
    assert snapshot.posts == make_posts("a")
    assert snapshot.account == {"username": "owner.handle"}
    assert snapshot.fetched_at == clock.moment
    assert snapshot.last_error is None


def test_get_cold_start_saves_file(cache, feed_path):
    cache.get(FakeFetch(make_posts("a")))

    document = json.loads(feed_path.read_text(encoding="utf-8"))

    assert document["posts"] == make_posts("a")
    assert document["fetched_at"] == "2026-12-01T12:00:00+00:00"
    assert feed_path.stat().st_mode & 0o777 == 0o600


def test_get_fresh_cache_does_not_fetch(cache, clock):
    seed(cache, make_posts("a"))
    fetch = FakeFetch(make_posts("b"))

    clock.advance(TTL - 1)
    snapshot = cache.get(fetch)

    assert fetch.calls == 0
    assert snapshot.posts == make_posts("a")


def test_get_stale_starts_one_background_fetch(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    fetch = FakeFetch(make_posts("b"), hold=True)

    snapshot = cache.get(fetch)
    assert fetch.started.wait(PROMPT_SECONDS)
    fetch.release.set()
    cache.wait_for_background()

    assert snapshot.posts == make_posts("a")
    assert fetch.calls == 1
    assert cache.get(fetch).posts == make_posts("b")
    assert cache.snapshot().fetched_at == clock.moment


def test_get_stale_concurrent_served_at_once(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    fetch = FakeFetch(make_posts("b"), hold=True)

    # The fetch is held until every thread has returned, so none of them waited.
    results = run_threads(lambda: cache.get(fetch).posts)
    fetch_started = fetch.started.wait(PROMPT_SECONDS)
    calls_while_held = fetch.calls
    fetch.release.set()
    cache.wait_for_background()

    assert all(posts == make_posts("a") for posts in results)
    assert fetch_started
    assert calls_while_held == 1
    assert fetch.calls == 1
    assert cache.snapshot().posts == make_posts("b")


def test_get_cold_start_concurrent_fetches_once(cache):
    fetch = FakeFetch(make_posts("a"), hold=True)

    def release_when_started() -> None:
        fetch.started.wait(PROMPT_SECONDS)
        time.sleep(0.2)  # The pause lets the other threads block on the refresh lock.
        fetch.release.set()

    releaser = threading.Thread(target=release_when_started)
    releaser.start()
    results = run_threads(lambda: cache.get(fetch).posts)
    releaser.join()

    assert fetch.calls == 1
    assert all(posts == make_posts("a") for posts in results)


def test_refresh_now_fetches_when_fresh(cache):
    seed(cache, make_posts("a"))
    fetch = FakeFetch(make_posts("b"))

    snapshot = cache.refresh_now(fetch)

    assert fetch.calls == 1
    assert snapshot.posts == make_posts("b")


def test_snapshot_version_changes_with_posts(cache, clock):
    seed(cache, make_posts("a"))
    first = cache.snapshot().version

    clock.advance(10)
    seed(cache, make_posts("b"))

    assert cache.snapshot().version != first


def test_snapshot_unreadable_file_ignored(cache, feed_path):
    feed_path.write_text("{not json", encoding="utf-8")
    fetch = FakeFetch(make_posts("a"))

    snapshot = cache.get(fetch)

    assert fetch.calls == 1
    assert snapshot.posts == make_posts("a")


def test_get_serves_memory_until_recheck_time(cache, clock, feed_path, monkeypatch):
    monotonic = MonotonicClock()
    monkeypatch.setattr(feed.time, "monotonic", monotonic)
    seed(cache, make_posts("a"))
    fetch = FakeFetch(make_posts("c"))
    assert cache.get(fetch).posts == make_posts("a")

    other = FeedCache(feed_path, clock, TTL)
    seed(other, make_posts("b"))
    monotonic.now += feed.PUBLIC_RECHECK_SECONDS / 2
    kept = cache.get(fetch).posts
    monotonic.now += feed.PUBLIC_RECHECK_SECONDS

    assert kept == make_posts("a")
    assert cache.get(fetch).posts == make_posts("b")
    assert fetch.calls == 0


def test_get_looks_at_file_before_fetching(cache, clock, feed_path, monkeypatch):
    monkeypatch.setattr(feed.time, "monotonic", MonotonicClock())
    seed(cache, make_posts("a"))
    fetch = FakeFetch(make_posts("c"))
    assert cache.get(fetch).posts == make_posts("a")

    clock.advance(TTL + 1)
    other = FeedCache(feed_path, clock, TTL)
    seed(other, make_posts("b"))

    assert cache.get(fetch).posts == make_posts("b")
    assert fetch.calls == 0


# --- across processes -----------------------------------------------------


def process_worker(
    path: str, counter: str, ready: Any, results: Any, name: str
) -> None:
    """Run in a spawned process: get the feed through a slow fetch that counts."""

    def slow_fetch() -> Fetched:
        with open(counter, "a", encoding="utf-8") as counter_file:
            counter_file.write(f"{name}\n")
        time.sleep(0.3)
        return Fetched(make_posts("new"), {"username": "owner.handle"})

    cache = FeedCache(Path(path), utc_now, TTL)
    # Both processes call get() within milliseconds, so their fetches would overlap.
    ready.wait(PROMPT_SECONDS * 4)
    served = cache.get(slow_fetch).posts
    cache.wait_for_background()
    results.put((name, [post["id"] for post in served or []]))


def run_two_processes(path: Path, counter: Path) -> dict[str, list[str]]:
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(
            target=process_worker,
            args=(str(path), str(counter), ready, results, name),
        )
        for name in ("first", "second")
    ]
    for process in processes:
        process.start()
    served = dict(results.get(timeout=PROMPT_SECONDS * 4) for _ in processes)
    for process in processes:
        process.join(PROMPT_SECONDS * 2)
    assert all(process.exitcode == 0 for process in processes)
    return served


def test_get_two_processes_cold_one_fetch(feed_path, tmp_path):
    counter = tmp_path / "fetches.txt"
    counter.touch()

    served = run_two_processes(feed_path, counter)

    fetchers = counter.read_text(encoding="utf-8").split()
    assert len(fetchers) == 1
    assert served["first"] == [post["id"] for post in make_posts("new")]
    assert served["second"] == [post["id"] for post in make_posts("new")]


def test_get_two_processes_stale_one_fetch(feed_path, tmp_path):
    counter = tmp_path / "fetches.txt"
    counter.touch()
    old_clock = Clock()
    old_clock.moment = utc_now() - timedelta(seconds=TTL + 60)
    seed(FeedCache(feed_path, old_clock, TTL), make_posts("old"))

    served = run_two_processes(feed_path, counter)

    fetchers = counter.read_text(encoding="utf-8").split()
    assert len(fetchers) == 1
    assert served["first"] == [post["id"] for post in make_posts("old")]
    assert served["second"] == [post["id"] for post in make_posts("old")]
    saved = json.loads(feed_path.read_text(encoding="utf-8"))
    assert [post["id"] for post in saved["posts"]] == [
        post["id"] for post in make_posts("new")
    ]


# --- failures -------------------------------------------------------------


def test_get_failure_keeps_old_posts(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    failed_at = clock.moment

    cache.get(FakeFetch([], error=unavailable("Instagram responded with HTTP 500.")))
    cache.wait_for_background()
    snapshot = cache.get(FakeFetch(make_posts("b")))

    assert snapshot.posts == make_posts("a")
    assert snapshot.fetched_at == failed_at - timedelta(seconds=TTL + 1)
    assert snapshot.last_error == {
        "at": "2026-12-01T12:30:01+00:00",
        "code": "upstream_unavailable",
        "message": "Instagram responded with HTTP 500.",
    }
    assert snapshot.failed_at == failed_at
    assert snapshot.retry_at == failed_at + timedelta(seconds=60)
    assert snapshot.failures == 1


def test_get_failure_saved_to_file(cache, clock, feed_path):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)

    cache.get(FakeFetch([], error=unavailable()))
    cache.wait_for_background()
    document = json.loads(feed_path.read_text(encoding="utf-8"))

    assert document["posts"] == make_posts("a")
    assert document["last_error"]["code"] == "upstream_unavailable"
    assert document["failed_at"] == "2026-12-01T12:30:01+00:00"
    assert document["retry_at"] == "2026-12-01T12:31:01+00:00"


def test_get_success_clears_error(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    cache.get(FakeFetch([], error=unavailable()))
    cache.wait_for_background()

    clock.advance(61)
    cache.get(FakeFetch(make_posts("b")))
    cache.wait_for_background()
    snapshot = cache.snapshot()

    assert snapshot.posts == make_posts("b")
    assert snapshot.last_error is None
    assert snapshot.failed_at is None
    assert snapshot.retry_at is None
    assert snapshot.failures == 0


def test_get_cold_start_failure_raises(cache, clock):
    fetch = FakeFetch([], error=FeedError("reauthorization_required", "Log in again."))

    with pytest.raises(FeedError) as raised:
        cache.get(fetch)

    assert raised.value.code == "reauthorization_required"
    assert raised.value.message == "Log in again."
    assert raised.value.retry_after == 60


def test_get_cold_start_failure_backs_off(cache, clock):
    fetch = FakeFetch([], error=unavailable())
    with pytest.raises(FeedError):
        cache.get(fetch)

    clock.advance(59)
    with pytest.raises(FeedError) as raised:
        cache.get(fetch)

    assert fetch.calls == 1
    assert raised.value.code == "upstream_unavailable"
    assert raised.value.retry_after == 1


def test_get_cold_start_retries_after_backoff(cache, clock):
    with pytest.raises(FeedError):
        cache.get(FakeFetch([], error=unavailable()))
    fetch = FakeFetch(make_posts("a"))

    clock.advance(61)
    snapshot = cache.get(fetch)

    assert fetch.calls == 1
    assert snapshot.posts == make_posts("a")


# --- the stale flag -------------------------------------------------------


def stale(cache: FeedCache, clock: Clock, fetchable: bool = True) -> bool:
    return cache.snapshot().is_stale(clock(), cache.ttl, fetchable)


def test_stale_false_when_fresh(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL)

    assert stale(cache, clock) is False


def test_stale_false_past_ttl_before_failure(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)

    assert stale(cache, clock) is False


def test_stale_true_after_failure_past_ttl(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    cache.get(FakeFetch([], error=unavailable()))
    cache.wait_for_background()

    assert stale(cache, clock) is True


def test_stale_false_after_failure_within_ttl(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(10)
    cache.refresh_now(FakeFetch([], error=unavailable()))

    assert cache.snapshot().last_error is not None
    assert stale(cache, clock) is False


def test_stale_false_after_recovery(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    cache.refresh_now(FakeFetch([], error=unavailable()))
    clock.advance(61)
    cache.refresh_now(FakeFetch(make_posts("b")))

    assert stale(cache, clock) is False


def test_stale_true_past_ttl_when_not_fetchable(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)

    assert stale(cache, clock, fetchable=False) is True


# --- backoff --------------------------------------------------------------


def fail_when_due(cache: FeedCache, error: FeedError) -> int:
    """Call get with a failing fetch and return how many fetches ran."""
    fetch = FakeFetch([], error=error)
    cache.get(fetch)
    cache.wait_for_background()
    return fetch.calls


def test_backoff_no_fetch_before_retry_at(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    assert fail_when_due(cache, unavailable()) == 1

    clock.advance(59)

    assert fail_when_due(cache, unavailable()) == 0


def test_backoff_doubles_up_to_ttl(feed_path, clock):
    ttl = 300
    cache = FeedCache(feed_path, clock, ttl)
    seed(cache, make_posts("a"))
    clock.advance(ttl + 1)
    waits = []

    for _ in range(5):
        assert fail_when_due(cache, unavailable()) == 1
        snapshot = cache.snapshot()
        wait = snapshot.retry_at - snapshot.failed_at
        waits.append(int(wait.total_seconds()))
        clock.advance(wait.total_seconds() - 1)
        assert fail_when_due(cache, unavailable()) == 0
        clock.advance(2)

    assert waits == [60, 120, 240, 300, 300]


def test_backoff_rate_limit_retry_after(cache, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    limited = FeedError("rate_limited", "Rate limit reached.", retry_after=3600)
    failed_at = clock.moment

    assert fail_when_due(cache, limited) == 1
    retry_at = cache.snapshot().retry_at
    clock.advance(3599)
    calls_before = fail_when_due(cache, unavailable())
    clock.advance(2)
    calls_after = fail_when_due(cache, unavailable())

    assert retry_at == failed_at + timedelta(seconds=3600)
    assert calls_before == 0
    assert calls_after == 1


# --- restarts and an unwritable folder ------------------------------------


def test_restart_serves_disk_copy_without_fetch(cache, feed_path, clock):
    seed(cache, make_posts("a"))
    restarted = FeedCache(feed_path, clock, TTL)
    fetch = FakeFetch(make_posts("b"))

    clock.advance(60)
    snapshot = restarted.get(fetch)

    assert fetch.calls == 0
    assert snapshot.posts == make_posts("a")
    assert snapshot.fetched_at == clock.moment - timedelta(seconds=60)


def test_restart_stale_copy_refreshed(cache, feed_path, clock):
    seed(cache, make_posts("a"))
    restarted = FeedCache(feed_path, clock, TTL)
    fetch = FakeFetch(make_posts("b"))

    clock.advance(TTL + 1)
    snapshot = restarted.get(fetch)
    restarted.wait_for_background()

    assert snapshot.posts == make_posts("a")
    assert fetch.calls == 1
    assert restarted.snapshot().posts == make_posts("b")


def test_restart_keeps_backoff(cache, feed_path, clock):
    seed(cache, make_posts("a"))
    clock.advance(TTL + 1)
    assert fail_when_due(cache, unavailable()) == 1
    restarted = FeedCache(feed_path, clock, TTL)
    fetch = FakeFetch(make_posts("b"))

    clock.advance(30)
    restarted.get(fetch)
    restarted.wait_for_background()

    assert fetch.calls == 0


def test_other_instance_write_seen(cache, feed_path, clock):
    seed(cache, make_posts("a"))
    other = FeedCache(feed_path, clock, TTL)

    clock.advance(5)
    seed(other, make_posts("b"))

    assert cache.snapshot().posts == make_posts("b")


def make_writes_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def write_json_atomic(
        path: Path, data: Any, mode: int = 0o600, **options: Any
    ) -> None:
        raise TokenStoreWriteError(f"Cannot write {path}: Read-only file system.")

    monkeypatch.setattr(feed, "write_json_atomic", write_json_atomic)


def test_unwritable_cold_start_from_memory(cache, clock, feed_path, monkeypatch):
    make_writes_fail(monkeypatch)
    fetch = FakeFetch(make_posts("a"))

    first = cache.get(fetch)
    clock.advance(60)
    second = cache.get(fetch)

    assert first.posts == make_posts("a")
    assert second.posts == make_posts("a")
    assert fetch.calls == 1
    assert not feed_path.exists()


def test_unwritable_refresh_kept_in_memory(cache, clock, monkeypatch):
    seed(cache, make_posts("a"))
    make_writes_fail(monkeypatch)
    clock.advance(TTL + 1)
    fetch = FakeFetch(make_posts("b"))

    cache.get(fetch)
    cache.wait_for_background()
    clock.advance(60)
    snapshot = cache.get(fetch)
    cache.wait_for_background()

    assert snapshot.posts == make_posts("b")
    assert fetch.calls == 1


def test_unwritable_failure_keeps_backoff(cache, clock, monkeypatch):
    seed(cache, make_posts("a"))
    make_writes_fail(monkeypatch)
    clock.advance(TTL + 1)

    first_calls = fail_when_due(cache, unavailable())
    clock.advance(30)
    second_calls = fail_when_due(cache, unavailable())

    assert first_calls == 1
    assert second_calls == 0
    assert cache.snapshot().posts == make_posts("a")
    assert stale(cache, clock) is True


def test_unwritable_logs_error(cache, monkeypatch, caplog):
    make_writes_fail(monkeypatch)

    cache.get(FakeFetch(make_posts("a")))

    assert "Read-only file system" in caplog.text


def test_snapshot_memo_bounded(cache):
    seed(cache, make_posts("a"))
    snapshot = cache.snapshot()
    builds: list[int] = []

    def build(key: int) -> dict:
        builds.append(key)
        return {"key": key}

    for key in range(feed.MAX_MEMO_KEYS + 2):
        snapshot.memo(key, lambda key=key: build(key))
    kept = snapshot.memo(0, lambda: build(0))
    past_limit = feed.MAX_MEMO_KEYS + 1
    snapshot.memo(past_limit, lambda: build(past_limit))

    assert kept == {"key": 0}
    assert builds == [*range(feed.MAX_MEMO_KEYS + 2), past_limit]
