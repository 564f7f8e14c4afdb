"""Mailbox leases: with several ``mailcase run`` instances on one database, each
mailbox is polled by one instance at a time.

A lease is a row (mailbox, holder, expires_at). A poll takes the lease (free
or expired) in a short transaction that locks the row (``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite's write lock serialises it anyway), renews it
after every batch, and gives it up when it ends. Leases last
:data:`LEASE_SECONDS`, so a holder that dies mid-poll hands the mailbox to
another instance within a minute, while a long poll keeps it.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from mailcase.models import MailboxLease
from mailcase.store import Store, utcnow

LEASE_SECONDS = 60


def instance_id() -> str:
    """This process's name in leases: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


INSTANCE = instance_id()


def acquire(store: Store, mailbox: str, holder: str = INSTANCE) -> bool:
    """Take or renew the lease on ``mailbox`` for ``holder``; False if another instance holds it."""
    now = utcnow()
    try:
        with store.transaction() as session:
            query = select(MailboxLease).where(MailboxLease.mailbox == mailbox)
            lease = session.exec(query.with_for_update()).first()
            if lease is None:
                lease = MailboxLease(mailbox=mailbox, holder=holder, expires_at=now)
            elif lease.holder != holder and lease.expires_at > now and _alive(lease.holder):
                return False
            lease.holder = holder
            lease.expires_at = now + timedelta(seconds=LEASE_SECONDS)
            session.add(lease)
    except IntegrityError:  # another instance inserted the first lease at the same moment
        return False
    return True


def _alive(holder: str) -> bool:
    """Whether ``holder`` may still be running: always, unless it is a dead process here.

    A holder on this host whose process is gone (kill -9, then a restart)
    need not be waited for: its lease is free at once.
    """
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user
        return True
    return True


def release(store: Store, mailbox: str, holder: str = INSTANCE) -> None:
    """Give the lease up (on shutdown), so another instance can take over at once."""
    with store.transaction() as session:
        lease = session.get(MailboxLease, mailbox)
        if lease is not None and lease.holder == holder:
            session.delete(lease)
