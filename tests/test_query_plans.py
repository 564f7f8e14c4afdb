"""The queries that run per message or per listing use an index, not a scan of the history.

Measured at 200,000 cases before migration 0007 (fifth review round): a bounce
naming only its subject and a refused notice scanned every case message; each
quarantined message read every notice ever sent to agents.notify (SQLite);
an agent's reply scanned for their last relayed message; `cases list` read and
sorted every case. SQLite plans are checked here (no statistics: its choice is
by the schema alone); the shapes are those of the code's statements.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailcase.store import Store

PLANS = {
    # notices.blocked(): per-address caps (quarantined, no_case, unverified_agent).
    "SELECT count(*) FROM notices WHERE status != 'suppressed' AND created_at >= ?"
    " AND rcpt_to = ? AND kind = ?": "ix_notices_rcpt_to_kind_created_at",
    # bounces._notices_named_in(): a bounce that names its case by the subject.
    "SELECT notices.id, case_messages.subject FROM notices JOIN case_messages"
    " ON case_messages.notice_id = notices.id WHERE case_messages.notice_id = ?": (
        "ix_case_messages_notice_id"
    ),
    # outbox._tell_agents(): were the agents told of this refusal already?
    "SELECT count(*) FROM case_messages WHERE notice_id = ? AND kind = 'system'": (
        "ix_case_messages_notice_id"
    ),
    # agentmail._without_signature_of(): the agent's last relayed message.
    "SELECT text FROM case_messages WHERE from_addr = ? AND kind = 'agent'"
    " AND direction = 'in' ORDER BY id DESC LIMIT 1": "ix_case_messages_from_addr_kind_id",
    # service._blocked_sender(): has the sender of mail that would open a case a case
    # marked spam? Asked of most new mail: the partial index holds the spam cases alone.
    "SELECT folio FROM cases WHERE customer = ? AND spam_at IS NOT NULL ORDER BY id LIMIT 1": (
        "ix_cases_spam_customer"
    ),
    # `cases list`, newest first.
    "SELECT id FROM cases ORDER BY created_at DESC, id DESC LIMIT 50": "ix_cases_created_at_id",
}


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plans") / "mailcase.db"
    Store.open(f"sqlite:///{path}", auto_upgrade=True).dispose()
    return path


@pytest.mark.parametrize(("query", "index"), PLANS.items())
def test_the_query_uses_its_index(database: Path, query: str, index: str) -> None:
    with sqlite3.connect(database) as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", [None] * query.count("?"))
        )
    assert f"INDEX {index}" in plan, plan
    assert "SCAN case_messages" not in plan and "SCAN notices" not in plan, plan
