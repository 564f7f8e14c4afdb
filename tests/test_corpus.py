"""The shared corpus of real-world mail (broken MIME, bounces, odd charsets) through a real poll.

Every file goes into Dovecot, one ``mailcase poll`` reads them all, and every
message must end up with exactly one ledger row. The corpus lives beside the
project (../shared/corpus); it is a data set, not a server, so the test is
skipped only where that folder does not exist.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOT_MAIL = {"SOURCE.md", "README.md", "features.json"}


def corpus_files() -> list[Path]:
    return sorted(
        p
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in NOT_MAIL and not p.name.startswith("LICENSE")
    )


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not present")
def test_whole_corpus_is_accounted_for(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> None:
    files = corpus_files()
    assert len(files) > 400
    with mailboxes.client("contacto") as imap:
        for path in files:
            imap.append("INBOX", path.read_bytes())
    config = write_config(tmp_path, mailboxes, sink, db_url=db_url)
    cli = Cli(config, capsys)
    code, _, err = cli("poll")
    assert code == 0, err
    ledger = cli.json("messages", "list")
    assert len(ledger) == len(files)
    assert len({(r["mailbox"], r["uid"]) for r in ledger}) == len(files)
    counts = Counter(r["disposition"] for r in ledger)
    # The corpus is mostly bounces and auto-replies: most of it must not open a case.
    assert counts["bounce"] + counts["auto_reply"] > 100, counts
    cases = cli.json("cases", "list")
    assert len(cases) == counts["new_case"]
    # Nothing automatic was answered.
    answered = {r.rcpt_tos[0] for r in sink.wait_for(0)}
    daemons = {"mailer-daemon", "postmaster"}
    automatic = {c["customer"] for c in cases if c["customer"].split("@")[0] in daemons}
    assert not answered & automatic
    # A second poll finds nothing new.
    cli.poll()
    assert len(cli.json("messages", "list")) == len(files)
