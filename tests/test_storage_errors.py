"""A store that cannot be written fails the poll; it never quarantines good mail."""

from __future__ import annotations

import errno
import hashlib
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase import blobs
from mailcase.blobs import BlobStore
from mailcase.errors import StorageError


def test_a_store_that_cannot_be_written_raises_storage_error_naming_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = b"attachment bytes"
    digest = hashlib.sha256(data).hexdigest()
    # A real OSError, root or not: the fan-out directory's place is taken by a file.
    (store.directory / digest[:2]).write_bytes(b"")
    with pytest.raises(StorageError) as raised:
        store.put(data)
    assert str(raised.value).startswith(f"cannot write to the store {store.directory} ")
    assert "(storage.directory)" in str(raised.value)
    spooled = tmp_path / "big.eml"
    spooled.write_bytes(data)
    with pytest.raises(StorageError):
        store.put_file(spooled)


def test_a_full_store_fails_the_poll_and_the_next_poll_ingests_the_message(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.append(
        "contacto", mail(attachments=[("recibo.pdf", "application/pdf", b"%PDF-1.4 " * 1000)])
    )
    real_mkstemp = blobs.tempfile.mkstemp
    raw_written: list[str] = []

    def full_after_the_raw_message(*args: Any, **kwargs: Any) -> tuple[int, str]:
        # The raw message fits; its attachment does not (the reviewer's 300 KB tmpfs).
        if raw_written:
            raise OSError(errno.ENOSPC, "No space left on device")
        raw_written.append("raw")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(blobs.tempfile, "mkstemp", full_after_the_raw_message)
    code, _, err = cli("poll")
    assert code == 1
    [line] = [x for x in err.splitlines() if not x.startswith("{")]  # JSON lines are the log
    # The UID: the session's Dovecot numbers every message appended to the folder.
    assert re.match(r"mailcase: mailbox contacto: message \d+ not ingested, read again", line)
    assert line.endswith("(storage.directory): No space left on device")
    assert cli.json("messages", "list") == []  # not quarantined: nothing recorded
    assert cli.json("cases", "list") == []
    [contacto] = [b for b in cli.json("status")["mailboxes"] if b["mailbox"] == "contacto"]
    assert "No space left on device" in contacto["last_error"]

    monkeypatch.setattr(blobs.tempfile, "mkstemp", real_mkstemp)  # room again
    cli.poll()
    [entry] = cli.json("messages", "list")
    assert entry["disposition"] == "new_case"
    [case] = cli.json("cases", "list")
    assert [m.rcpt_tos for m in sink.messages] == [[case["customer"]]]


def test_a_disk_that_fills_while_a_large_message_streams_in_fails_the_poll(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailcase.imap import ImapMailbox

    config = write_config(tmp_path, mailboxes, sink, extra="[limits]\nmax_message_bytes = 10000\n")
    cli = Cli(config, capsys)
    mailboxes.append("contacto", mail(body="x" * 20000))  # streamed to a spool file

    def disk_full(self: ImapMailbox, uid: int, size: int, spool: Path) -> Any:
        spool.write_bytes(b"half a message")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ImapMailbox, "fetch_spooled", disk_full)
    code, _, err = cli("poll")
    assert code == 1 and "Traceback" not in err
    [line] = [x for x in err.splitlines() if not x.startswith("{")]
    assert line.endswith("(storage.directory): No space left on device")
    assert list((tmp_path / "store" / "spool").iterdir()) == []  # no half file left
    assert cli.json("messages", "list") == []


def test_messages_read_ahead_leave_no_spool_file_when_a_poll_stops(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A poll stopped (SIGTERM, a lost lease) after its first message had streamed the next
    # ones to the spool already: each was a customer's whole message, kept for good.
    from mailcase import service
    from mailcase.config import load_settings

    config = write_config(tmp_path, mailboxes, sink, extra="[limits]\nmax_message_bytes = 10000\n")
    mailboxes.append_many(
        "contacto", [mail(sender=f"c{i}@example.com", body="x" * 20000) for i in range(5)]
    )
    rt = service.Runtime.open(load_settings(config))
    real = service.ingest_message

    def stop_after_the_first(*args: Any, **kwargs: Any) -> str:
        rt.stop.set()  # as SIGTERM does: the message in hand is finished, then the poll ends
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "ingest_message", stop_after_the_first)
    # Read ahead, as a poll of a backlog does: the parser process gets a window of messages.
    monkeypatch.setattr(service, "worth_a_process", lambda backlog: True)
    try:
        report = service.poll_mailbox(rt, "contacto")
    finally:
        rt.store.dispose()
    assert report.fetched == 1
    assert list((tmp_path / "store" / "spool").iterdir()) == []


def test_old_spool_files_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import time

    store = BlobStore(tmp_path / "store")
    old, live = store.spool_path(), store.spool_path()
    hour_ago = time.time() - blobs.SPOOL_MAX_AGE - 60
    os.utime(old, (hour_ago, hour_ago))
    assert store.sweep_spool() == 1
    assert not old.exists() and live.exists()  # another process may be streaming into it


def test_an_empty_blob_left_by_a_power_cut_is_written_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    sha = store.put(b"mensaje completo")
    store.path(sha).write_bytes(b"")  # renamed into place, its data never flushed
    assert store.put(b"mensaje completo") == sha
    assert store.get(sha) == b"mensaje completo"
    spool = tmp_path / "grande"
    spool.write_bytes(b"otro mensaje")
    sha2 = store.put_file(spool)
    store.path(sha2).write_bytes(b"")
    spool.write_bytes(b"otro mensaje")
    assert store.put_file(spool) == sha2 and store.get(sha2) == b"otro mensaje"


def test_a_blob_write_killed_midway_leaves_nothing_the_sweep_misses(tmp_path: Path) -> None:
    # SIGKILL between the write and the rename: the customer's message was left
    # as ab/cd/.tmp-* in the store, where no sweep ever looked.
    child = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from mailcase import blobs\n"
        "blobs.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "blobs.BlobStore(Path(sys.argv[1])).put(b'Calle Reforma 12, sin servicio')\n"
    )
    store = tmp_path / "store"
    done = subprocess.run([sys.executable, "-c", child, str(store)], check=False)
    assert done.returncode == -signal.SIGKILL
    left = [p for p in store.rglob("*") if p.is_file()]
    assert left and all(p.parent == store / "spool" for p in left), left
    assert BlobStore(store).sweep_spool(older_than=0) == len(left)
    assert not [p for p in store.rglob("*") if p.is_file()]


def test_a_database_restored_readable_by_all_is_made_owner_only(tmp_path: Path) -> None:
    # `cp backup mailcase.db` under an admin's umask 022 left it 0644: every local
    # user could read every customer's mail and the key that proves agents.
    from mailcase.store import Store

    url = f"sqlite:///{tmp_path}/mailcase.db"
    Store.open(url, auto_upgrade=True).dispose()
    files = [tmp_path / "mailcase.db", tmp_path / "mailcase.db-sent"]
    files[1].write_bytes(b"")
    for file in files:
        file.chmod(0o644)
    Store.open(url, auto_upgrade=True).dispose()
    assert [oct(f.stat().st_mode & 0o777) for f in files] == ["0o600", "0o600"]
