"""What the CLI prints: the public --json fields, the filters, the readable tables."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import Cli, cli_with_smtp_down, mail, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration


def _is_time(value: Any) -> bool:
    return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None


@pytest.fixture
def cli(tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str) -> Cli:
    cli = Cli(write_config(tmp_path, mailboxes, sink, db_url=db_url), capsys)
    mailboxes.append("contacto", mail(subject="Sin señal", body="No hay señal desde ayer."))
    mailboxes.append(
        "info",
        mail(
            sender="Ana Ruiz <ana.ruiz@example.com>",
            to="info@internet-plarey.com.mx",
            subject="Cobro duplicado",
            attachments=[("recibo.pdf", "application/pdf", b"%PDF-1.4 recibo")],
        ),
    )
    cli.poll()
    return cli


def test_json_fields_of_cases_and_messages(cli: Cli) -> None:
    cases = cli.json("cases", "list")
    assert len(cases) == 2
    for case in cases:
        assert {"folio", "status", "customer", "subject", "mailbox", "created_at"} <= case.keys()
        assert _is_time(case["created_at"])
    for entry in cli.json("messages", "list"):
        assert {"mailbox", "uid", "message_id", "disposition", "folio", "reason"} <= entry.keys()
        assert _is_time(entry["received_at"]) and entry["disposition"] == "new_case"
    billing = next(c for c in cases if c["customer"] == "ana.ruiz@example.com")
    detail = cli.json("cases", "show", billing["folio"])
    assert detail["outcome"] is None
    inbound, ack = detail["messages"]
    assert (inbound["direction"], ack["direction"]) == ("in", "out")
    for message in (inbound, ack):
        assert {
            "from",
            "to",
            "subject",
            "date",
            "message_id",
            "text",
            "attachments",
        } <= message.keys()
        assert _is_time(message["date"]) and message["message_id"].startswith("<")
    assert "ana.ruiz@example.com" in inbound["from"] and "info@" in inbound["to"]
    assert inbound["subject"] == "Cobro duplicado" and billing["folio"] in ack["subject"]
    [attachment] = inbound["attachments"]
    assert (
        attachment["filename"] == "recibo.pdf" and attachment["content_type"] == "application/pdf"
    )
    assert attachment["size"] == len(b"%PDF-1.4 recibo") and len(attachment["sha256"]) == 64


def test_cases_list_filters_by_status(cli: Cli) -> None:
    first, second = cli.json("cases", "list")
    code, _, err = cli(
        "cases", "resolve", first["folio"], "--outcome", "valid", "--cause", "Se cambió el módem."
    )
    assert code == 0, err
    assert [c["folio"] for c in cli.json("cases", "list", "--status", "resolved")] == [
        first["folio"]
    ]
    assert [c["folio"] for c in cli.json("cases", "list", "--status", "open")] == [second["folio"]]
    assert cli.json("cases", "list", "--status", "closed") == []


def test_cases_list_finds_a_customers_cases_and_the_newest_few(cli: Cli) -> None:
    newest, _ = cli.json("cases", "list")
    assert newest["customer"] == "ana.ruiz@example.com"
    # A caller spells their address as they like.
    found = cli.json("cases", "list", "--customer", " Ana.Ruiz@Example.COM ")
    assert [c["folio"] for c in found] == [newest["folio"]]
    assert cli.json("cases", "list", "--customer", "nadie@example.com") == []
    assert [c["folio"] for c in cli.json("cases", "list", "--limit", "1")] == [newest["folio"]]
    assert len(cli.json("cases", "list", "--limit", "5")) == 2


def test_messages_and_outbox_lists_keep_the_last_n_in_their_order(cli: Cli) -> None:
    for command in (("messages", "list"), ("outbox", "list")):
        everything = cli.json(*command)
        assert len(everything) == 2
        assert cli.json(*command, "--limit", "1") == everything[-1:]
        assert cli.json(*command, "--limit", "2") == everything


def test_a_bad_limit_is_a_usage_error(cli: Cli, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("cases", "list", "--limit", "0")
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "mailcase: argument --limit: '0' is not a whole number of at least 1"


def test_readable_tables(cli: Cli) -> None:
    code, out, _ = cli("cases", "list")
    assert code == 0
    header, *rows = out.splitlines()
    for column in ("FOLIO", "STATUS", "CUSTOMER", "SUBJECT"):
        assert column in header.upper()
    cases = cli.json("cases", "list")
    assert len([r for r in rows if "PLR-" in r]) == len(cases) == 2
    folio = cases[0]["folio"]
    code, out, _ = cli("cases", "show", folio)
    assert code == 0 and folio in out and cases[0]["subject"] in out and "open" in out
    assert not out.lstrip().startswith("{")  # a table, not JSON


def test_case_show_reads_as_text(cli: Cli, mailboxes: Dovecot) -> None:
    billing = next(c for c in cli.json("cases", "list") if c["customer"] == "ana.ruiz@example.com")
    folio = billing["folio"]
    # Within the 180 days a visit may be ahead.
    day = (datetime.now() + timedelta(days=20)).date()
    assert cli("cases", "visit", folio, "--date", str(day), "--time", "9:30")[0] == 0
    _, out, _ = cli("cases", "show", folio)
    assert f"\nvisit:       {day} 09:30\n" in out
    assert "\nrelated:     -\n" in out
    assert "\n   [attachment 1] recibo.pdf (application/pdf, 15 bytes)\n" in out
    # A reply to a closed case opens a new case linked to it.
    assert cli("cases", "close", folio)[0] == 0
    reply = mail(
        sender="Ana Ruiz <ana.ruiz@example.com>",
        to="info@internet-plarey.com.mx",
        subject=f"Re: [Folio {folio}] Cobro duplicado",
    )
    mailboxes.append("info", reply)
    cli.poll()
    newest = cli.json("cases", "list")[0]
    assert newest["folio"] != folio
    _, out, _ = cli("cases", "show", newest["folio"])
    assert f"\nrelated:     {folio}\n" in out


def test_tables_show_times_in_the_business_time_zone(cli: Cli) -> None:
    # --json keeps UTC for machines; people in Mexico read their own clock.
    mexico = ZoneInfo("America/Mexico_City")

    def local(iso: str) -> str:
        return datetime.fromisoformat(iso).astimezone(mexico).strftime("%Y-%m-%d %H:%M CST")

    cases = cli.json("cases", "list")
    assert datetime.fromisoformat(cases[0]["created_at"]).utcoffset() == timedelta(0)
    _, out, _ = cli("cases", "list")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    for case in cases:
        assert f"  {local(case['created_at'])}  " in rows[case["folio"]]
    detail = cli.json("cases", "show", cases[0]["folio"])
    _, out, _ = cli("cases", "show", cases[0]["folio"])
    assert f"created_at:  {local(detail['created_at'])}\n" in out
    inbound = detail["messages"][0]
    assert f"<- {local(inbound['date'])}  customer  " in out
    assert "+00:00" not in out
    _, out, _ = cli("status", "--offline")
    (contacto,) = [line for line in out.splitlines() if line.startswith("contacto ")]
    assert " CST " in contacto and "+00:00" not in out
    (entry, *_) = cli.json("messages", "list")
    _, out, _ = cli("messages", "list")
    assert out.splitlines()[0].split()[:3] == ["MAILBOX", "UID", "RECEIVED_AT"]
    assert f"  {local(entry['received_at'])}  " in out.splitlines()[1]


def test_templates_directory_overrides_the_shipped_acknowledgement(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    override = tmp_path / "mis-plantillas"
    (override / "es").mkdir(parents=True)
    (override / "es" / "acknowledgement.txt.j2").write_text(
        "Plantilla propia. Su folio es {{ folio }}.\n", encoding="utf-8"
    )
    config = write_config(tmp_path, mailboxes, sink)
    config.write_text(config.read_text() + f'\n[templates]\ndirectory = "{override}"\n')
    mailboxes.append("contacto", mail())
    Cli(config, capsys).poll()
    [ack] = sink.messages
    body = ack.message.get_body(("plain",))
    assert body is not None
    text = str(body.get_content())
    assert text.startswith("Plantilla propia. Su folio es PLR-")
    html = ack.message.get_body(("html",))
    assert html is not None  # the HTML part still comes from the shipped template


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["cases", "open", "--channel", "phone", "--mailbox", "ventas", "--subject", "x",
          "--text", "y"], 4, "no mailbox named ventas in the configuration"),
        (["cases", "open", "--channel", "phone", "--customer", "juan", "--subject", "x",
          "--text", "y"], 2, "--customer 'juan' is not a mail address"),
        (["cases", "note", "PLR-1999-000001", "--text", "x"], 4,
         "no case with folio PLR-1999-000001"),
        (["messages", "retry", "1", "--mailbox", "ventas"], 4,
         "no mailbox named ventas in the configuration"),
        (["messages", "retry", "{uid}", "--mailbox", "contacto"], 4,
         "message {uid} of mailbox contacto is new_case, not quarantined"),
        (["outbox", "retry", "99"], 4, "no notice with id 99"),
    ],
)  # fmt: skip
def test_a_refused_command_is_one_line_naming_what_failed(
    cli: Cli, args: list[str], code: int, message: str
) -> None:
    uid = str(next(r["uid"] for r in cli.json("messages", "list") if r["mailbox"] == "contacto"))
    before = cli.json("cases", "list"), cli.json("outbox", "list")
    got, out, err = cli(*(a.format(uid=uid) for a in args))
    assert got == code
    assert err.splitlines() == [f"mailcase: {message.format(uid=uid)}"]
    assert out == ""
    assert (cli.json("cases", "list"), cli.json("outbox", "list")) == before  # nothing done


def test_a_usage_error_exits_2_with_one_line(cli: Cli, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("cases", "frobnicate")
    assert exited.value.code == 2  # EXIT_CONFIG: restarting will not help
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("mailcase: argument ACTION: invalid choice: 'frobnicate' (choose from")


def test_outbox_retry_all_takes_failed_and_queued_notices(cli: Cli) -> None:
    assert cli("outbox", "retry", "--all")[1].strip() == "0 notice(s) queued for delivery"
    code, out, _ = cli("outbox", "list", "--status", "failed")
    assert (code, out.strip()) == (0, "(none)")


def test_outbox_table_shows_when_a_queued_notice_is_tried_again(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli = cli_with_smtp_down(tmp_path, mailboxes, sink, capsys)
    mailboxes.append("contacto", mail())
    cli.poll()  # the SMTP server refuses connections: the acknowledgement waits
    (notice,) = cli.json("outbox", "list")
    assert notice["status"] == "queued" and notice["next_attempt_at"]
    when = datetime.fromisoformat(notice["next_attempt_at"]).astimezone(
        ZoneInfo("America/Mexico_City")
    )
    _, out, _ = cli("outbox", "list")
    header, row = out.splitlines()
    assert "NEXT_ATTEMPT_AT" in header.split()
    assert f"  {when:%Y-%m-%d %H:%M} CST  " in row


def test_cases_list_finds_an_areas_cases(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    areas = '[areas.redes]\nnotify = "redes@internet-plarey.com.mx"\nname = "Redes"\n'
    cli = Cli(write_config(tmp_path, mailboxes, sink, extra=areas), capsys)
    mailboxes.append("contacto", mail(sender="uno@example.com", subject="Poste caído"))
    mailboxes.append("contacto", mail(sender="dos@example.com", subject="Factura"))
    cli.poll()
    pole = next(c for c in cli.json("cases", "list") if c["customer"] == "uno@example.com")
    assert pole["area"] is None
    assert cli("cases", "route", pole["folio"], "--area", "redes")[0] == 0
    routed = cli.json("cases", "list", "--area", "redes")
    assert [(c["folio"], c["area"]) for c in routed] == [(pole["folio"], "redes")]
    code, _, err = cli("cases", "list", "--area", "ventas")
    # Exit 2, a usage error: 4 is a folio or message that does not exist.
    assert code == 2
    assert err.strip() == "mailcase: no area named 'ventas' in the configuration (areas: redes)"
