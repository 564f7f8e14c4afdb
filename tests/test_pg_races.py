"""Changes to one case from two places at once, on PostgreSQL: none is overwritten."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import mail, offline_runtime
from sqlmodel import select

from mailcase import casework, service, waits
from mailcase.casework import CaseworkError
from mailcase.imap import FetchedMessage
from mailcase.models import Case
from mailcase.store import case_by_folio, utcnow

pytestmark = pytest.mark.integration


def runtime(tmp_path: Path, pg_url: str) -> service.Runtime:
    # No server is contacted: ingest_message and casework work on the database only.
    return offline_runtime(tmp_path, pg_url)  # type: ignore[no-any-return]


def open_case(rt: service.Runtime) -> str:
    raw = mail(sender="cliente@example.com", subject="Sin internet")
    assert service.ingest_message(rt, "contacto", 1, FetchedMessage(1, raw, utcnow())) == "new_case"
    with rt.store.transaction() as session:
        return session.exec(select(Case.folio)).one()


def pause_in(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str
) -> tuple[threading.Event, threading.Event]:
    """Make ``<module>.<name>`` wait, inside its transaction, until released."""
    reached, release = threading.Event(), threading.Event()
    real = getattr(module, name)

    def paused(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        assert release.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, paused)
    return reached, release


def test_the_closing_job_does_not_overwrite_a_reply_that_reopens(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime(tmp_path, pg_url)
    folio = open_case(rt)
    with rt.store.transaction() as session:
        case = session.exec(select(Case)).one()
        casework.resolve(session, rt.settings, case, "valid", "Se cambió el módem.", by="cli:x")
        case.resolved_at = utcnow() - timedelta(days=8)  # due for cases.close_after_days (7)
    # The closing job's own call of casework.close (mailcase.waits.close_stale_cases).
    reached, release = pause_in(monkeypatch, waits, "close")
    job = threading.Thread(target=service.close_stale_cases, args=(rt,))
    job.start()
    assert reached.wait(20)  # the job has selected the case and is about to close it
    reply = mail(sender="cliente@example.com", subject=f"Re: [Folio {folio}] Sin internet")
    dispositions: list[str] = []
    ingest = threading.Thread(
        target=lambda: dispositions.append(
            service.ingest_message(rt, "contacto", 1, FetchedMessage(2, reply, utcnow()))
        )
    )
    ingest.start()
    ingest.join(1.0)
    waited = ingest.is_alive()  # for the job's lock on the case
    release.set()
    job.join(20)
    ingest.join(20)
    assert waited
    assert dispositions == ["follow_up"]
    with rt.store.transaction() as session:
        case = session.exec(select(Case)).one()
        assert case.status == "open"  # reopened after the closing, not lost under it
    rt.store.dispose()


def test_a_resolution_waits_for_a_closing_and_is_then_refused(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime(tmp_path, pg_url)
    folio = open_case(rt)
    reached, release = pause_in(monkeypatch, casework, "close")

    def close_it() -> None:
        with rt.store.transaction() as session:
            found = case_by_folio(session, folio, for_update=True)
            assert found is not None
            casework.close(session, rt.settings, found, by="cli:ana")

    closing = threading.Thread(target=close_it)
    closing.start()
    assert reached.wait(20)
    refused: list[Exception] = []

    def resolve_it() -> None:
        try:
            with rt.store.transaction() as session:
                found = case_by_folio(session, folio, for_update=True)
                assert found is not None
                casework.resolve(session, rt.settings, found, "valid", "Listo.", by="cli:beto")
        except CaseworkError as exc:
            refused.append(exc)

    resolving = threading.Thread(target=resolve_it)
    resolving.start()
    resolving.join(1.0)
    waited = resolving.is_alive()  # reads the case only once the closing is committed
    release.set()
    closing.join(20)
    resolving.join(20)
    assert waited
    assert [str(e) for e in refused] == [
        f"case {folio} is closed: reopen it first (mailcase cases reopen {folio})"
    ]
    with rt.store.transaction() as session:
        assert session.exec(select(Case.status)).one() == "closed"
    rt.store.dispose()


def test_a_failure_is_not_recorded_over_a_notice_another_instance_sent(
    tmp_path: Path, pg_url: str
) -> None:
    # Instance B's attempt failed; meanwhile instance A claimed the notice and sent it.
    from mailcase.errors import PermanentDeliveryError
    from mailcase.models import Notice
    from mailcase.outbox import DeliveryReport, _record_failure

    rt = runtime(tmp_path, pg_url)
    open_case(rt)
    with rt.store.transaction() as session:
        notice = session.exec(select(Notice)).one()
        notice.status, notice.sent_at = "sent", utcnow()
        notice_id = notice.id
    assert notice_id is not None
    report = DeliveryReport()
    _record_failure(
        rt.store, rt.settings, notice_id, PermanentDeliveryError("550 5.1.1 user unknown"),
        permanent=True, report=report, now=utcnow(),
    )  # fmt: skip
    with rt.store.transaction() as session:
        notice = session.exec(select(Notice)).one()
        assert (notice.status, notice.attempts, notice.last_error) == ("sent", 0, "")
    assert report.failed == 0
    rt.store.dispose()
