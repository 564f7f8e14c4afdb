"""SQLite delivery reads notices fifty at a time, ahead of sending them: a slow SMTP
server must not let a notice suppressed meanwhile go out (mailcase.outbox)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers import mail, point_smtp_at_a_closed_port, run_process, write_config
from servers import Dovecot, SmtpSink
from sqlmodel import select

from mailcase import casework, outbox
from mailcase.config import load_settings
from mailcase.models import Notice
from mailcase.store import Store, case_by_folio

SPAMMER = "ofertas@spam.example"


@pytest.mark.integration
def test_a_notice_suppressed_while_a_slow_server_takes_another_is_not_sent(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "CHUNK_FRESH_SECONDS", 0.3)
    config = write_config(tmp_path, mailboxes, sink)
    point_smtp_at_a_closed_port(config, sink)  # both acknowledgements stay queued
    mailboxes.append("contacto", mail(sender="Juan <juan@example.com>"))
    mailboxes.append("contacto", mail(sender=f"Ofertas <{SPAMMER}>", subject="Gane dinero"))
    assert run_process(config, "poll").returncode == 0
    config = write_config(tmp_path, mailboxes, sink)
    assert run_process(config, "outbox", "retry", "--all").returncode == 0

    settings = load_settings(config)
    with Store.open(settings.database.url, auto_upgrade=False) as store:
        sink.hang(1.0)  # the first acknowledgement's DATA: both rows were read before it
        delivery = threading.Thread(target=outbox.deliver_outbox, args=(store, settings))
        delivery.start()
        try:
            sink.wait_for_hang()  # the first one is on the wire
            with store.transaction() as session:  # meanwhile an agent marks the spam
                case = case_by_folio(session, "PLR-2026-000002")
                assert case is not None and case.customer == SPAMMER
                assert casework.mark_spam(session, settings, case, by="agente@example.com")
        finally:
            delivery.join(timeout=30)
        with store.transaction() as session:
            statuses = {n.rcpt_to: n.status for n in session.exec(select(Notice))}

    assert [m.rcpt_tos for m in sink.messages] == [["juan@example.com"]]
    assert statuses == {"juan@example.com": "sent", SPAMMER: "suppressed"}
