"""The case procedure as customers and agents live it: the area that must answer hears
every follow-up, a resolution does not leave a visit booked, and the reopening window
the resolution promised holds."""

from __future__ import annotations

from helpers import NOTIFY, mail
from test_agents import Desk, desk, text

__all__ = ["desk"]  # the fixture, shared with test_agents

REDES = "redes@internet-plarey.com.mx"


def test_the_area_a_case_was_routed_to_hears_the_customers_follow_ups(desk: Desk) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#area redes\nRevisar nodo 4.")
    assert len(desk.to(REDES)) == 1
    desk.deliver(mail(subject=f"Re: [Folio {folio}] Sin servicio", body="Ahora tampoco hay TV."))
    update = desk.last_to(REDES)
    assert len(desk.to(REDES)) == 2 and folio in update["Subject"]
    assert "Ahora tampoco hay TV." in text(update)
    assert "Ahora tampoco hay TV." in text(desk.last_to(NOTIFY))  # the general list too


def test_a_thanks_and_a_close_keep_the_reopening_window_the_resolution_promised(
    desk: Desk,
) -> None:
    folio = desk.open_case()
    [notification] = desk.to(NOTIFY)
    desk.agent_reply(notification, "#resolver procedente\nSe cambió el módem dañado.")
    subject = f"Re: [Folio {folio}] Sin servicio"
    desk.deliver(mail(subject=subject, body="¡Muchas gracias!"))  # reopens the case
    assert desk.case(folio)["status"] == "open"
    desk.agent_reply(desk.last_to(NOTIFY), "#cerrar")
    assert desk.case(folio)["status"] == "closed"
    # Days later, within cases.reopen_days of the resolution: the same folio, reopened.
    desk.deliver(mail(subject=subject, body="Otra vez me quedé sin internet."))
    assert desk.case(folio)["status"] == "open"
    assert [c["folio"] for c in desk.cli.json("cases", "list")] == [folio]
