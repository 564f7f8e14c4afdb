"""Files an erasure removes from the message store while mail with the same file is being
ingested: the file stays for the new mail, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import mail, offline_runtime
from sqlmodel import select

from mailcase import erasure, service
from mailcase.errors import MailboxError
from mailcase.imap import FetchedMessage
from mailcase.models import LedgerEntry, StoredAttachment
from mailcase.store import utcnow

pytestmark = pytest.mark.integration

CONTRACT = b"%PDF-1.4 contrato de servicio " + bytes(range(256)) * 40
CONTRACT_SHA = hashlib.sha256(CONTRACT).hexdigest()


def contract_mail() -> bytes:
    return mail(
        sender="Ana Ruiz <ana.ruiz@example.com>",
        subject="Mi contrato",
        attachments=[("contrato.pdf", "application/pdf", CONTRACT)],
    )


def erased_after_the_put(
    monkeypatch: pytest.MonkeyPatch, rt: service.Runtime, shas: set[str], *, broken: bool = False
) -> None:
    """Have an erasure remove the files ``shas`` between ingest's put and its transaction
    (in its parse); with ``broken`` the parse then fails (the message is quarantined)."""
    real = service._parse

    def erased_meanwhile(*args: Any) -> Any:
        parsed = real(*args)
        assert erasure._remove_files(rt.store, rt.blobs, shas) == []
        assert not any(rt.blobs.path(sha).exists() for sha in shas)
        if broken:
            raise ValueError("a parser bug")
        return parsed

    monkeypatch.setattr(service, "_parse", erased_meanwhile)


def test_a_removal_waits_for_the_ingest_that_takes_the_file(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reviewer's case: Ana's mail with the contract an erased customer also sent is
    # in its ingest transaction (the file was there already: put wrote nothing; its
    # attachment row written, not committed) when the erasure removes its files. Read
    # in a session of its own, the removal saw no row and unlinked the file; Ana's row
    # then referred to a missing file.
    rt = offline_runtime(tmp_path, db_url)
    rt.blobs.put(CONTRACT)  # the erased customer's copy, its rows gone
    reached, release = threading.Event(), threading.Event()
    real = service._write_ledger

    def paused(*args: Any, **kwargs: Any) -> Any:
        entry = real(*args, **kwargs)  # the attachment row and the ledger row flushed
        reached.set()
        assert release.wait(20)
        return entry

    monkeypatch.setattr(service, "_write_ledger", paused)
    dispositions: list[str] = []
    ingest = threading.Thread(
        target=lambda: dispositions.append(
            service.ingest_message(rt, "contacto", 1, FetchedMessage(1, contract_mail(), utcnow()))
        )
    )
    ingest.start()
    assert reached.wait(20)
    left: list[list[str]] = []
    removal = threading.Thread(
        target=lambda: left.append(erasure._remove_files(rt.store, rt.blobs, {CONTRACT_SHA}))
    )
    removal.start()
    removal.join(1.0)
    waited = removal.is_alive()  # for the ingest transaction's lock
    release.set()
    ingest.join(20)
    removal.join(20)

    assert dispositions == ["new_case"]
    assert left == [[]]
    with rt.store.read_session() as session:
        assert session.exec(select(StoredAttachment.sha256)).all() == [CONTRACT_SHA]
    assert rt.blobs.get(CONTRACT_SHA) == CONTRACT
    assert waited


def test_a_file_removed_between_its_put_and_the_transaction_is_written_again(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same mail sent again by a customer being erased: ingest stored it (a no-op,
    # the file was there), then the erasure removed it, then ingest's transaction began.
    rt = offline_runtime(tmp_path, db_url)
    raw = contract_mail()
    raw_sha = hashlib.sha256(raw).hexdigest()
    rt.blobs.put(CONTRACT)
    erased_after_the_put(monkeypatch, rt, {raw_sha, CONTRACT_SHA})
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, utcnow())) == "new_case"

    assert rt.blobs.get(raw_sha) == raw
    assert rt.blobs.get(CONTRACT_SHA) == CONTRACT
    with rt.store.read_session() as session:
        assert session.exec(select(LedgerEntry.raw_sha256)).all() == [raw_sha]


def test_a_quarantined_message_keeps_its_stored_copy(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quarantined, its ledger row refers to the stored copy a retry reads: removed between
    # the put and the quarantine's transaction, the retry found nothing to read.
    rt = offline_runtime(tmp_path, db_url)
    raw = contract_mail()
    erased_after_the_put(monkeypatch, rt, {hashlib.sha256(raw).hexdigest()}, broken=True)
    fetched = FetchedMessage(1, raw, utcnow())
    assert service.ingest_message(rt, "contacto", 1, fetched) == "quarantined"
    assert rt.blobs.get(hashlib.sha256(raw).hexdigest()) == raw


def test_a_large_message_removed_meanwhile_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Streamed to the store (over limits.max_message_bytes), its bytes are not held: the
    # poll fails and the next one fetches it again.
    rt = offline_runtime(tmp_path)
    raw = contract_mail()

    def fetched() -> FetchedMessage:
        spool = rt.blobs.spool_path()
        spool.write_bytes(raw)
        return FetchedMessage(1, raw[:1000], utcnow(), spooled=spool, size=len(raw))

    real = service._parse
    erased_after_the_put(monkeypatch, rt, {hashlib.sha256(raw).hexdigest()})
    with pytest.raises(MailboxError, match="read again by the next poll"):
        service.ingest_message(rt, "contacto", 1, fetched())
    with rt.store.read_session() as session:
        assert session.exec(select(LedgerEntry)).all() == []

    monkeypatch.setattr(service, "_parse", real)
    assert service.ingest_message(rt, "contacto", 1, fetched()) == "new_case"
    assert rt.blobs.get(hashlib.sha256(raw).hexdigest()) == raw
