"""First contact with a mailbox full of old mail: all ingested, only recent mail answered."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import NOTIFY, Cli, mail, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


def test_only_mail_that_arrived_recently_is_answered(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    now = datetime.now(UTC)
    for days in (900, 400, 10, 4):  # years-old mail, and mail just past the 72 h window
        mailboxes.append(
            "contacto",
            mail(sender=f"viejo{days}@example.com", subject=f"Reporte de hace {days} días"),
            internal_date=now - timedelta(days=days),
        )
    mailboxes.append(
        "contacto", mail(sender="nuevo@example.com"), internal_date=now - timedelta(hours=2)
    )
    cli.poll()
    cases = cli.json("cases", "list")
    assert len(cases) == 5  # everything is ingested
    rcpts = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert rcpts == sorted(["nuevo@example.com", NOTIFY])  # one ack, one agent notice
    old = next(c for c in cases if c["customer"] == "viejo900@example.com")
    texts = [m["text"] for m in cli.json("cases", "show", old["folio"])["messages"]]
    assert any("max_age_hours" in t for t in texts)
    ledger = cli.json("messages", "list")
    assert sum("max_age_hours" in r["reason"] for r in ledger) == 4


def test_window_is_configurable(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAILCASE_NOTICES__MAX_AGE_HOURS", "1000")
    cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
    mailboxes.append("contacto", mail(), internal_date=datetime.now(UTC) - timedelta(days=10))
    cli.poll()
    assert [m.rcpt_tos for m in sink.messages] == [["juan.perez@example.com"]]


def test_an_old_thread_is_kept_whole_and_tells_nobody(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    # A reply in the old backlog joins its case quietly: no acknowledgement, no agent notice.
    cli = Cli(write_config(tmp_path, mailboxes, sink, notify=True), capsys)
    long_ago = datetime.now(UTC) - timedelta(days=300)
    first = mail(subject="Sin servicio", message_id="<viejo-1@example.com>")
    reply = mail(
        subject="Re: Sin servicio",
        headers={"In-Reply-To": "<viejo-1@example.com>"},
        body="Sigue sin funcionar el módem.",
    )
    mailboxes.append("contacto", first, internal_date=long_ago)
    mailboxes.append("contacto", reply, internal_date=long_ago + timedelta(hours=5))
    cli.poll()
    [case] = cli.json("cases", "list")
    assert [r["disposition"] for r in cli.json("messages", "list")] == ["new_case", "follow_up"]
    assert sink.messages == []
    messages = cli.json("cases", "show", case["folio"])["messages"]
    follow_up = next(m for m in messages if "módem" in (m["text"] or ""))
    assert (follow_up["direction"], follow_up["kind"]) == ("in", "customer")
    assert sum("max_age_hours" in (m["text"] or "") for m in messages) == 2


def test_arrival_times_are_right_whatever_the_hosts_time_zone(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server in Mexico runs with TZ=America/Mexico_City. imapclient hands INTERNALDATE
    # over in the host's local time without a zone unless told not to: read as UTC, every
    # arrival was six hours early, and mail 67 hours old counted as past the 72-hour window.
    monkeypatch.setenv("TZ", "America/Mexico_City")
    time.tzset()
    try:
        cli = Cli(write_config(tmp_path, mailboxes, sink), capsys)
        arrived = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=67)
        mailboxes.append("contacto", mail(), internal_date=arrived)
        cli.poll()
        [row] = cli.json("messages", "list")
        assert datetime.fromisoformat(row["received_at"]) == arrived
        assert "max_age_hours" not in row["reason"]
        assert [m.rcpt_tos for m in sink.messages] == [["juan.perez@example.com"]]
    finally:
        monkeypatch.undo()
        time.tzset()
