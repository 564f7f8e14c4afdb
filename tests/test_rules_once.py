"""One rule for one question, whichever door a request comes through (sixth review round).

The command line and the mail path each had their own way to read an address, a
folio and an area name, and the two disagreed: a phone case opened for
``juan.perez@example.com.`` never found its customer's mail, a folio read out on the
phone was "no such case" on the command line, and an area's accented name routed
by mail but not by ``cases route``. An IDN domain was one customer by mail in one
spelling and another in the other.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from alembic import command
from helpers import AGENT, CONTACTO, Cli, mail, offline_runtime
from sqlmodel import select

from mailcase import service
from mailcase.imap import FetchedMessage
from mailcase.models import Case, Notice
from mailcase.store import Store, alembic_config

_uids = itertools.count(1)
AREAS = '[areas.soporte-tecnico]\nnotify = "redes@internet-plarey.com.mx"\nname = "Soporte"\n'


def _ingest(rt: Any, raw: bytes) -> str:
    return service.ingest_message(rt, "contacto", 1, FetchedMessage(next(_uids), raw, None))


def _cases(rt: Any) -> list[Case]:
    with rt.store.read_session() as session:
        return list(session.exec(select(Case).order_by(Case.id)).all())


def _one_case(directory: Path, *, notify: bool = False) -> tuple[Any, Case]:
    """An offline runtime with one case, opened by a customer's mail; both."""
    rt = offline_runtime(directory, notify=notify)
    _ingest(rt, mail())
    [case] = _cases(rt)
    return rt, case


def _open(cli: Cli, customer: str) -> tuple[int, str, str]:
    return cli(
        *("cases", "open", "--customer", customer, "--channel", "phone"),
        *("--subject", "Sin servicio", "--text", "Llamó: sin internet", "--json"),
    )


# --- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "writes_from"),
    [
        ("juan.perez@example.com.", "juan.perez@example.com"),  # pasted from a sentence's end
        ('"juan.perez"@example.com', "juan.perez@example.com"),
        ("Juan Pérez <Juan.Perez@Example.com>", "juan.perez@example.com"),
        ("juan@telefonía.mx", "juan@xn--telefona-i2a.mx"),  # an ASCII-only client's spelling
    ],
)
def test_a_phone_case_finds_its_customers_mail_however_the_address_was_typed(
    tmp_path: Path, capsys: Any, typed: str, writes_from: str
) -> None:
    rt = offline_runtime(tmp_path)
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    code, out, err = _open(cli, typed)
    assert code == 0, err
    folio = json.loads(out)["folio"]
    assert _cases(rt)[0].customer == writes_from
    reply = mail(sender=f"Juan <{writes_from}>", subject=f"Folio {folio}: sigo sin servicio")
    assert _ingest(rt, reply) == "follow_up"
    assert len(_cases(rt)) == 1
    assert cli.json("cases", "list", "--customer", typed)[0]["folio"] == folio


def test_a_customer_is_one_customer_in_either_spelling_of_an_idn_domain(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path)
    raw = (
        "From: Juan <juan@telefonía.mx>\r\nTo: contacto@internet-plarey.com.mx\r\n"
        "Subject: Sin servicio\r\nMessage-ID: <idn1@example.com>\r\n"
        "Date: Fri, 20 Nov 2026 10:30:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nSin internet desde ayer.\r\n"
    ).encode()  # RFC 6532: UTF-8 in the header as it is
    assert _ingest(rt, raw) == "new_case"
    [case] = _cases(rt)
    assert case.customer == "juan@xn--telefona-i2a.mx"
    again = mail(sender="Juan <juan@xn--telefona-i2a.mx>", subject=f"Folio {case.folio} fotos")
    assert _ingest(rt, again) == "follow_up"


def test_an_agent_address_in_the_config_is_spelt_as_mail_spells_it(tmp_path: Path) -> None:
    rt = offline_runtime(tmp_path)
    text = (tmp_path / "mailcase.toml").read_text()
    text = text.replace(f'addresses = ["{AGENT}"]', 'addresses = ["Tecnico@Telefonía.mx."]')
    (tmp_path / "mailcase.toml").write_text(text)
    from mailcase.config import load_settings
    from mailcase.inbound import canonical_address

    settings = load_settings(tmp_path / "mailcase.toml")
    assert settings.agents.addresses == ["tecnico@xn--telefona-i2a.mx"]
    assert canonical_address("tecnico@telefonía.mx.") in settings.agents.addresses
    rt.store.dispose()


@pytest.mark.parametrize("insider", [AGENT, CONTACTO])
def test_cases_open_refuses_an_agents_or_our_own_address_as_the_customer(
    tmp_path: Path, capsys: Any, insider: str
) -> None:
    # By mail an agent never becomes a customer (triage._opened_by_agent): the
    # acknowledgement would go to the help desk, and the case's mail read as an agent's.
    offline_runtime(tmp_path).store.dispose()
    code, _, err = _open(Cli(tmp_path / "mailcase.toml", capsys), insider.upper())
    assert code == 2
    assert err.strip() == (
        f"mailcase: --customer {insider} is an agent's or one of our own addresses, "
        "not a customer's"
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migration_rewrites_stored_idn_customers_in_ascii_form(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        postgres = request.getfixturevalue("postgres")
        name = f"idn_{tmp_path.name[-12:].replace('-', '_').lower()}"
        postgres.create_database(name)
        url = postgres.url(name)
    command.upgrade(alembic_config(url), "0007")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO cases (id, folio, mailbox, status, customer, customer_name, subject,"
                " channel, language, area, created_at, updated_at) VALUES"
                " (1, 'PLR-2026-000001', 'contacto', 'open', 'juan@telefonía.mx', '', 's',"
                " 'mail', 'es', '', '2026-11-20 10:00:00', '2026-11-20 10:00:00'),"
                " (2, 'PLR-2026-000002', 'contacto', 'open', 'ana@example.com', '', 's',"
                " 'mail', 'es', '', '2026-11-20 10:00:00', '2026-11-20 10:00:00')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO participants (case_id, address) VALUES"
                " (1, 'rosa@señal.mx'), (1, 'rosa@xn--seal-hqa.mx'), (2, 'luis@señal.mx')"
            )
        )
    engine.dispose()
    Store.open(url, auto_upgrade=True).dispose()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        customers = conn.execute(sa.text("SELECT customer FROM cases ORDER BY id")).scalars()
        assert list(customers) == ["juan@xn--telefona-i2a.mx", "ana@example.com"]
        participants = conn.execute(
            sa.text("SELECT case_id, address FROM participants ORDER BY case_id, address")
        ).all()
    engine.dispose()
    assert [tuple(p) for p in participants] == [
        (1, "rosa@xn--seal-hqa.mx"),
        (2, "luis@xn--seal-hqa.mx"),
    ]


# --- folios and areas on the command line ---------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["PLR-2026-1", "PLR 2026 000001", "plr-2026-000001.", "[Folio PLR-2026-000001]"]
)
def test_the_command_line_reads_a_folio_as_mail_does(
    tmp_path: Path, capsys: Any, spelling: str
) -> None:
    _rt, case = _one_case(tmp_path)
    folio = case.folio
    assert folio.endswith("-000001")
    spelling = spelling.replace("2026", folio.split("-")[1])
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    assert cli.json("cases", "show", spelling)["folio"] == folio
    code, _, err = cli("cases", "note", spelling, "--text", "Llamó otra vez")
    assert code == 0, err


@pytest.mark.parametrize("written", ["Soporte-Técnico", "SOPORTE-TECNICO", " soporte-tecnico "])
def test_the_command_line_reads_an_area_name_as_mail_does(
    tmp_path: Path, capsys: Any, written: str
) -> None:
    rt = offline_runtime(tmp_path)
    config = tmp_path / "mailcase.toml"
    config.write_text(config.read_text() + AREAS)
    rt = offline_runtime_again(tmp_path, rt)
    _ingest(rt, mail())
    [case] = _cases(rt)
    cli = Cli(config, capsys)
    code, _, err = cli("cases", "route", case.folio, "--area", written)
    assert code == 0, err
    [listed] = cli.json("cases", "list", "--area", written)
    assert listed["folio"] == case.folio and listed["area"] == "soporte-tecnico"
    with rt.store.read_session() as session:
        kinds = [n.kind for n in session.exec(select(Notice).order_by(Notice.id))]
    assert "agent_notification" in kinds


def offline_runtime_again(directory: Path, old: Any) -> Any:
    """A runtime on ``directory``'s config as it is now (after an edit)."""
    from mailcase.config import load_settings

    old.store.dispose()
    return service.Runtime.open(load_settings(directory / "mailcase.toml"))


# --- visits and closed cases: one rule for each question ------------------------------

MORNING = datetime(2026, 11, 20, 16, 0, tzinfo=UTC)  # 10:00 in Mexico City (UTC-6)


def _agent_reply(rt: Any, folio: str, body: str) -> bytes:
    with rt.store.read_session() as session:
        signed = session.exec(
            select(Notice.message_id).where(Notice.kind == "agent_notification")
        ).first()
    return mail(
        sender=f"Ana <{AGENT}>",
        subject=f"Re: [Folio {folio}] Sin servicio",
        body=body,
        headers={"In-Reply-To": str(signed)},
    )


def _kinds(rt: Any) -> list[str]:
    with rt.store.read_session() as session:
        return [n.kind for n in session.exec(select(Notice).order_by(Notice.id))]


def test_a_visit_booked_for_today_without_a_time_can_be_called_off(
    tmp_path: Path, capsys: Any
) -> None:
    # Booked at 10:00 as "hoy", it could not be cancelled at 10:01 ("no home visit
    # ahead"): scheduling took it for ahead until visiting hours end, cancelling never.
    rt, case = _one_case(tmp_path)
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    with (
        mock.patch("mailcase.casework.utcnow", return_value=MORNING),
        mock.patch("mailcase.cli_cases.utcnow", return_value=MORNING),  # the CLI's clock
    ):
        assert cli("cases", "visit", case.folio, "--date", "2026-11-20")[0] == 0
        code, _, err = cli("cases", "visit", case.folio, "--cancel")
    assert code == 0, err
    assert _kinds(rt)[-2:] == ["visit", "visit_cancelled"]
    assert _cases(rt)[0].visit_date is None


def test_a_resolution_keeps_todays_visit_without_a_time(tmp_path: Path, capsys: Any) -> None:
    # The technician may have come this morning: the customer is not told it is off.
    rt, case = _one_case(tmp_path)
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    with (
        mock.patch("mailcase.casework.utcnow", return_value=MORNING),
        mock.patch("mailcase.cli_cases.utcnow", return_value=MORNING),  # the CLI's clock
    ):
        assert cli("cases", "visit", case.folio, "--date", "2026-11-20")[0] == 0
        resolved = cli("cases", "resolve", case.folio, "--outcome", "valid", "--cause", "Módem.")
    assert resolved[0] == 0, resolved[2]
    assert "visit_cancelled" not in _kinds(rt)
    assert _cases(rt)[0].visit_date is not None


def test_a_visit_is_checked_and_booked_at_one_time(tmp_path: Path) -> None:
    # Checked at 09:59:59.9 and booked at 10:00:00.0, a 09:59 visit passed the check and
    # failed the booking inside the transaction: the agent's whole reply was quarantined.
    checked = datetime(2026, 11, 20, 15, 59, 59, 900000, tzinfo=UTC)
    later = datetime(2026, 11, 20, 16, 0, 0, tzinfo=UTC)
    rt, case = _one_case(tmp_path, notify=True)
    reply = _agent_reply(rt, case.folio, "#visita 2026-11-20 09:59\n\nPasamos enseguida.")
    with (
        mock.patch("mailcase.service.utcnow", return_value=checked),
        mock.patch("mailcase.agentmail.utcnow", return_value=checked),
        mock.patch("mailcase.casework.utcnow", return_value=later),
        mock.patch("mailcase.visits.utcnow", return_value=later),
    ):
        assert _ingest(rt, reply) == "follow_up"
    assert _cases(rt)[0].visit_time == "09:59"
    assert "visit" in _kinds(rt)


def _closed_case(directory: Path, *, resolved: bool) -> tuple[Any, Case]:
    """A runtime whose one case (a customer's report) is closed, after a resolution or
    not; the runtime and the case."""
    from mailcase import casework

    rt, case = _one_case(directory, notify=True)
    with rt.store.transaction() as session:
        stored = session.get(Case, case.id)
        assert stored is not None
        if resolved:
            casework.resolve(session, rt.settings, stored, "valid", "Se cambió el módem.", by="t")
        casework.close(session, rt.settings, stored, by="test")
    return rt, case


def test_an_agents_words_on_a_closed_case_are_held_with_the_agent_told(tmp_path: Path) -> None:
    # Relayed, the customer's answer to them opened a new case with a new folio (a
    # closed case takes no more mail), far from the agent's question.
    rt, case = _closed_case(tmp_path, resolved=False)
    reply = _agent_reply(rt, case.folio, "Don Juan, ¿sigue sin servicio? Responda este correo.")
    assert _ingest(rt, reply) == "follow_up"
    with rt.store.read_session() as session:
        notices = list(session.exec(select(Notice).order_by(Notice.id)))
    assert "relay" not in [n.kind for n in notices]
    [held] = [n for n in notices if n.kind == "not_relayed"]
    assert held.rcpt_to == AGENT
    body = message_from_bytes(held.raw, policy=default).get_body(("plain",))
    text = body.get_content() if body is not None else ""
    assert "está cerrado" in text and "#reabrir" in text


def test_an_agents_words_on_a_case_closed_after_its_resolution_still_go(tmp_path: Path) -> None:
    # Within cases.reopen_days of the resolution the customer's answer reopens the case.
    rt, case = _closed_case(tmp_path, resolved=True)
    reply = _agent_reply(rt, case.folio, "Don Juan, ¿todo bien con el módem nuevo?")
    assert _ingest(rt, reply) == "follow_up"
    assert "relay" in _kinds(rt)


def test_closing_a_closed_case_or_reopening_an_open_one_changes_nothing(
    tmp_path: Path, capsys: Any
) -> None:
    # Both "succeeded": the history read "case reopened, case closed, case closed" for
    # changes that never happened, and the second close moved the closing time.
    rt, case = _one_case(tmp_path)
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    assert cli("cases", "reopen", case.folio)[:2] == (0, f"{case.folio}: already open\n")
    assert cli("cases", "close", case.folio)[:2] == (0, f"{case.folio}: close done\n")
    closed_at = _cases(rt)[0].closed_at
    assert cli("cases", "close", case.folio)[:2] == (0, f"{case.folio}: already closed\n")
    assert _cases(rt)[0].closed_at == closed_at
    texts = [m["text"] for m in cli.json("cases", "show", case.folio)["messages"]]
    assert [t for t in texts if t.startswith("case ")] == ["case closed"]


# --- the session's own diff, reviewed -------------------------------------------------


def _runtime_with(directory: Path, extra: str, *, notify: bool = False) -> Any:
    """An offline runtime whose config has ``extra`` lines added (or put before
    ``[web_form]`` when they start with a key of ``[agents]``)."""
    offline_runtime(directory, notify=notify).store.dispose()
    config = directory / "mailcase.toml"
    text = config.read_text()
    if extra.startswith("trusted_authserv_ids"):
        text = text.replace("[web_form]", f"{extra}\n[web_form]")
    else:
        text += extra
    config.write_text(text)
    from mailcase.config import load_settings

    return service.Runtime.open(load_settings(config))


def test_a_customer_an_agent_forwarded_from_an_idn_domain_is_one_customer(
    tmp_path: Path,
) -> None:
    trusted = "mx.internet-plarey.com.mx"
    rt = _runtime_with(tmp_path, f'trusted_authserv_ids = ["{trusted}"]')
    proof = {
        "Authentication-Results": f"{trusted}; dkim=pass header.d=internet-plarey.com.mx;"
        f" spf=pass smtp.mailfrom={AGENT}"
    }
    body = (
        "Ábranle caso.\n\n---------- Forwarded message ---------\n"
        "De: Juan Pérez <juan@telefonía.mx>\nDate: lun, 16 nov 2026\nSubject: Sin servicio\n"
        "To: <contacto@internet-plarey.com.mx>\n\nSin internet desde el sábado.\n"
    )
    forward = mail(sender=f"Ana <{AGENT}>", subject="Fwd: Sin servicio", body=body, headers=proof)
    assert _ingest(rt, forward) == "new_case"
    [case] = _cases(rt)
    assert case.customer == "juan@xn--telefona-i2a.mx"
    reply = mail(sender="Juan <juan@xn--telefona-i2a.mx>", subject=f"Re: [Folio {case.folio}] x")
    assert _ingest(rt, reply) == "follow_up"


def test_participante_adds_beyond_the_cap_on_what_a_cc_adds(tmp_path: Path, capsys: Any) -> None:
    rt = offline_runtime(tmp_path)
    many = ", ".join(f"p{i}@example.org" for i in range(20))
    _ingest(rt, mail(headers={"Cc": many}))
    [case] = _cases(rt)
    for k in range(1, 5):
        more = ", ".join(f"p{k}-{i}@example.org" for i in range(20))
        _ingest(rt, mail(subject=f"Folio {case.folio} más", headers={"Cc": more}))
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    code, _, err = cli("cases", "participant", case.folio, "--add", "esposa@example.net")
    assert code == 0, err
    wife = mail(sender="Esposa <esposa@example.net>", subject=f"Folio {case.folio}: sigue igual")
    assert _ingest(rt, wife) == "follow_up"


def test_an_agents_words_on_a_resolved_case_go_whatever_the_reopen_window(
    tmp_path: Path,
) -> None:
    # Held, with the agent told the case was "cerrado": it was only resolved.
    from mailcase import casework

    rt = _runtime_with(tmp_path, "\n[cases]\nreopen_days = 0\n", notify=True)
    _ingest(rt, mail())
    [case] = _cases(rt)
    with rt.store.transaction() as session:
        stored = session.get(Case, case.id)
        assert stored is not None
        casework.resolve(session, rt.settings, stored, "valid", "Se cambió el módem.", by="t")
    reply = _agent_reply(rt, case.folio, "Don Juan, ¿ya le funciona el módem nuevo?")
    assert _ingest(rt, reply) == "follow_up"
    kinds = _kinds(rt)
    assert "relay" in kinds and "not_relayed" not in kinds


def test_a_remark_sent_back_to_a_side_notice_is_a_note_not_a_relay(tmp_path: Path) -> None:
    # "Ok, perdón. El cliente debe 3 meses, no darle servicio." answered to a command
    # error went to the customer: every notice to agents proves an agent, and a reply
    # without commands was relayed (agent notices review).
    rt, case = _one_case(tmp_path, notify=True)
    _ingest(rt, _agent_reply(rt, case.folio, "#ntoa\nEl cliente debe 3 meses."))
    with rt.store.read_session() as session:
        error = session.exec(select(Notice).where(Notice.kind == "command_error")).one()
    remark = mail(
        sender=f"Ana <{AGENT}>",
        subject=f"Re: [Folio {case.folio}] Sin servicio",
        body="Ok, perdón. El cliente debe 3 meses, no darle servicio.",
        headers={"In-Reply-To": error.message_id},
    )
    assert _ingest(rt, remark) == "follow_up"
    with rt.store.read_session() as session:
        notices = list(session.exec(select(Notice).order_by(Notice.id)))
    assert "relay" not in [n.kind for n in notices]
    held = notices[-1]
    assert (held.kind, held.rcpt_to) == ("not_relayed", AGENT)
    body = message_from_bytes(held.raw, policy=default).get_body(("plain",))
    assert body is not None and "nota interna" in body.get_content()
    # Commands in such a reply still run: the command error asks for them.
    fixed = mail(
        sender=f"Ana <{AGENT}>",
        subject=f"Re: [Folio {case.folio}] Sin servicio",
        body="#nota\nEl cliente debe 3 meses.",
        headers={"In-Reply-To": error.message_id},
    )
    assert _ingest(rt, fixed) == "follow_up"
    assert _kinds(rt)[-1] == "not_relayed"  # nothing new: a note is queued to nobody


def test_a_phone_cases_notification_does_not_promise_a_relay(tmp_path: Path, capsys: Any) -> None:
    # "Una respuesta sin comandos se envía al cliente tal cual", for a case with no address.
    rt = offline_runtime(tmp_path, notify=True)
    cli = Cli(tmp_path / "mailcase.toml", capsys)
    code, _, err = cli(
        *("cases", "open", "--channel", "phone"),
        *("--subject", "Sin servicio", "--text", "Llamó: sin internet"),
    )
    assert code == 0, err
    with rt.store.read_session() as session:
        [notice] = session.exec(select(Notice).where(Notice.kind == "agent_notification")).all()
    body = message_from_bytes(notice.raw, policy=default).get_body(("plain",))
    text = " ".join((body.get_content() if body is not None else "").split())
    assert "se envía al cliente tal cual" not in text
    assert "no se envía a nadie; al cliente hay que llamarlo" in text


def test_a_web_forms_customer_is_greeted_by_the_name_the_form_gives(tmp_path: Path) -> None:
    from helpers import WEB

    rt = offline_runtime(tmp_path, notify=True)
    form = mail(
        sender=f"Formulario web <{WEB}>", headers={"Reply-To": "Pedro Gómez <pedro@example.com>"}
    )
    assert _ingest(rt, form) == "new_case"
    [case] = _cases(rt)
    assert (case.customer, case.customer_name) == ("pedro@example.com", "Pedro Gómez")


def test_an_area_gets_the_customers_report_not_only_the_last_word(
    tmp_path: Path, capsys: Any
) -> None:
    # Routed after "Gracias, quedo atento.", the area got that line alone: not the
    # address, not the fault, not the photo (agent notices review).
    rt = offline_runtime(tmp_path, notify=True)
    config = tmp_path / "mailcase.toml"
    config.write_text(config.read_text() + AREAS)
    rt = offline_runtime_again(tmp_path, rt)
    report = mail(
        body="Sin internet. Calle 5 #12, col. Centro.",
        attachments=[("modem.jpg", "image/jpeg", b"\xff\xd8foto")],
    )
    _ingest(rt, report)
    [case] = _cases(rt)
    _ingest(
        rt, mail(subject=f"Re: [Folio {case.folio}] Sin servicio", body="Gracias, quedo atento.")
    )
    cli = Cli(config, capsys)
    assert cli("cases", "route", case.folio, "--area", "soporte-tecnico")[0] == 0
    with rt.store.read_session() as session:
        routed = session.exec(
            select(Notice).where(Notice.rcpt_to == "redes@internet-plarey.com.mx")
        ).one()
    message = message_from_bytes(routed.raw, policy=default)
    body = message.get_body(("plain",))
    text = body.get_content() if body is not None else ""
    assert "Calle 5 #12, col. Centro." in text and "Gracias, quedo atento." in text
    assert text.index("Calle 5") < text.index("Gracias")
    assert [part.get_filename() for part in message.iter_attachments()] == ["modem.jpg"]


def test_the_area_hears_of_visits_and_the_resolution_of_a_case_routed_to_it(
    tmp_path: Path, capsys: Any
) -> None:
    # Customer service booked the visit and resolved the case (which cancelled it): the
    # area that sends the technician got no mail of either (agent notices review).
    rt = offline_runtime(tmp_path, notify=True)
    config = tmp_path / "mailcase.toml"
    config.write_text(config.read_text() + AREAS)
    rt = offline_runtime_again(tmp_path, rt)
    _ingest(rt, mail())
    [case] = _cases(rt)
    cli = Cli(config, capsys)
    assert cli("cases", "route", case.folio, "--area", "soporte-tecnico")[0] == 0
    day = (datetime.now(UTC) + timedelta(days=10)).date()
    assert cli("cases", "visit", case.folio, "--date", str(day), "--time", "10:00")[0] == 0
    code, _, err = cli("cases", "resolve", case.folio, "--outcome", "valid", "--cause", "Módem.")
    assert code == 0, err

    def area_texts() -> list[str]:
        with rt.store.read_session() as session:
            notices = session.exec(
                select(Notice)
                .where(Notice.rcpt_to == "redes@internet-plarey.com.mx")
                .order_by(Notice.id)
            ).all()
        texts = []
        for notice in notices:
            body = message_from_bytes(notice.raw, policy=default).get_body(("plain",))
            texts.append(body.get_content() if body is not None else "")
        return texts

    routed, visit, resolved = area_texts()
    assert routed.startswith(f"El caso {case.folio} se turnó")
    assert visit.startswith(f"Se programó una visita técnica para el caso {case.folio}")
    assert "a las 10:00" in visit and "Mensaje del cliente" not in visit
    assert resolved.startswith(f"Se resolvió el caso {case.folio}")
    assert "Procedente: Módem." in resolved and "Visita cancelada:" in resolved
