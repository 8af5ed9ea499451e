"""Tests for token_store: round trips, file modes, atomic writes, locks, corrupt files.

The crash and concurrency tests run real child processes on files in `tmp_path`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import select
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MonotonicClock

import token_store
from token_store import (
    CorruptTokenFileError,
    TokenStore,
    TokenStoreError,
    TokenStoreWriteError,
    file_lock,
    write_json_atomic,
)

ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 10.0
IS_ROOT = os.geteuid() == 0

RECORD = {
    "access_token": "token-old",
    "token_type": "bearer",
    "permissions": ["instagram_business_basic"],
    "last_error": None,
}

# Writes generation after generation of a multi-megabyte record until killed.
# The payload is the generation's SHA-256 digest repeated, so a reader can tell
# a whole record from a torn one.
CHILD_WRITE_FOREVER = """
import hashlib, sys
from token_store import TokenStore
store = TokenStore(sys.argv[1])
generation = int(sys.argv[2])
repeat = int(sys.argv[3])
print("ready", flush=True)
while True:
    digest = hashlib.sha256(str(generation).encode()).hexdigest()
    store.set("instagram", {"generation": generation, "payload": digest * repeat})
    generation += 1
"""

# Waits for a line on stdin, then increments the counter 50 times and prints
# each counter value that `update` returned.
CHILD_INCREMENT = """
import sys
from token_store import TokenStore
store = TokenStore(sys.argv[1])
def increment(record):
    record["counter"] += 1
print("ready", flush=True)
sys.stdin.readline()
for _ in range(50):
    print(store.update("instagram", increment)["counter"], flush=True)
"""

CHILD_SET = """
import sys
from token_store import TokenStore
TokenStore(sys.argv[1]).set("instagram", {"access_token": sys.argv[2]})
"""

CHILD_LOCK = """
import sys
from pathlib import Path
from token_store import file_lock
print("ready", flush=True)
with file_lock(Path(sys.argv[1])):
    print("acquired", flush=True)
"""


def start_child(code: str, *args: object) -> subprocess.Popen[bytes]:
    """Start `code` in a new interpreter that imports from the project root."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str | None:
    """Return the child's next output line, or None when none arrives in time."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return None
    return process.stdout.readline().decode().strip()


def stop_child(process: subprocess.Popen[bytes]) -> None:
    """Kill the child if it still runs and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=WAIT_SECONDS)
    process.stdin.close()
    process.stdout.close()


def run_bounded(target: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    """Run `target` in a daemon thread and fail, not hang, when it blocks."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = target()
        except BaseException as err:  # handed back to the test thread below
            outcome["error"] = err

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{target} still blocked after {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def file_mode(path: Path) -> int:
    """Return the permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def temp_files(folder: Path) -> list[Path]:
    """Return the temporary files that write_json_atomic left in `folder`."""
    return sorted(folder.glob(".*.tmp"))


def corrupt_copies(folder: Path) -> list[Path]:
    """Return the files that move_aside created for tokens.json in `folder`."""
    return sorted(folder.glob("tokens.json.corrupt-*"))


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    """Return the token file's path in an empty instance folder."""
    return tmp_path / "tokens.json"


@pytest.fixture
def store(tokens_path: Path) -> TokenStore:
    """Return a store on a file that does not exist yet."""
    return TokenStore(tokens_path)


@pytest.fixture
def make_read_only(monkeypatch: pytest.MonkeyPatch):
    """Return a function that makes a folder read-only for the rest of the test.

    As root, chmod does not stop writes, so the folder is simulated: creating a
    new file in it raises PermissionError, as the kernel does for other users.
    """
    changed: list[Path] = []

    def make(folder: Path) -> None:
        if not IS_ROOT:
            folder.chmod(0o500)
            changed.append(folder)
            return
        real_open = os.open

        def open_read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            creates = flags & os.O_CREAT and not os.path.exists(path)
            if creates and Path(path).parent == folder:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", open_read_only)

    yield make
    for folder in changed:
        folder.chmod(0o700)


# Round trips


def test_get_missing_file_returns_none(store: TokenStore) -> None:
    assert store.get("instagram") is None
    assert store.all() == {}


def test_set_get_round_trip(store: TokenStore) -> None:
    store.set("instagram", RECORD)

    assert store.get("instagram") == RECORD
    assert store.get("x") is None


def test_set_replaces_record(store: TokenStore) -> None:
    store.set("instagram", RECORD)
    store.set("instagram", {"access_token": "token-new"})

    assert store.get("instagram") == {"access_token": "token-new"}


def test_all_returns_every_provider(store: TokenStore) -> None:
    store.set("instagram", RECORD)
    store.set("x", {"access_token": "token-x"})

    assert store.all() == {"instagram": RECORD, "x": {"access_token": "token-x"}}


def test_get_returns_copy(store: TokenStore) -> None:
    store.set("instagram", RECORD)

    record = store.get("instagram")
    record["access_token"] = "changed"
    record["permissions"].append("changed")

    assert store.get("instagram") == RECORD


def test_all_returns_copy(store: TokenStore) -> None:
    store.set("instagram", RECORD)

    records = store.all()
    records["instagram"]["permissions"].append("changed")
    records["x"] = {}

    assert store.all() == {"instagram": RECORD}


def test_set_stores_copy(store: TokenStore) -> None:
    record = json.loads(json.dumps(RECORD))
    store.set("instagram", record)

    record["permissions"].append("changed")

    assert store.get("instagram") == RECORD


def test_update_changes_record(store: TokenStore) -> None:
    store.set("instagram", RECORD)

    updated = store.update("instagram", lambda r: r.update(access_token="token-new"))

    assert updated == {**RECORD, "access_token": "token-new"}
    assert store.get("instagram") == updated
    assert TokenStore(store.path).get("instagram") == updated


def test_update_returns_copy(store: TokenStore) -> None:
    store.set("instagram", RECORD)

    updated = store.update("instagram", lambda r: r.update(access_token="token-new"))
    updated["permissions"].append("changed")

    assert store.get("instagram")["permissions"] == RECORD["permissions"]


def test_update_missing_provider_writes_nothing(
    store: TokenStore, tokens_path: Path
) -> None:
    store.set("x", {"access_token": "token-x"})
    before = tokens_path.stat()
    calls: list[dict[str, Any]] = []

    result = store.update("instagram", calls.append)

    after = tokens_path.stat()
    assert result is None
    assert calls == []
    assert after.st_ino == before.st_ino
    assert after.st_mtime_ns == before.st_mtime_ns


def test_update_missing_file_creates_nothing(
    store: TokenStore, tokens_path: Path
) -> None:
    result = store.update("instagram", lambda r: r.update(counter=1))

    assert result is None
    assert not tokens_path.exists()


def test_delete_removes_record(store: TokenStore) -> None:
    store.set("instagram", RECORD)
    store.set("x", {"access_token": "token-x"})

    assert store.delete("instagram") is True
    assert store.get("instagram") is None
    assert store.all() == {"x": {"access_token": "token-x"}}


def test_delete_missing_provider_returns_false(
    store: TokenStore, tokens_path: Path
) -> None:
    assert store.delete("instagram") is False
    assert not tokens_path.exists()


def test_transaction_raises_writes_nothing(
    store: TokenStore, tokens_path: Path
) -> None:
    store.set("instagram", RECORD)
    before = tokens_path.read_bytes()

    with pytest.raises(RuntimeError):
        with store.transaction() as providers:
            providers["instagram"]["access_token"] = "token-new"
            raise RuntimeError("abort")

    assert tokens_path.read_bytes() == before
    assert store.get("instagram") == RECORD


# File format and mode


def test_set_document_format(store: TokenStore, tokens_path: Path) -> None:
    store.set("instagram", RECORD)

    document = json.loads(tokens_path.read_text(encoding="utf-8"))

    assert document == {"version": 1, "providers": {"instagram": RECORD}}


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.set("instagram", {"access_token": "token-new"}),
        lambda s: s.update("instagram", lambda r: r.update(access_token="token-new")),
        lambda s: s.delete("instagram"),
    ],
    ids=["set", "update", "delete"],
)
def test_write_mode_0600_after_0644(
    store: TokenStore, tokens_path: Path, write: Callable[[TokenStore], Any]
) -> None:
    store.set("instagram", RECORD)
    tokens_path.chmod(0o644)

    write(store)

    assert file_mode(tokens_path) == 0o600


def test_set_new_file_mode_0600(store: TokenStore, tokens_path: Path) -> None:
    store.set("instagram", RECORD)

    assert file_mode(tokens_path) == 0o600


def test_set_leaves_no_temp_file(store: TokenStore, tokens_path: Path) -> None:
    store.set("instagram", RECORD)
    store.set("instagram", {"access_token": "token-new"})

    assert temp_files(tokens_path.parent) == []


# Cache


def test_get_sees_other_instance_write(store: TokenStore, tokens_path: Path) -> None:
    store.set("instagram", RECORD)
    assert store.get("instagram") == RECORD

    TokenStore(tokens_path).set("instagram", {"access_token": "token-new"})

    assert store.get("instagram") == {"access_token": "token-new"}


def test_get_sees_other_process_write(store: TokenStore, tokens_path: Path) -> None:
    store.set("instagram", RECORD)
    assert store.get("instagram") == RECORD

    child = subprocess.run(
        [sys.executable, "-c", CHILD_SET, str(tokens_path), "token-child"],
        cwd=ROOT,
        timeout=WAIT_SECONDS,
        check=False,
    )

    assert child.returncode == 0
    assert store.get("instagram") == {"access_token": "token-child"}


def test_get_sees_file_removed(store: TokenStore, tokens_path: Path) -> None:
    store.set("instagram", RECORD)
    assert store.get("instagram") == RECORD

    tokens_path.unlink()

    assert store.get("instagram") is None


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> MonotonicClock:
    clock = MonotonicClock()
    monkeypatch.setattr(token_store.time, "monotonic", clock)
    return clock


def test_peek_sees_other_instance_write_after_recheck_time(
    store: TokenStore, tokens_path: Path, monotonic: MonotonicClock
) -> None:
    store.set("instagram", RECORD)
    assert store.peek("instagram") == RECORD

    TokenStore(tokens_path).set("instagram", {"access_token": "token-new"})
    monotonic.now += TokenStore.PEEK_RECHECK_SECONDS / 2
    kept = store.peek("instagram")
    monotonic.now += TokenStore.PEEK_RECHECK_SECONDS

    assert kept == RECORD
    assert store.peek("instagram") == {"access_token": "token-new"}


def test_peek_sees_own_write_at_once(
    store: TokenStore, monotonic: MonotonicClock
) -> None:
    store.set("instagram", RECORD)
    assert store.peek("instagram") == RECORD

    store.set("instagram", {"access_token": "token-new"})

    assert store.peek("instagram") == {"access_token": "token-new"}


def test_get_ignores_peek_recheck_time(
    store: TokenStore, tokens_path: Path, monotonic: MonotonicClock
) -> None:
    store.set("instagram", RECORD)
    assert store.peek("instagram") == RECORD

    TokenStore(tokens_path).set("instagram", {"access_token": "token-new"})

    assert store.get("instagram") == {"access_token": "token-new"}
    assert store.peek_all() == {"instagram": {"access_token": "token-new"}}


# Atomic writes and crashes


def big_record(generation: int, repeat: int) -> dict[str, Any]:
    """Return the record that CHILD_WRITE_FOREVER writes for `generation`."""
    digest = hashlib.sha256(str(generation).encode()).hexdigest()
    return {"generation": generation, "payload": digest * repeat}


def wait_for_temp_file(folder: Path, timeout: float) -> bool:
    """Poll `folder` for a temporary file and return whether one appeared in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if temp_files(folder):
            return True
    return False


def test_set_sigkill_keeps_whole_file(store: TokenStore, tokens_path: Path) -> None:
    repeat = 65_536  # 64 hex characters each: a 4 MiB payload
    rng = random.Random(20240601)
    store.set("instagram", big_record(0, repeat))
    generation = 0
    advanced = 0
    torn_writes = 0

    for attempt in range(12):
        child = start_child(CHILD_WRITE_FOREVER, tokens_path, generation + 1, repeat)
        try:
            assert read_line(child, WAIT_SECONDS) == "ready"
            if attempt % 2:
                # Aim inside a write: the temporary file exists until os.replace.
                assert wait_for_temp_file(tokens_path.parent, WAIT_SECONDS)
                time.sleep(rng.uniform(0.0, 0.005))
            else:
                deadline = time.monotonic() + rng.uniform(0.0, 0.3)
                while time.monotonic() < deadline:
                    # A reader running during the writes sees a whole file each time.
                    json.loads(tokens_path.read_text(encoding="utf-8"))
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=WAIT_SECONDS) == -signal.SIGKILL
        finally:
            stop_child(child)

        record = TokenStore(tokens_path).get("instagram")
        assert record == big_record(record["generation"], repeat)
        assert record["generation"] >= generation
        advanced += record["generation"] > generation
        generation = record["generation"]
        torn_writes += len(temp_files(tokens_path.parent))
        for leftover in temp_files(tokens_path.parent):
            leftover.unlink()

    # Both counts show that kills landed inside writes and that writes completed.
    assert torn_writes > 0
    assert advanced > 0
    run_bounded(lambda: store.set("instagram", {"generation": -1}))
    assert store.get("instagram") == {"generation": -1}


def test_set_replace_failure_keeps_old_file(
    store: TokenStore, tokens_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.set("instagram", RECORD)
    before = tokens_path.read_bytes()

    def fail_replace(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(TokenStoreWriteError) as caught:
        store.set("instagram", {"access_token": "token-new"})
    monkeypatch.undo()

    assert str(tokens_path) in str(caught.value)
    assert "Input/output error" in str(caught.value)
    assert tokens_path.read_bytes() == before
    assert temp_files(tokens_path.parent) == []
    assert store.get("instagram") == RECORD


def test_set_fsync_failure_keeps_old_file(
    store: TokenStore, tokens_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.set("instagram", RECORD)
    before = tokens_path.read_bytes()

    def fail_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail_fsync)
    with pytest.raises(TokenStoreWriteError) as caught:
        store.set("instagram", {"access_token": "token-new"})
    monkeypatch.undo()

    assert str(tokens_path) in str(caught.value)
    assert tokens_path.read_bytes() == before
    assert temp_files(tokens_path.parent) == []


def test_set_read_only_folder_keeps_token(
    store: TokenStore, tokens_path: Path, make_read_only: Callable[[Path], None]
) -> None:
    store.set("instagram", RECORD)
    before = tokens_path.read_bytes()
    make_read_only(tokens_path.parent)

    with pytest.raises(TokenStoreWriteError) as caught:
        store.set("instagram", {"access_token": "token-new"})

    message = str(caught.value)
    assert str(tokens_path) in message
    assert "writable" in message
    assert tokens_path.read_bytes() == before
    assert store.get("instagram") == RECORD


def test_set_read_only_folder_no_lock_file(
    store: TokenStore, tokens_path: Path, make_read_only: Callable[[Path], None]
) -> None:
    write_json_atomic(tokens_path, {"version": 1, "providers": {"instagram": RECORD}})
    make_read_only(tokens_path.parent)

    with pytest.raises(TokenStoreWriteError) as caught:
        store.set("instagram", {"access_token": "token-new"})

    message = str(caught.value)
    assert f"{tokens_path}.lock" in message
    assert "writable" in message
    assert store.get("instagram") == RECORD


def test_set_disk_full_keeps_token(
    store: TokenStore, tokens_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.set("instagram", RECORD)
    before = tokens_path.read_bytes()

    def fail_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", fail_mkstemp)
    with pytest.raises(TokenStoreWriteError) as caught:
        store.set("instagram", {"access_token": "token-new"})

    message = str(caught.value)
    assert str(tokens_path) in message
    assert "No space left on device" in message
    assert "disk is not full" in message
    assert tokens_path.read_bytes() == before
    assert store.get("instagram") == RECORD


# Locks


def test_update_four_processes_loses_nothing(
    store: TokenStore, tokens_path: Path
) -> None:
    store.set("instagram", {"counter": 0})
    children = [start_child(CHILD_INCREMENT, tokens_path) for _ in range(4)]
    outputs: list[bytes] = []
    try:
        for child in children:
            assert read_line(child, WAIT_SECONDS) == "ready"
        for child in children:
            child.stdin.write(b"go\n")
            child.stdin.flush()
        for child in children:
            output, _ = child.communicate(timeout=30)
            outputs.append(output)
            assert child.returncode == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=WAIT_SECONDS)

    seen = [int(line) for output in outputs for line in output.split()]
    document = json.loads(tokens_path.read_text(encoding="utf-8"))
    assert document["providers"]["instagram"]["counter"] == 200
    assert sorted(seen) == list(range(1, 201))


def test_transaction_reentrant_in_thread(store: TokenStore) -> None:
    def nest() -> None:
        with store.transaction():
            with store.transaction() as providers:
                providers["instagram"] = RECORD

    run_bounded(nest)

    assert store.get("instagram") == RECORD


def test_set_inside_transaction_no_deadlock(store: TokenStore) -> None:
    def nest() -> None:
        with store.transaction():
            store.set("instagram", RECORD)

    run_bounded(nest)

    assert store.get("instagram") == RECORD


def test_transaction_nested_keeps_inner_write(store: TokenStore) -> None:
    def nest() -> None:
        with store.transaction() as providers:
            store.set("x", {"access_token": "token-x"})
            providers["instagram"] = RECORD

    run_bounded(nest)

    assert store.get("instagram") == RECORD
    assert store.get("x") == {"access_token": "token-x"}


def test_transaction_excludes_other_thread(store: TokenStore) -> None:
    first_entered = threading.Event()
    release_first = threading.Event()
    second_entered = threading.Event()
    times: dict[str, float] = {}

    def first() -> None:
        with store.transaction() as providers:
            first_entered.set()
            release_first.wait(WAIT_SECONDS)
            providers["instagram"] = RECORD
            times["first_leaves"] = time.monotonic()

    def second() -> None:
        first_entered.wait(WAIT_SECONDS)
        with store.transaction() as providers:
            times["second_enters"] = time.monotonic()
            second_entered.set()
            providers["x"] = {"access_token": "token-x"}

    threads = [threading.Thread(target=f, daemon=True) for f in (first, second)]
    for thread in threads:
        thread.start()
    assert first_entered.wait(WAIT_SECONDS)
    entered_early = second_entered.wait(0.3)
    release_first.set()
    for thread in threads:
        thread.join(WAIT_SECONDS)

    assert not entered_early
    assert not any(thread.is_alive() for thread in threads)
    assert times["second_enters"] >= times["first_leaves"]
    assert store.all() == {"instagram": RECORD, "x": {"access_token": "token-x"}}


# Corrupt and unreadable files


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"version": 1}',
        '{"version": 1, "providers": []}',
        "[]",
        '{"version": "v0", "providers": {}}',
        '{"version": 0, "providers": {}}',
        '{"providers": {}}',
        "",
    ],
    ids=[
        "invalid-json",
        "no-providers",
        "providers-list",
        "json-list",
        "version-v0",
        "version-0",
        "no-version",
        "empty",
    ],
)
def test_get_corrupt_file_moved_aside(
    store: TokenStore, tokens_path: Path, text: str
) -> None:
    tokens_path.write_text(text, encoding="utf-8")

    with pytest.raises(CorruptTokenFileError) as caught:
        store.get("instagram")

    copies = corrupt_copies(tokens_path.parent)
    message = str(caught.value)
    assert len(copies) == 1
    assert re.fullmatch(r"tokens\.json\.corrupt-\d{8}T\d{12}Z", copies[0].name)
    assert copies[0].read_text(encoding="utf-8") == text
    assert not tokens_path.exists()
    assert str(copies[0]) in message
    # The token file's own path appears alone and as the prefix of the copy's.
    assert message.count(str(tokens_path)) >= 2
    assert store.get("instagram") is None
    assert store.all() == {}


def test_set_empty_file_not_overwritten(store: TokenStore, tokens_path: Path) -> None:
    tokens_path.write_bytes(b"")

    with pytest.raises(CorruptTokenFileError):
        store.set("instagram", RECORD)

    copies = corrupt_copies(tokens_path.parent)
    assert len(copies) == 1
    assert copies[0].stat().st_size == 0
    assert not tokens_path.exists()


def test_set_after_corrupt_file_starts_empty(
    store: TokenStore, tokens_path: Path
) -> None:
    tokens_path.write_text("{not json", encoding="utf-8")
    with pytest.raises(CorruptTokenFileError):
        store.get("instagram")

    store.set("instagram", RECORD)

    assert store.all() == {"instagram": RECORD}
    assert len(corrupt_copies(tokens_path.parent)) == 1


def test_get_invalid_utf8_moved_aside(store: TokenStore, tokens_path: Path) -> None:
    tokens_path.write_bytes(b"\xff\xfe{garbage")

    with pytest.raises(CorruptTokenFileError):
        store.get("instagram")

    assert len(corrupt_copies(tokens_path.parent)) == 1
    assert not tokens_path.exists()


def test_get_newer_version_not_moved(store: TokenStore, tokens_path: Path) -> None:
    text = '{"version": 2, "providers": {"instagram": {}}}'
    tokens_path.write_text(text, encoding="utf-8")

    with pytest.raises(TokenStoreError) as caught:
        store.get("instagram")

    message = str(caught.value)
    assert not isinstance(caught.value, CorruptTokenFileError)
    assert str(tokens_path) in message
    assert "Upgrade" in message
    assert tokens_path.read_text(encoding="utf-8") == text
    assert corrupt_copies(tokens_path.parent) == []


def test_set_newer_version_not_overwritten(
    store: TokenStore, tokens_path: Path
) -> None:
    text = '{"version": 2, "providers": {"instagram": {}}}'
    tokens_path.write_text(text, encoding="utf-8")

    with pytest.raises(TokenStoreError):
        store.set("instagram", RECORD)

    assert tokens_path.read_text(encoding="utf-8") == text
    assert corrupt_copies(tokens_path.parent) == []


# Helpers reused for other files


def test_write_json_atomic_other_file(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"
    data = {"posts": [{"caption": "café ☕"}], "fetched_at": None}

    write_json_atomic(path, data)

    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert file_mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed.json"]


def test_write_json_atomic_custom_mode(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"
    write_json_atomic(path, {"posts": []})

    write_json_atomic(path, {"posts": [1]}, mode=0o644)

    assert file_mode(path) == 0o644
    assert json.loads(path.read_text(encoding="utf-8")) == {"posts": [1]}


def test_write_json_atomic_failure_names_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "feed.json"
    write_json_atomic(path, {"posts": []})

    def fail_replace(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(token_store.os, "replace", fail_replace)
    with pytest.raises(TokenStoreWriteError) as caught:
        write_json_atomic(path, {"posts": [1]})
    monkeypatch.undo()

    assert str(path) in str(caught.value)
    assert json.loads(path.read_text(encoding="utf-8")) == {"posts": []}
    assert temp_files(tmp_path) == []


def test_file_lock_other_file_excludes_process(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"

    with file_lock(path):
        child = start_child(CHILD_LOCK, path)
        try:
            ready = read_line(child, WAIT_SECONDS)
            early = read_line(child, 0.3)
        except BaseException:
            stop_child(child)
            raise
    try:
        late = read_line(child, WAIT_SECONDS)
    finally:
        stop_child(child)

    assert ready == "ready"
    assert early is None
    assert late == "acquired"
    assert Path(f"{path}.lock").exists()


def test_file_lock_other_file_independent(tmp_path: Path) -> None:
    with file_lock(tmp_path / "feed.json"):
        child = start_child(CHILD_LOCK, tmp_path / "tokens.json")
        try:
            ready = read_line(child, WAIT_SECONDS)
            line = read_line(child, WAIT_SECONDS)
        finally:
            stop_child(child)

    assert ready == "ready"
    assert line == "acquired"


def test_file_lock_reentrant_in_thread(tmp_path: Path) -> None:
    path = tmp_path / "feed.json"

    def nest() -> str:
        with file_lock(path):
            with file_lock(path):
                return "inner"

    assert run_bounded(nest) == "inner"
