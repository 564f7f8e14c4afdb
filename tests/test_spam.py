"""The spam filter's verdict (mailcase.spam) and what triage does with it (no I/O)."""

from __future__ import annotations

import pytest
from test_triage import AGENT, AGENTS, CASE, CUSTOMER, NO_FACTS, OWN, inbound

from mailcase.classify import classify
from mailcase.inbound import InboundMail
from mailcase.models import Disposition
from mailcase.spam import spam_verdict
from mailcase.triage import CaseRef, Decision, Facts, Role, triage

FLAG = "X-Spam-Flag: YES"


def decide(mail: InboundMail, facts: Facts = NO_FACTS) -> Decision:
    """Triage as the service does with the filter's verdict read from ``mail``."""
    return triage(
        mail,
        classify(mail),
        facts,
        own_addresses=OWN,
        agent_addresses=AGENTS,
        spam=spam_verdict(mail),
    )


@pytest.mark.parametrize(
    ("headers", "verdict"),
    [
        ("X-Spam-Flag: YES\n", "X-Spam-Flag: YES"),
        ("X-Spam-Flag: yes\n", "X-Spam-Flag: yes"),
        (
            "X-Spam-Status: Yes, score=7.3 required=5.0 tests=BAYES_99,\n"
            "\tHTML_MESSAGE autolearn=no version=3.4.6\n",
            "X-Spam-Status: Yes, score=7.3 required=5.0 tests=BAYES_99, HTML_MESSAGE aut",
        ),
        ("X-Spam-Status: Yes\n", "X-Spam-Status: Yes"),
        ("X-Spam: Yes\n", "X-Spam: Yes"),
        # The receiving server's verdict is the topmost: a lower one is the sender's side's.
        ("X-Spam-Flag: YES\nX-Spam-Flag: NO\n", "X-Spam-Flag: YES"),
    ],
)
def test_a_filters_verdict_of_spam_is_read(headers: str, verdict: str) -> None:
    assert spam_verdict(inbound(headers=headers)) == verdict


@pytest.mark.parametrize(
    "headers",
    [
        "",
        "X-Spam-Flag: NO\n",
        "X-Spam-Status: No, score=-2.9 tagged_above=-10 required=6.6\n",
        "X-Spam-Status: No\n",
        "X-Spam: undefined\n",  # seen in the corpus
        "X-Spam: No\n",
        "X-Spam-Flag:\n",
        "X-Spam-Level: *******\n",  # a score drawn in stars, no verdict
        "X-Spam-Score: 12.5\n",
        "X-Spam-Status: Yesterday\n",
        # Only the first occurrence: ours said no, the sender's side said yes.
        "X-Spam-Flag: NO\nX-Spam-Flag: YES\n",
        "X-Spam-Status: No, score=1.0\nX-Spam-Status: Yes, score=9.0\n",
        # The topmost of the three, whichever it is: SpamAssassin writes no X-Spam-Flag
        # on clean mail, and its "No" outranks a lower header of another name.
        "X-Spam-Status: No, score=-1.0\nX-Spam-Flag: YES\n",
        "X-Spam: No\nX-Spam-Status: Yes, score=9.0\n",
    ],
)
def test_anything_else_is_no_verdict(headers: str) -> None:
    assert spam_verdict(inbound(headers=headers)) == ""


def test_a_long_verdict_is_one_short_line() -> None:
    headers = "X-Spam-Status: Yes, score=99.0 tests=" + ",".join(["T"] * 500) + "\n"
    verdict = spam_verdict(inbound(headers=headers))
    assert verdict.startswith("X-Spam-Status: Yes, score=99.0") and len(verdict) < 80


def test_spam_that_would_open_a_case_is_set_aside() -> None:
    decision = decide(inbound(headers=f"{FLAG}\n"))
    assert decision.disposition is Disposition.SPAM
    assert not decision.open_case and not decision.acknowledge and decision.case is None
    assert decision.reason == FLAG


def test_without_a_verdict_the_same_mail_opens_a_case() -> None:
    decision = decide(inbound())
    assert decision.disposition is Disposition.NEW_CASE and decision.acknowledge


def test_spam_naming_someone_elses_folio_is_set_aside_and_says_what_it_named() -> None:
    mail = inbound(
        sender="Spammer <spam@example.net>",
        subject=f"Re: [Folio {CASE.folio}] oferta",
        headers=f"{FLAG}\n",
    )
    decision = decide(mail, Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.SPAM and decision.case is None
    assert decision.reason == f"{FLAG}; names folio of another sender: {CASE.folio}"


def test_spam_with_no_sender_address_is_set_aside_not_quarantined() -> None:
    # A quarantined message tells the agents; spam must not.
    decision = decide(inbound(sender="Oferta", headers=f"{FLAG}\n"))
    assert decision.disposition is Disposition.SPAM
    assert decision.reason == f"{FLAG}; no sender address"


def test_spam_forging_an_agents_address_tells_the_agent_nothing() -> None:
    decision = decide(inbound(sender=AGENT, headers=f"{FLAG}\n"))
    assert decision.disposition is Disposition.SPAM
    assert "without proof" in decision.reason


def test_spam_forging_an_agents_address_and_naming_a_folio_is_set_aside() -> None:
    # Folios are numbered in order: kept on the case, the real agent would be told.
    mail = inbound(sender=AGENT, subject=f"[Folio {CASE.folio}] factura", headers=f"{FLAG}\n")
    decision = decide(mail, Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.SPAM and decision.case is None
    assert decision.reason == f"{FLAG}; claims an agent's address without proof"


def test_an_unproven_agent_address_in_a_cases_thread_is_kept_on_it_despite_a_verdict() -> None:
    mail = inbound(sender=AGENT, headers=f"{FLAG}\n")
    decision = decide(mail, Facts(by_reference=CASE))
    assert decision.disposition is Disposition.FOLLOW_UP and decision.role is Role.UNVERIFIED


def test_a_customer_naming_their_own_folio_in_the_text_is_not_set_aside() -> None:
    # "mi reporte con folio …": about their case, and it may answer one that waits.
    decision = decide(inbound(headers=f"{FLAG}\n"), Facts(in_text=(CASE,)))
    assert decision.disposition is Disposition.NEW_CASE and decision.acknowledge
    assert decision.related == (CASE.folio,)
    assert decision.reason == (
        f"names folio {CASE.folio} in its text; {FLAG} set aside: it follows a case"
    )


def test_someone_else_naming_a_folio_in_the_text_is_set_aside() -> None:
    mail = inbound(sender="Spammer <spam@example.net>", headers=f"{FLAG}\n")
    assert decide(mail, Facts(in_text=(CASE,))).disposition is Disposition.SPAM


def test_a_customers_reply_to_their_case_is_never_lost_to_a_verdict() -> None:
    mail = inbound(subject=f"Re: [Folio {CASE.folio}] Sin servicio", headers=f"{FLAG}\n")
    decision = decide(mail, Facts(by_folio=(CASE,)))
    assert decision.disposition is Disposition.FOLLOW_UP and decision.case == CASE
    assert decision.reason == f"folio {CASE.folio}; {FLAG} set aside: it follows a case"


def test_mail_in_a_cases_thread_follows_it_whoever_sends_it() -> None:
    mail = inbound(sender="Hermana <hermana@example.org>", headers=f"{FLAG}\n")
    decision = decide(mail, Facts(by_reference=CASE))
    assert decision.disposition is Disposition.FOLLOW_UP and decision.case == CASE


def test_a_reply_on_a_case_closed_long_ago_opens_the_linked_case_despite_a_verdict() -> None:
    closed = CaseRef(id=3, folio="PLR-2026-000003", customer=CUSTOMER, status="closed")
    mail = inbound(subject=f"Re: [Folio {closed.folio}] Sin servicio", headers=f"{FLAG}\n")
    decision = decide(mail, Facts(by_folio=(closed,)))
    assert decision.disposition is Disposition.NEW_CASE and decision.acknowledge
    assert decision.related == (closed.folio,)
    assert FLAG in decision.reason and "set aside" in decision.reason


def test_an_agent_with_proof_is_an_agent_whatever_the_filter_said() -> None:
    mail = inbound(sender=AGENT, headers=f"{FLAG}\n")
    decision = decide(mail, Facts(signed_case=CASE))
    assert decision.disposition is Disposition.FOLLOW_UP and decision.role is Role.AGENT


def test_an_authenticated_agents_forward_opens_the_customers_case_despite_a_verdict() -> None:
    mail = inbound(sender=AGENT, headers=f"{FLAG}\nCc: {CUSTOMER}\n")
    decision = decide(mail, Facts(sender_authenticated=True))
    assert decision.disposition is Disposition.NEW_CASE and decision.customer == CUSTOMER
    assert decision.reason.endswith(f"{FLAG} set aside: the sender is an authenticated agent")


def test_automatic_mail_keeps_its_own_disposition() -> None:
    # A bounce or an out-of-office reply marked spam is still what it is: no case either way.
    mail = inbound(headers=f"{FLAG}\nAuto-Submitted: auto-replied\n")
    assert decide(mail).disposition is Disposition.AUTO_REPLY


def test_a_duplicate_of_spam_is_a_duplicate() -> None:
    decision = decide(inbound(headers=f"{FLAG}\n"), Facts(is_duplicate=True))
    assert decision.disposition is Disposition.DUPLICATE and decision.case is None
