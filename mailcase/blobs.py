"""Content-addressed file store for raw messages and attachments.

A blob lives at ``DIR/ab/cd/abcd…`` (its sha256). Names that senders chose
never reach the file system: they are kept in the database as data only.
Writes are atomic (temporary file, then rename), so a crash of the process
leaves either the whole blob or none; writing the same content twice is a no-op, which makes
re-processing a message after a crash idempotent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

from mailcase.errors import StorageError

# Older than this, a spool file is no poll's any more (see BlobStore.sweep_spool).
SPOOL_MAX_AGE = 3600.0


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) owner-only; tighten it if it exists."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (path.stat().st_mode & 0o777) != 0o700 and path.stat().st_uid == os.getuid():
        path.chmod(0o700)


class BlobStore:
    """Owner-only directory of immutable blobs keyed by sha256."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        ensure_private_dir(directory)
        self._made: set[Path] = set()  # fan-out directories known to exist (a mkdir is a syscall)

    def path(self, sha256: str) -> Path:
        return self.path_in(self.directory, sha256)

    @staticmethod
    def path_in(directory: Path, sha256: str) -> Path:
        """Where the blob ``sha256`` is kept in a store at ``directory`` (nothing created)."""
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return directory / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data``; return its sha256. Safe to call again with the same data.

        Raises :class:`~mailcase.errors.StorageError` naming the directory when
        it cannot be written (a full disk, a read-only mount, permissions): the
        store failed, not the message, so the caller must not quarantine it.
        """
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if _holds(target, len(data)):
            return digest
        try:
            self._make_parents(target)
            # Written in the spool, renamed into place (one file system): a write
            # cut short by a kill leaves the customer's message where sweep_spool
            # removes it, not in a blob folder nothing ever looks at again.
            fd, tmp = tempfile.mkstemp(dir=self._spool(), prefix=".tmp-")
        except OSError as exc:
            raise self.failed(exc) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                # No fsync: it cost ~4 ms a message, and the database the blob
                # belongs to (SQLite WAL, synchronous=NORMAL) is not durable
                # across a power cut either; across a process crash the page
                # cache keeps both.
                fh.write(data)
            os.replace(tmp, target)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise self.failed(exc) from exc
            raise
        return digest

    def put_file(self, source: Path) -> str:
        """Move the file ``source`` into the store (hashed in chunks); return its sha256.

        Raises :class:`~mailcase.errors.StorageError` as :meth:`put` does.
        """
        try:
            digest = hashlib.sha256()
            with source.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            sha = digest.hexdigest()
            target = self.path(sha)
            if _holds(target, source.stat().st_size):
                source.unlink(missing_ok=True)
                return sha
            self._make_parents(target)
            source.chmod(0o600)
            os.replace(source, target)
        except OSError as exc:
            raise self.failed(exc) from exc
        return sha

    def failed(self, exc: OSError) -> StorageError:
        """The StorageError naming this store for ``exc`` (a write to it that failed)."""
        return StorageError(
            f"cannot write to the store {self.directory} (storage.directory): {exc.strerror or exc}"
        )

    def sweep_spool(self, older_than: float = SPOOL_MAX_AGE) -> int:
        """Remove spool files older than ``older_than`` seconds; how many.

        A spool file lives while one large message is fetched and stored; one
        left behind (a poll stopped or killed with messages read ahead) holds a
        customer's whole message, and nothing else would ever remove it. Files
        of a poll running now in another process are younger than the limit.
        """
        removed = 0
        with contextlib.suppress(FileNotFoundError):
            cutoff = time.time() - older_than
            for path in (self.directory / "spool").iterdir():
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
        return removed

    def spool_path(self) -> Path:
        """A fresh owner-only file name on the store's file system for streaming into."""
        try:
            fd, name = tempfile.mkstemp(dir=self._spool(), prefix="msg-")
        except OSError as exc:
            raise self.failed(exc) from exc
        os.close(fd)
        return Path(name)

    def _spool(self) -> Path:
        """The spool directory (owner-only), made once per process; OSError if it cannot be."""
        spool = self.directory / "spool"
        if spool not in self._made:
            spool.mkdir(exist_ok=True, mode=0o700)
            self._made.add(spool)
        return spool

    def _make_parents(self, target: Path) -> None:
        if target.parent in self._made:
            return
        # One level at a time: mkdir(parents=True) gives the parents the
        # umask's mode, not 0700. The first level (256 directories) soon
        # exists, so it is made only when the second level's mkdir says so.
        try:
            target.parent.mkdir(exist_ok=True, mode=0o700)
        except FileNotFoundError:
            target.parent.parent.mkdir(exist_ok=True, mode=0o700)
            target.parent.mkdir(exist_ok=True, mode=0o700)
        self._made.add(target.parent)

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()


def _holds(target: Path, size: int) -> bool:
    """Whether ``target`` is there with ``size`` bytes: a blob already stored.

    Not just there: after a power cut a blob renamed into place may be empty
    (its data was never flushed); storing the same content again repairs it.
    """
    try:
        return target.stat().st_size == size
    except OSError:  # not there (or its directory is not): written, or that fails
        return False


HEADER_LIMIT = 1024 * 1024  # as much as a large message's parse reads (imap.HEAD_BYTES)


def read_header(path: Path) -> bytes:
    """The beginning of the stored message at ``path``, through its header section:
    read 64 KB at a time, at most :data:`HEADER_LIMIT`. Raises OSError as ``open`` does."""
    head = b""
    with path.open("rb") as raw:
        while len(head) < HEADER_LIMIT:
            chunk = raw.read(64 * 1024)
            head += chunk
            if not chunk or b"\r\n\r\n" in head or b"\n\n" in head:
                break
    return head
