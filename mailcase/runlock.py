"""One delivery run at a time across processes, beside a SQLite database.

On SQLite delivery reads what is due and sends it without holding the write
lock (mailcase.outbox), so two processes delivering at once (the daemon
clearing a backlog while an agent runs ``mailcase cases resolve``, which
delivers too) would both send every notice they both read as queued. On
PostgreSQL each notice is claimed with ``FOR UPDATE SKIP LOCKED`` and needs
no such lock.

So a delivery run on SQLite holds an exclusive ``flock`` on
``<database>-deliver`` (an empty file, owner-only like the database). The
kernel releases it when its holder exits or is killed, so a crash never
leaves it held. A run that finds it held waits a few seconds, then leaves
the outbox to the run in progress, which reads what is due page by page
until nothing is left, new notices included.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailcase.errors import DatabaseError

SUFFIX = "-deliver"
WAIT_SECONDS = 5.0  # long enough for a short run to end; a CLI command is not held up long
_STEP = 0.05


def beside(database: Path) -> Path:
    return database.with_name(database.name + SUFFIX)


@contextmanager
def held(path: Path, wait: float | None = None) -> Iterator[bool]:
    """Hold the lock on ``path`` for the block; yield whether it was taken.

    ``False`` means another process (or another run in this one) held it for
    ``wait`` seconds (default :data:`WAIT_SECONDS`): the caller must not deliver. Raises
    :class:`~mailcase.errors.DatabaseError` naming the file when it cannot
    be opened (a delivery run without it could send notices twice).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DatabaseError(f"cannot open the delivery lock {path}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + (WAIT_SECONDS if wait is None else wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(_STEP)
            else:
                break
        yield True  # flock is released with the descriptor
    finally:
        os.close(fd)
