"""Mailbox leases: one poller per mailbox, handed over when the holder is gone."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from mailcase import leases
from mailcase.models import MailboxLease
from mailcase.store import Store, utcnow

HERE = socket.gethostname()


def store(tmp_path: Path) -> Store:
    return Store.open(f"sqlite:///{tmp_path}/leases.db", auto_upgrade=True)


def test_one_holder_at_a_time_until_released(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert leases.acquire(s, "contacto", "otro-host:1:a")
    assert not leases.acquire(s, "contacto", "otro-host:2:b")
    assert leases.acquire(s, "contacto", "otro-host:1:a")  # renewing is fine
    assert leases.acquire(s, "info", "otro-host:2:b")  # other mailboxes are independent
    leases.release(s, "contacto", "otro-host:2:b")  # not the holder: no effect
    assert not leases.acquire(s, "contacto", "otro-host:2:b")
    leases.release(s, "contacto", "otro-host:1:a")
    assert leases.acquire(s, "contacto", "otro-host:2:b")


def test_expired_lease_passes_to_another_instance(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert leases.acquire(s, "contacto", "otro-host:1:a")
    with s.transaction() as session:
        lease = session.get(MailboxLease, "contacto")
        assert lease is not None
        lease.expires_at = utcnow() - timedelta(seconds=1)
        session.add(lease)
    assert leases.acquire(s, "contacto", "otro-host:2:b")


def test_lease_of_a_dead_process_on_this_host_is_free_at_once(tmp_path: Path) -> None:
    s = store(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert leases.acquire(s, "contacto", f"{HERE}:{gone.stdout.strip()}:x")
    assert leases.acquire(s, "contacto", leases.INSTANCE)
    # A live process on this host keeps its lease.
    assert not leases.acquire(s, "contacto", f"{HERE}:1:init")
