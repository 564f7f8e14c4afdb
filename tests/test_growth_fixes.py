"""Fifth review round, a long history: listings bounded, no rendered messages loaded to
list them, and `outbox retry --all` not resending years of failures.

Each test failed before its fix (at 200,000 cases `outbox list` took 37 s and 1.7 GB).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import Cli, mail, offline_runtime
from sqlalchemy import event
from sqlalchemy.engine import Engine

from mailcase import service
from mailcase.cli_common import DEFAULT_LIMIT
from mailcase.imap import FetchedMessage
from mailcase.models import Notice


@pytest.fixture
def cli(tmp_path: Path, capsys: Any) -> Iterator[Cli]:
    rt = offline_runtime(tmp_path)
    now = datetime.now(UTC)
    for uid in range(1, DEFAULT_LIMIT + 6):
        raw = mail(sender=f"cliente{uid}@example.com", message_id=f"<m{uid}@example.com>")
        assert (
            service.ingest_message(rt, "contacto", 1, FetchedMessage(uid, raw, now)) == "new_case"
        )
    rt.store.dispose()
    yield Cli(tmp_path / "mailcase.toml", capsys)


@pytest.fixture
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


@pytest.mark.parametrize(("command", "rows"), [("cases", "cases"), ("messages", "messages")])
def test_a_listing_shows_the_newest_hundred_unless_told(cli: Cli, command: str, rows: str) -> None:
    total = DEFAULT_LIMIT + 5
    code, out, err = cli(command, "list", "--json")
    assert code == 0 and len(json.loads(out)) == DEFAULT_LIMIT
    assert f"showing the {DEFAULT_LIMIT} newest {rows}; --limit N or --all for more" in err
    assert len(cli.json(command, "list", "--all")) == total
    assert len(cli.json(command, "list", "--limit", "3")) == 3
    with pytest.raises(SystemExit) as usage:  # argparse: one or the other
        cli(command, "list", "--limit", "3", "--all")
    assert usage.value.code == 2


def test_listing_notices_reads_no_rendered_message(cli: Cli, statements: list[str]) -> None:
    assert len(cli.json("outbox", "list", "--all")) == DEFAULT_LIMIT + 5
    listed = [s for s in statements if "FROM notices" in s]
    assert listed and not any("notices.raw" in s for s in listed), listed
    statements.clear()
    folio = cli.json("cases", "list", "--limit", "1")[0]["folio"]
    assert cli.json("cases", "show", folio)["messages"]
    assert not any("notices.raw" in s for s in statements)


def test_retry_all_leaves_old_and_bounced_failures_alone(cli: Cli, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/mailcase.db")
    old = datetime.now(UTC) - timedelta(days=400)
    notices = Notice.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        ids = [row[0] for row in conn.execute(sa.select(notices.c.id).order_by(notices.c.id))]
        conn.execute(sa.update(notices).values(status="sent"))
        failed = {"status": "failed"}
        conn.execute(sa.update(notices).where(notices.c.id == ids[0]).values(**failed))
        conn.execute(
            sa.update(notices)
            .where(notices.c.id == ids[1])
            .values(**failed, created_at=old, queued_at=old, last_error="timed out")
        )
        # Made long ago, retried by ID after a long outage, failed again this week.
        conn.execute(
            sa.update(notices)
            .where(notices.c.id == ids[4])
            .values(**failed, created_at=old, last_error="timed out")
        )
        conn.execute(
            sa.update(notices)
            .where(notices.c.id == ids[2])
            .values(**failed, last_error="bounced: cliente3@example.com 5.1.1 user unknown")
        )
        conn.execute(sa.update(notices).where(notices.c.id == ids[3]).values(status="queued"))
    engine.dispose()
    code, out, err = cli("outbox", "retry", "--all")
    # The recent failures and the waiting one; not last year's, nor the bounced address.
    assert code == 0 and out.strip() == "3 notice(s) queued for delivery"
    assert "1 failed notice(s) older than 7 days left out" in err
    code, out, _ = cli("outbox", "retry", str(ids[1]))
    assert code == 0 and out.strip() == "1 notice(s) queued for delivery"
