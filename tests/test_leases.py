"""Mailbox leases: one poller per mailbox, handed over when the holder is gone."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

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
    dead = f"{HERE}:{gone.stdout.strip()}:x:{leases.PID_NAMESPACE}"
    assert leases.acquire(s, "contacto", dead)
    assert leases.acquire(s, "contacto", leases.INSTANCE)
    # A live process on this host keeps its lease.
    assert not leases.acquire(s, "contacto", f"{HERE}:1:init:{leases.PID_NAMESPACE}")


def test_a_pid_from_another_namespace_proves_nothing(tmp_path: Path) -> None:
    # Two containers with one host name: the other's PID is not in this process list.
    s = store(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = gone.stdout.strip()
    assert leases.PID_NAMESPACE  # Linux
    assert leases.acquire(s, "contacto", f"{HERE}:{pid}:x:1")
    assert not leases.acquire(s, "contacto", leases.INSTANCE)
    leases.release(s, "contacto", f"{HERE}:{pid}:x:1")
    # A holder written before the namespace was part of it: waited for as well.
    assert leases.acquire(s, "contacto", f"{HERE}:{pid}:x")
    assert not leases.acquire(s, "contacto", leases.INSTANCE)


def test_the_database_clock_decides_on_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Host B's clock runs 61 s ahead of host A's: by its own clock A's lease is over.
    s = Store.open(pg_url, auto_upgrade=False)
    try:
        assert leases.acquire(s, "contacto", "host-a:100:a:1")
        monkeypatch.setattr(leases, "utcnow", lambda: utcnow() + timedelta(seconds=61))
        assert not leases.acquire(s, "contacto", "host-b:200:b:1")
    finally:
        s.dispose()


def test_a_slow_poll_renews_its_lease_on_time(
    tmp_path: Path, mailboxes: Any, sink: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Renewed only every poll.batch_size messages, a lease ran out under slow messages
    # and a second instance polled the mailbox alongside.
    from helpers import Cli, mail, write_config

    for i in range(3):
        mailboxes.append("contacto", mail(subject=f"Falla {i}"))
    renewals: list[str] = []
    real = leases.acquire

    def counted(store: Store, mailbox: str, holder: str = leases.INSTANCE) -> bool:
        renewals.append(mailbox)
        return real(store, mailbox, holder)

    monkeypatch.setattr(leases, "acquire", counted)
    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.0)  # every message is "slow"
    Cli(write_config(tmp_path, mailboxes, sink), capsys).poll()
    # contacto: taken, then renewed after the login and SELECT, after the SEARCH, before
    # the FETCH and after each of its three messages; info: taken, then renewed after
    # the login and SELECT and after the SEARCH (nothing to fetch).
    assert renewals.count("contacto") == 7 and renewals.count("info") == 3


def test_a_slow_search_and_fetch_of_sizes_keep_the_lease(
    tmp_path: Path, mailboxes: Any, sink: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease was renewed only between ingested messages: a SEARCH and a FETCH of the
    # sizes (a large backlog) outlasted it, and another instance polled the same mailbox.
    from helpers import Cli, mail, write_config

    from mailcase.imap import ImapMailbox

    mailboxes.append("contacto", mail(subject="Falla"))
    monkeypatch.setattr(leases, "LEASE_SECONDS", 3)
    monkeypatch.setattr(leases, "RENEW_SECONDS", 1.0)
    search, sizes = ImapMailbox.uids_after, ImapMailbox.sizes
    taken: list[bool] = []

    def slow_search(box: ImapMailbox, last_uid: int) -> list[int]:
        if box.name == "contacto":
            time.sleep(2)
        return search(box, last_uid)

    def slow_sizes(box: ImapMailbox, uids: Any) -> dict[int, int]:
        time.sleep(2)
        # Another instance, 4 s after this poll took a 3 s lease:
        with Store.open(f"sqlite:///{tmp_path}/mailcase.db", auto_upgrade=False) as other:
            taken.append(leases.acquire(other, "contacto", "otro-host:2:b:1"))
        return sizes(box, uids)

    monkeypatch.setattr(ImapMailbox, "uids_after", slow_search)
    monkeypatch.setattr(ImapMailbox, "sizes", slow_sizes)
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    cli.poll()
    assert taken == [False]
    assert [r["disposition"] for r in cli.json("messages", "list")] == ["new_case"]


def test_a_lease_lost_before_the_first_fetch_ends_the_poll_there(
    tmp_path: Path, mailboxes: Any, sink: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import Cli, mail, write_config

    from mailcase.imap import ImapMailbox

    mailboxes.append("contacto", mail(subject="Falla"))
    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.0)
    search = ImapMailbox.uids_after

    def taken_meanwhile(box: ImapMailbox, last_uid: int) -> list[int]:
        if box.name == "contacto":  # another instance took it over (this one seemed dead)
            other = Store.open(f"sqlite:///{tmp_path}/mailcase.db", auto_upgrade=False)
            with other, other.transaction() as session:
                lease = session.get(MailboxLease, "contacto")
                assert lease is not None
                lease.holder = "otro-host:2:b:1"
                session.add(lease)
        return search(box, last_uid)

    monkeypatch.setattr(ImapMailbox, "uids_after", taken_meanwhile)
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    cli.poll()
    assert cli.json("messages", "list") == []  # the other instance reads it
    assert not sink.messages
