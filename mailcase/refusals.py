"""A message refused "for now" poll after poll, remembered per mailbox until given up.

An IMAP server may refuse to return one message for now (RFC 5530 ``[UNAVAILABLE]``,
Yahoo's ``[TEMPFAIL]``), and the database may fail on one message for a cause that
is most often not the message's (a ``statement_timeout``, a lock). Either way the
poll stops at it and backs off: quarantined, a good message would wait for a person.
But a refusal that never clears held back every later message of the folder for
good. So the first refusal's time and the number of refusals are kept (in
``key_values``, one entry per mailbox, across polls and restarts), and a message
refused for :data:`GIVE_UP` and at least :data:`TIMES` polls is given up: the poll
quarantines it, with the agents told, and reads the mail after it
(``mailcase messages retry`` asks for it again).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from mailcase.models import KeyValue
from mailcase.store import Store, hashed_key, insert_if_absent, utcnow

# A day outlasts a server's busy spell or maintenance, and a DBA's lock.
GIVE_UP = timedelta(hours=24)
# And a day of polls, not a day without any: a daemon stopped over a weekend after one
# refusal must not give the message up at the next. At the longest back-off (15 min)
# a day of polls is about a hundred.
TIMES = 10


@dataclass(frozen=True)
class _Refusal:
    """One message refused for now poll after poll: since when, and how many times."""

    uidvalidity: int
    uid: int
    since: datetime
    times: int

    @classmethod
    def read(cls, value: str) -> _Refusal | None:
        """The refusal ``value`` (a key_values value) records, or None: not one of ours."""
        try:
            validity, uid, since, *rest = value.split(" ")
            # Written aware, in UTC; without a count by the first version of this rule.
            times = int(rest[0]) if rest else 1
            return cls(int(validity), int(uid), datetime.fromisoformat(since), times)
        except (ValueError, TypeError):
            return None

    def written(self) -> str:
        return f"{self.uidvalidity} {self.uid} {self.since.isoformat()} {self.times}"

    def given_up(self, now: datetime) -> bool:
        return now - self.since >= GIVE_UP and self.times >= TIMES


def _key(mailbox: str) -> str:
    return hashed_key("refused", mailbox)  # mailbox names run to 64 characters


def note(store: Store, mailbox: str, uid: int, uidvalidity: int) -> None:
    """Count a refusal of ``mailbox``'s message ``uid`` (folder ``uidvalidity``), keeping
    the time of the first while the same message is refused. Never raises: when the
    database cannot be written, the refusal goes uncounted (the caller logs it)."""
    try:
        with store.transaction() as session:
            known = session.get(KeyValue, _key(mailbox))
            refusal = _Refusal.read(known.value) if known is not None else None
            if refusal is not None and (refusal.uidvalidity, refusal.uid) == (uidvalidity, uid):
                refusal = replace(refusal, times=refusal.times + 1)
            else:
                refusal = _Refusal(uidvalidity, uid, utcnow(), 1)
            if known is None:
                insert_if_absent(session, KeyValue(key=_key(mailbox), value=refusal.written()))
            else:
                known.value = refusal.written()
                session.add(known)
    except SQLAlchemyError:
        pass


def given_up(store: Store, mailbox: str, uidvalidity: int) -> frozenset[int]:
    """The message of ``mailbox`` (folder ``uidvalidity``) refused for :data:`GIVE_UP` and
    at least :data:`TIMES` polls, if any; none when the database cannot say."""
    try:
        with store.read_session() as session:
            known = session.get(KeyValue, _key(mailbox))
    except SQLAlchemyError:
        return frozenset()
    refusal = _Refusal.read(known.value) if known is not None else None
    if refusal is None or refusal.uidvalidity != uidvalidity or not refusal.given_up(utcnow()):
        return frozenset()
    return frozenset({refusal.uid})


def forget(session: Session, mailbox: str) -> None:
    """Forget ``mailbox``'s refusal, in ``session``: a poll got past it."""
    known = session.get(KeyValue, _key(mailbox))
    if known is not None:
        session.delete(known)
