"""The JSON-file token store, and the safe-file helpers the other caches reuse.

`instance/tokens.json` contains one record per provider. Every write goes to a
temporary file in the same folder, is flushed and fsynced, and replaces the old
file with `os.replace`, so a reader or a crash sees the old file or the new one,
never a mix. Writers take an exclusive `flock` on a sibling `.lock` file, which
holds between threads and between processes (gunicorn workers) alike.
"""

from __future__ import annotations

import copy
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from timeutil import utc_now

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_held_locks = threading.local()


class TokenStoreError(Exception):
    """The token file could not be read or written."""


class CorruptTokenFileError(TokenStoreError):
    """The token file could not be parsed and was moved aside."""


class TokenStoreWriteError(TokenStoreError):
    """The token file could not be replaced; the previous file is unchanged."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for `path`, across threads and processes.

    The lock lives on `<path>.lock`, because the data file itself is replaced on
    every write. A thread that already holds the lock may take it again.
    """
    lock_path = f"{path}.lock"
    depth = getattr(_held_locks, "depths", {})
    _held_locks.depths = depth
    if depth.get(lock_path):
        depth[lock_path] += 1
        try:
            yield
        finally:
            depth[lock_path] -= 1
        return

    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise TokenStoreWriteError(
            f"Cannot create the lock file {lock_path}: {err.strerror}. "
            "Make the instance folder writable by the user running ownfeed."
        ) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        depth[lock_path] = 1
        try:
            yield
        finally:
            depth[lock_path] = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_json_atomic(
    path: Path, data: Any, mode: int = 0o600, compact: bool = False
) -> None:
    """Replace `path` with `data` as JSON, atomically and durably.

    Raises TokenStoreWriteError, naming the file and the fix, when the folder is
    read-only or full; the previous file is then left as it was.
    """
    path = Path(path)
    if compact:
        # Large caches (the feeds) skip indentation, which doubles their size.
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
    else:
        body = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    temp_name = None
    try:
        fd, temp_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
        with os.fdopen(fd, "w", encoding="utf-8") as temp_file:
            os.fchmod(temp_file.fileno(), mode)
            temp_file.write(body)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
        temp_name = None
    except OSError as err:
        raise TokenStoreWriteError(
            f"Cannot write {path}: {err.strerror}. The previous file was kept. "
            "Check that the instance folder is writable and the disk is not full."
        ) from err
    finally:
        if temp_name is not None:
            _remove_quietly(temp_name)
    try:
        _fsync_folder(path.parent)
    except OSError as err:
        # The new file is in place; only its durability across a power cut is
        # in doubt, which a later write repairs.
        logger.warning("Cannot fsync the folder of %s: %s", path, err.strerror)


def move_aside(path: Path, reason: str) -> Path:
    """Rename an unreadable file to `<name>.corrupt-<UTC time>`; return the new path."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    logger.error("Moved unreadable %s to %s: %s", path, aside, reason)
    return aside


def _fernet(key: str | None) -> Fernet | None:
    return Fernet(key) if key else None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


class TokenStore:
    """Provider records in one JSON file, as `{"version": 1, "providers": {...}}`.

    Reads are served from memory and the file is parsed again only when its
    inode, size or modification time changes, so another process's write is seen
    on the next read. Callers get deep copies and cannot change the cache. The
    hot path's `peek` looks at the file at most every `PEEK_RECHECK_SECONDS`:
    this process's writes show at once, another process's within that time.
    """

    # In a profile of a gunicorn worker, a stat per public request took about
    # as long as the rest of the token check.
    PEEK_RECHECK_SECONDS = 1.0

    def __init__(self, path: Path | str, encryption_key: str | None = None) -> None:
        self.path = Path(path)
        # With a key, the providers are stored as one Fernet token (AES-128-CBC
        # with HMAC-SHA256, from the cryptography package).
        self._fernet = _fernet(encryption_key)
        self._cached_signature: tuple[int, int, int] | None = None
        self._cached_document: dict[str, Any] | None = None
        self._checked_at = 0.0
        self._cache_lock = threading.Lock()
        self._open = threading.local()

    def get(self, provider: str) -> dict[str, Any] | None:
        """Return a copy of the provider's record, or None when it has none."""
        record = self._document()["providers"].get(provider)
        return copy.deepcopy(record)

    def peek(self, provider: str) -> dict[str, Any] | None:
        """Return the provider's cached record without copying it; never change it.

        For the hot path of public requests, where a deep copy per request
        would cost more than the rest of the check. Another process's write is
        seen within PEEK_RECHECK_SECONDS.
        """
        return self._document(self.PEEK_RECHECK_SECONDS)["providers"].get(provider)

    def peek_all(self) -> dict[str, dict[str, Any]]:
        """Return every cached record without copying; never change them."""
        return self._document(self.PEEK_RECHECK_SECONDS)["providers"]

    def all(self) -> dict[str, dict[str, Any]]:
        """Return a copy of every provider's record, keyed by provider name."""
        return copy.deepcopy(self._document()["providers"])

    def set(self, provider: str, record: dict[str, Any]) -> None:
        """Store the provider's record, replacing any previous one."""
        with self.transaction() as providers:
            providers[provider] = copy.deepcopy(record)

    def update(
        self, provider: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any] | None:
        """Apply `change` to the provider's record under the lock and store it.

        Returns the updated record, or None (and writes nothing) when the provider
        has no record.
        """
        with self.transaction() as providers:
            record = providers.get(provider)
            if record is None:
                return None
            change(record)
            return copy.deepcopy(record)

    def delete(self, provider: str) -> bool:
        """Forget the provider's record; return whether there was one."""
        with self.transaction() as providers:
            return providers.pop(provider, None) is not None

    @contextmanager
    def transaction(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Yield the providers mapping under the lock and write it back if changed.

        Nothing is written when the block raises.
        """
        open_transactions = getattr(self._open, "documents", None)
        if open_transactions:
            # A nested transaction shares the outer one's document, which the
            # outer one writes, so neither overwrites the other's changes.
            yield open_transactions[-1]["providers"]
            return

        with file_lock(self.path):
            document = self._load_from_disk()
            before = copy.deepcopy(document["providers"])
            self._open.documents = [document]
            try:
                yield document["providers"]
            finally:
                self._open.documents = []
            if document["providers"] != before:
                write_json_atomic(self.path, self._stored_form(document))
                self._forget_cache()

    def rewrite(self, encrypted: bool) -> None:
        """Write the file again, encrypted or in plain JSON (for the commands).

        Reading still needs the key when the file is encrypted now.
        """
        with file_lock(self.path):
            document = self._load_from_disk()
            if encrypted and self._fernet is None:
                raise TokenStoreError(
                    "TOKEN_ENCRYPTION_KEY is not set, so the token file cannot be "
                    "encrypted. Set it, then run the command again."
                )
            stored = self._stored_form(document) if encrypted else document
            write_json_atomic(self.path, stored)
            self._forget_cache()

    def is_encrypted_on_disk(self) -> bool:
        """Tell whether the file on disk contains encrypted providers."""
        try:
            return '"encrypted"' in self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return False

    def _stored_form(self, document: dict[str, Any]) -> dict[str, Any]:
        if self._fernet is None:
            return document
        plain = json.dumps(document["providers"], sort_keys=True).encode()
        token = self._fernet.encrypt(plain).decode("ascii")
        return {"version": SCHEMA_VERSION, "encrypted": token}

    def _decrypt(self, stored: dict[str, Any]) -> dict[str, Any]:
        if self._fernet is None:
            raise TokenStoreError(
                f"{self.path} is encrypted. Set TOKEN_ENCRYPTION_KEY to the key it "
                "was encrypted with."
            )
        try:
            plain = self._fernet.decrypt(stored["encrypted"].encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise TokenStoreError(
                f"{self.path} cannot be decrypted with TOKEN_ENCRYPTION_KEY. Set the "
                "key it was encrypted with; the file was left as it is."
            ) from None
        providers = json.loads(plain)
        return {"version": SCHEMA_VERSION, "providers": providers}

    def _document(self, recheck_after: float = 0.0) -> dict[str, Any]:
        """Return the cached document, checking the file unless it was checked
        less than `recheck_after` seconds ago."""
        checked_at = time.monotonic()
        if recheck_after:
            with self._cache_lock:
                if (
                    self._cached_document is not None
                    and checked_at - self._checked_at < recheck_after
                ):
                    return self._cached_document
        signature = self._signature()
        with self._cache_lock:
            if signature is not None and signature == self._cached_signature:
                self._checked_at = checked_at
                return self._cached_document
        document = self._load_from_disk()
        with self._cache_lock:
            self._cached_signature = signature
            self._cached_document = document
            self._checked_at = checked_at
        return document

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (status.st_ino, status.st_size, status.st_mtime_ns)

    def _forget_cache(self) -> None:
        with self._cache_lock:
            self._cached_signature = None
            self._cached_document = None

    def _load_from_disk(self) -> dict[str, Any]:
        try:
            text = self.path.read_bytes().decode("utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return {"version": SCHEMA_VERSION, "providers": {}}
        except OSError as err:
            raise TokenStoreError(
                f"Cannot read {self.path}: {err.strerror}. "
                "Make it readable by the user running ownfeed."
            ) from err

        problem = _document_problem(text)
        if problem is None:
            document = json.loads(text)
            if "encrypted" in document:
                return self._decrypt(document)
            return document
        if problem.startswith("version"):
            raise TokenStoreError(f"{self.path} has {problem}. Upgrade ownfeed.")
        with file_lock(self.path):
            # Another process may have moved or replaced the file since it was read.
            if not self.path.exists():
                return {"version": SCHEMA_VERSION, "providers": {}}
            current = self.path.read_bytes().decode("utf-8", "surrogateescape")
            if current != text:
                return self._load_from_disk()
            try:
                aside = move_aside(self.path, problem)
            except OSError as err:
                raise TokenStoreError(
                    f"{self.path} could not be parsed ({problem}) and could not be "
                    f"moved aside: {err.strerror}. Make the instance folder writable."
                ) from err
        raise CorruptTokenFileError(
            f"{self.path} could not be parsed ({problem}) and was moved to {aside}. "
            "Fix that file and move it back, or connect the account again from "
            "/admin/generate."
        )


def _document_problem(text: str) -> str | None:
    """Describe what is wrong with the token file's text, or return None."""
    try:
        document = json.loads(text.encode("utf-8", "surrogateescape").decode("utf-8"))
    except ValueError as err:
        return f"invalid JSON: {err}"
    if not isinstance(document, dict):
        return 'no "providers" object'
    encrypted = isinstance(document.get("encrypted"), str)
    if not encrypted and not isinstance(document.get("providers"), dict):
        return 'no "providers" object'
    version = document.get("version")
    if version != SCHEMA_VERSION:
        if isinstance(version, int) and version > SCHEMA_VERSION:
            return (
                f"version {version}, newer than this ownfeed reads ({SCHEMA_VERSION})"
            )
        return f"unknown schema version {version!r}"
    return None
