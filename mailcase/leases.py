"""Mailbox leases: with several ``mailcase run`` instances on one database, each
mailbox is polled by one instance at a time.

A lease is a row (mailbox, holder, expires_at). A poll takes the lease (free
or expired) in a short transaction that locks the row (``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite's write lock serialises it anyway), renews it
after every batch and at least every :data:`RENEW_SECONDS`, and gives it up
when it ends. Leases last :data:`LEASE_SECONDS`, so a holder that dies
mid-poll hands the mailbox to another instance within a minute, while a long
poll keeps it.

Times are the database's clock on PostgreSQL, where instances run on several
hosts: a host whose clock ran a minute ahead would otherwise see every lease
expired, and one behind would hold an expired one.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from mailcase.models import MailboxLease
from mailcase.store import Store, as_utc, utcnow

LEASE_SECONDS = 60
RENEW_SECONDS = LEASE_SECONDS / 3  # a poll renews at least this often (mailcase.service)


def _pid_namespace() -> str:
    """This process's PID namespace (its inode), or "" where /proc does not say.

    Containers on one host may share a host name but not their process lists:
    a PID is only this host's to check within the same namespace.
    """
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return "".join(c for c in link if c.isdigit())


PID_NAMESPACE = _pid_namespace()


def instance_id() -> str:
    """This process's name in leases: host, pid, a random tag (pids are reused), pid namespace."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}:{PID_NAMESPACE}"


INSTANCE = instance_id()


def acquire(store: Store, mailbox: str, holder: str = INSTANCE) -> bool:
    """Take or renew the lease on ``mailbox`` for ``holder``; False if another instance holds it."""
    try:
        with store.transaction() as session:
            now = _now(session)
            query = select(MailboxLease).where(MailboxLease.mailbox == mailbox)
            lease = session.exec(query.with_for_update()).first()
            if lease is None:
                lease = MailboxLease(mailbox=mailbox, holder=holder, expires_at=now)
            elif (
                lease.holder != holder
                and (as_utc(lease.expires_at) or now) > now
                and _alive(lease.holder)
            ):
                return False
            lease.holder = holder
            lease.expires_at = now + timedelta(seconds=LEASE_SECONDS)
            session.add(lease)
    except IntegrityError:  # another instance inserted the first lease at the same moment
        return False
    return True


def _now(session: Session) -> datetime:
    """Now by the database's clock on PostgreSQL (shared by every host), else this host's."""
    if session.get_bind().dialect.name == "postgresql":
        value = as_utc(session.exec(select(sa.func.now())).one())
        if value is not None:
            return value
    return utcnow()


def _alive(holder: str) -> bool:
    """Whether ``holder`` may still be running: always, unless it is a dead process here.

    A holder on this host, in this PID namespace, whose process is gone
    (kill -9, then a restart) need not be waited for: its lease is free at
    once. Anywhere else (another host, another container with the same host
    name) its PID means nothing here.
    """
    host, pid, _tag, namespace, *_ = [*holder.split(":"), "", "", ""]
    if (
        host != socket.gethostname()
        or not pid.isdigit()
        or not namespace
        or namespace != PID_NAMESPACE
    ):
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
