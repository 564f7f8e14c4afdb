"""triage: one test per rule of the module docstring, in its order, on parsed mail."""

from __future__ import annotations

from mailcase.classify import Classification, MailKind, classify
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.models import Disposition
from mailcase.triage import CaseRef, Decision, Facts, triage

CONTACTO = "contacto@internet-plarey.com.mx"
NOTIFY = "soporte@internet-plarey.com.mx"
AGENT = "ana.tecnica@internet-plarey.com.mx"
OWN = frozenset({CONTACTO, NOTIFY})
AGENTS = frozenset({AGENT})
CUSTOMER = "juan.perez@example.com"

CASE = CaseRef(id=1, folio="PLR-2026-000001", customer=CUSTOMER, status="open")
OTHER = CaseRef(
    id=2,
    folio="PLR-2026-000002",
    customer="maria@example.com",
    status="open",
    participants=frozenset({"hermano.de.maria@example.com"}),
)


def inbound(
    sender: str = f"Juan Pérez <{CUSTOMER}>",
    subject: str = "Sin servicio de internet",
    headers: str = "",
) -> InboundMail:
    """A small message parsed the way the service parses it; ``sender=""`` leaves out From."""
    head = f"From: {sender}\n" if sender else ""
    raw = (
        f"{head}To: {CONTACTO}\nSubject: {subject}\nMessage-ID: <m1@example.com>\n"
        f"Date: Fri, 20 Nov 2026 10:30:00 -0600\n{headers}"
        "Content-Type: text/plain; charset=utf-8\n\nHola, no tengo internet.\n"
    )
    return parse_inbound(raw.encode("utf-8"))


NO_FACTS = Facts()


def decide(mail: InboundMail, facts: Facts = NO_FACTS) -> Decision:
    """Triage as the service does, except that classify is not told our own addresses.

    (The service passes them to classify too, which then calls such mail an
    auto-reply; leaving them out here reaches triage's own guard for them.)
    """
    return triage(mail, classify(mail), facts, own_addresses=OWN, agent_addresses=AGENTS)


def test_customer_mail_is_customer_mail() -> None:
    # The fixtures below rely on this: a plain message is the customer's.
    assert classify(inbound()).kind is MailKind.CUSTOMER


# Rule 1: a copy of a message already ingested is a duplicate of the first copy's case.


def test_duplicate_joins_the_first_copys_case_and_nothing_else_happens() -> None:
    facts = Facts(duplicate_of=CASE, is_duplicate=True, by_reference=OTHER, by_folio=(OTHER,))
    decision = decide(inbound(subject="Re: [Folio PLR-2026-000002]"), facts)
    assert decision.disposition is Disposition.DUPLICATE
    assert decision.case == CASE
    assert not decision.open_case
    assert not decision.acknowledge


def test_duplicate_wins_over_automatic_mail_and_over_a_missing_sender() -> None:
    facts = Facts(duplicate_of=None, is_duplicate=True)
    bounce = inbound(sender="MAILER-DAEMON@mx.example.net")
    assert decide(bounce, facts).disposition is Disposition.DUPLICATE
    nobody = decide(inbound(sender=""), facts)
    assert nobody.disposition is Disposition.DUPLICATE
    assert nobody.case is None
    assert not nobody.open_case


# Rule 2: automatic mail never opens a case nor gets a notice; recorded on a known case.


AUTOMATIC = [
    ("Auto-Submitted: auto-replied\n", Disposition.AUTO_REPLY),
    ("Precedence: bulk\n", Disposition.BULK),
    ("List-Id: <ofertas.example.com>\n", Disposition.BULK),
    ("X-Failed-Recipients: nadie@example.com\n", Disposition.BOUNCE),
]


def test_automatic_mail_never_opens_a_case_nor_acknowledges() -> None:
    for headers, disposition in AUTOMATIC:
        decision = decide(inbound(headers=headers))
        assert decision.disposition is disposition, headers
        assert decision.case is None
        assert not decision.open_case
        assert not decision.acknowledge


def test_automatic_mail_naming_a_case_is_recorded_there() -> None:
    for headers, disposition in AUTOMATIC:
        by_reference = decide(inbound(headers=headers), Facts(by_reference=CASE))
        by_folio = decide(inbound(headers=headers), Facts(by_folio=(CASE,)))
        for decision in (by_reference, by_folio):
            assert decision.disposition is disposition
            assert decision.case == CASE
            assert not decision.open_case
            assert not decision.acknowledge


def test_a_bounce_from_mailer_daemon_is_recorded_without_a_sender_check() -> None:
    decision = decide(inbound(sender="MAILER-DAEMON@mx.example.net"), Facts(by_reference=CASE))
    assert decision.disposition is Disposition.BOUNCE
    assert decision.case == CASE
    assert not decision.open_case
    assert not decision.acknowledge


# Rule 3: threading headers join the case, whoever sends.


def test_threading_reference_joins_the_case() -> None:
    decision = decide(inbound(headers="In-Reply-To: <mc.1@x>\n"), Facts(by_reference=CASE))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == CASE
    assert not decision.open_case
    assert not decision.acknowledge


def test_threading_reference_joins_even_from_another_sender() -> None:
    mail = inbound(sender="vecino@example.com")
    decision = decide(mail, Facts(by_reference=CASE))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == CASE


def test_threading_reference_wins_over_a_folio_in_the_subject() -> None:
    mail = inbound(subject="Re: [Folio PLR-2026-000002]")
    decision = decide(mail, Facts(by_reference=CASE, by_folio=(OTHER,)))
    assert decision.case == CASE


def test_a_folio_of_an_open_case_wins_over_headers_naming_a_closed_one() -> None:
    # The customer answers in the thread of an old, closed case, but writes the folio
    # of their open one in the subject: that one, not a third case.
    old = CaseRef(id=3, folio="PLR-2026-000003", customer=CUSTOMER, status="closed")
    mail = inbound(subject="Re: [Folio PLR-2026-000001] sigo sin internet")
    decision = decide(mail, Facts(by_reference=old, by_folio=(CASE,)))
    assert (decision.disposition, decision.case) == (Disposition.FOLLOW_UP, CASE)
    # Someone else's folio does not: the old thread's rule stands.
    decision = decide(mail, Facts(by_reference=old, by_folio=(OTHER,)))
    assert decision.open_case and decision.related == ("PLR-2026-000003",)


# Rule 4: a folio joins only for the customer (or an agent); others get their own case.


def test_folio_joins_for_the_customer() -> None:
    decision = decide(inbound(subject="Re: [Folio PLR-2026-000001]"), Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == CASE
    assert not decision.open_case
    assert not decision.acknowledge
    assert decision.related == ()


def test_folio_joins_for_a_participant_of_the_case() -> None:
    mail = inbound(sender="hermano.de.maria@example.com", subject="PLR-2026-000002")
    decision = decide(mail, Facts(by_folio=(OTHER,)))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == OTHER


def test_folio_joins_for_an_agent() -> None:
    mail = inbound(sender=f"Ana <{AGENT}>", subject="Re: [Folio PLR-2026-000001]")
    decision = decide(mail, Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == CASE
    assert not decision.acknowledge


def test_the_customer_joins_their_own_case_when_the_subject_names_another_first() -> None:
    mail = inbound(subject="PLR-2026-000002 y PLR-2026-000001")
    decision = decide(mail, Facts(by_folio=(OTHER, CASE)))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == CASE


def test_a_stranger_naming_a_folio_gets_a_new_case_linked_to_it_and_an_acknowledgement() -> None:
    mail = inbound(sender="desconocido@example.org", subject="Re: [Folio PLR-2026-000001]")
    decision = decide(mail, Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.NEW_CASE
    assert decision.open_case
    assert decision.acknowledge
    assert decision.case is None  # learns nothing of, and adds nothing to, the case named
    assert decision.related == ("PLR-2026-000001",)


def test_a_stranger_naming_several_folios_is_related_to_all_of_them() -> None:
    mail = inbound(sender="desconocido@example.org", subject="PLR-2026-000001 PLR-2026-000002")
    decision = decide(mail, Facts(by_folio=(CASE, OTHER)))
    assert decision.disposition is Disposition.NEW_CASE
    assert decision.related == ("PLR-2026-000001", "PLR-2026-000002")


# Rule 5: anything else from a person opens a case with an acknowledgement,
# except from our own or automatic addresses.


def test_a_new_message_opens_a_case_with_an_acknowledgement() -> None:
    decision = decide(inbound())
    assert decision.disposition is Disposition.NEW_CASE
    assert decision.open_case
    assert decision.acknowledge
    assert decision.case is None
    assert decision.related == ()


def test_our_own_address_opens_a_case_without_acknowledgement() -> None:
    for address in OWN:
        decision = decide(inbound(sender=address))
        assert decision.disposition is Disposition.NEW_CASE, address
        assert decision.open_case
        assert not decision.acknowledge


def test_a_noreply_address_opens_a_case_without_acknowledgement() -> None:
    for address in ("noreply@banco.example.com", "no-reply@cfe.example.mx", "bounce-12@x.com"):
        mail = inbound(sender=address)
        assert classify(mail).kind is MailKind.CUSTOMER  # nothing in the headers
        decision = decide(mail)
        assert decision.disposition is Disposition.NEW_CASE, address
        assert decision.open_case
        assert not decision.acknowledge


def test_mailer_daemon_is_never_answered_even_if_classify_missed_it() -> None:
    # classify calls MAILER-DAEMON mail a bounce (rule 2 then applies); triage's
    # own guard keeps it unanswered should a classification ever say "customer".
    mail = inbound(sender="MAILER-DAEMON@mx.example.net")
    assert decide(mail).disposition is Disposition.BOUNCE
    decision = triage(mail, Classification(MailKind.CUSTOMER, ""), NO_FACTS, own_addresses=OWN)
    assert decision.disposition is Disposition.NEW_CASE
    assert decision.open_case
    assert not decision.acknowledge


def test_a_stranger_from_our_own_address_naming_a_folio_is_related_and_not_answered() -> None:
    decision = decide(inbound(sender=CONTACTO, subject="PLR-2026-000001"), Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.NEW_CASE
    assert decision.related == ("PLR-2026-000001",)
    assert not decision.acknowledge
    # What admins read in `messages list`: why, and why nobody was answered.
    assert decision.reason == (
        "names folio of another sender: PLR-2026-000001; sender is not answered"
    )


# No sender at all: nobody to open a case for, nobody to answer.


def test_mail_without_a_sender_is_quarantined() -> None:
    for sender in ("", "undisclosed-recipients:;", "Juan Pérez"):
        mail = inbound(sender=sender)
        assert mail.sender == ""
        decision = decide(mail, Facts(by_folio=(CASE,)))
        assert decision.disposition is Disposition.QUARANTINED, sender
        assert decision.case is None
        assert not decision.open_case
        assert not decision.acknowledge


def test_web_form_mail_is_the_customers_and_joins_by_folio() -> None:
    raw = (
        "From: web@internet-plarey.com.mx\nReply-To: Juan <Juan.Perez@Example.com>\n"
        f"To: {CONTACTO}\nSubject: Formulario: PLR-2026-000001\n\nMensaje del formulario\n"
    )
    mail = parse_inbound(raw.encode(), web_form_senders=("web@internet-plarey.com.mx",))
    decision = decide(mail, Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.FOLLOW_UP
    assert decision.case == CASE
