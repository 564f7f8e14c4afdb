"""Read the verdict of the receiving server's spam filter from a message's headers (no I/O).

mailcase does not judge spam itself: the mail server in front of the mailbox
does, and says so in a header it adds on top of the message. A spam mail that
opened a case would get an acknowledgement, and that acknowledgement goes to
an address the spammer forged: backscatter, which lands the company's own
mail server on block lists. So a verdict of spam stops a message from opening
a case or being answered (``triage``); it never drops mail that belongs to a
case (a customer's reply is recorded whatever a filter thought of it).

Only the topmost of these headers counts, whichever of them it is: the
receiving server adds its verdict above everything the message arrived with,
so a lower one is the sender's side's, a forwarder's, or forged (SpamAssassin
writes no ``X-Spam-Flag`` on clean mail, and its ``X-Spam-Status: No`` must
outrank a ``X-Spam-Flag: YES`` further down).

* ``X-Spam-Flag: YES`` (SpamAssassin, amavis);
* ``X-Spam-Status: Yes, score=…`` (SpamAssassin);
* ``X-Spam: Yes`` (Rspamd's ``milter_headers``, and amavis setups).

Anyone can write these headers on mail they send, but only to have their own
mail set aside; and a filter rewrites them when it runs (SpamAssassin removes
the ``X-Spam-*`` headers a message arrives with). Gmail and Microsoft 365
deliver spam to a junk folder, which mailcase does not read, and write no
such verdict on the inbox's mail.
"""

from __future__ import annotations

from mailcase.inbound import InboundMail

# Headers whose first word is "yes" when the filter judged the mail spam, by their
# lower-cased names (InboundMail.headers) and as they are shown.
_VERDICT_HEADERS = {name.lower(): name for name in ("X-Spam-Flag", "X-Spam-Status", "X-Spam")}

# A verdict quoted in the ledger's reason: one short line.
_SHOWN_CHARS = 60


def spam_verdict(mail: InboundMail) -> str:
    """The header that says ``mail`` is spam, as "X-Spam-Flag: YES", or "" when none does.

    Guarantees: never raises; only the topmost verdict header is read (the first
    of them in the message); a value whose first word is not "yes" (any capitals:
    "NO", "No, score=-1.0", "undefined") is no verdict of spam.
    """
    # InboundMail.headers keeps the message's order of first appearance (raw_items).
    name = next((n for n in mail.headers if n in _VERDICT_HEADERS), None)
    if name is None:
        return ""
    value = mail.header(name).strip()
    first = value.replace(",", " ").split(maxsplit=1)[0] if value else ""
    if first.casefold() != "yes":
        return ""
    shown = " ".join(value.split())[:_SHOWN_CHARS]
    return f"{_VERDICT_HEADERS[name]}: {shown}"
