"""Two `mailcase run` instances on one PostgreSQL and one Dovecot; one is killed midway.

Every message must be ingested exactly once and every acknowledgement sent:
the survivor takes over the dead instance's mailboxes (its leases) and its
queued notices (claimed with FOR UPDATE SKIP LOCKED).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import INFO, Cli, DaemonProcess, mail, write_config
from servers import Dovecot, Postgres, SmtpSink

pytestmark = pytest.mark.integration

MESSAGES = 160


def test_two_daemons_share_the_work_and_survive_a_kill(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, postgres: Postgres, capsys: Any
) -> None:
    postgres.create_database("two_daemons")
    try:
        config = write_config(tmp_path, mailboxes, sink, db_url=postgres.url("two_daemons"))
        cli = Cli(config, capsys)
        assert cli("db", "upgrade")[0] == 0  # PostgreSQL is upgraded by the admin
        half = MESSAGES // 2
        mailboxes.append_many(
            "contacto", [mail(sender=f"c{i}@example.com", subject=f"C{i}") for i in range(half)]
        )
        mailboxes.append_many(
            "info",
            [mail(sender=f"i{i}@example.com", to=INFO, subject=f"I{i}") for i in range(half)],
        )
        with (
            DaemonProcess(config, tmp_path / "a.log") as first,
            DaemonProcess(config, tmp_path / "b.log") as second,
        ):  # both started by the with statement
            sink.wait_for(MESSAGES // 4, timeout=60)
            first.kill()  # midway, with no clean-up of any kind
            # Wait on the outbox, not the sink: a notice the sink accepted just before
            # the kill was never marked (its transaction rolled back with the dead
            # connection), so the survivor must still send it once more.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all_sent(cli):
                time.sleep(0.5)
            assert second.running
            assert second.stop() == 0
        ledger = cli.json("messages", "list")
        keys = [(r["mailbox"], r["uidvalidity"], r["uid"]) for r in ledger]
        assert len(keys) == MESSAGES and len(set(keys)) == MESSAGES
        cases = cli.json("cases", "list")
        assert len(cases) == MESSAGES
        assert len({c["folio"] for c in cases}) == MESSAGES
        answered = Counter(m.rcpt_tos[0] for m in sink.messages)
        assert set(answered) == {c["customer"] for c in cases}
        # Only a notice whose SMTP transaction was cut by the kill may go out twice.
        assert sum(answered.values()) - MESSAGES <= 1, answered.most_common(3)
        statuses = Counter(n["status"] for n in cli.json("outbox", "list"))
        assert statuses == {"sent": MESSAGES}
    finally:
        postgres.drop_database("two_daemons")


def all_sent(cli: Cli) -> bool:
    """Every message has its notice and all of them are marked sent."""
    statuses = Counter(n["status"] for n in cli.json("outbox", "list"))
    return statuses == {"sent": MESSAGES}
