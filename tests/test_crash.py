"""Crash safety: ``mailcase run`` SIGKILLed at random moments loses nothing and repeats nothing.

A few hundred messages wait in both mailboxes; the daemon is started and killed with SIGKILL
(no clean-up of any kind runs) again and again, at random moments, while the SMTP sink stays
up. A final ``mailcase poll`` then finishes the work. Whatever the kills interrupted (start-up,
the schema migration, a fetch, a transaction, a STORE of flags, an SMTP transaction), every
message must end with exactly one ledger row, every distinct message with exactly one case,
every case with its acknowledgement, and every message flagged ``$MailcaseDone``.

The one repetition the design allows (``mailcase/outbox.py``): a notice the server accepted
just before the kill, not yet marked sent, is sent again. So at most one duplicate
acknowledgement per kill.

The seed is random on each run and printed in every assertion message; set
``MAILCASE_CRASH_SEED`` to replay a failing run's kill schedule (the moments are still subject
to timing, so a replay is close, not exact).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTACTO, INFO, Cli, DaemonProcess, mail, run_process, write_config
from servers import Dovecot, SmtpSink

pytestmark = pytest.mark.integration

ONLY_CONTACTO = 140
ONLY_INFO = 140
BOTH = 20  # Cc'd to contacto@ and info@: the same bytes in both mailboxes
CUSTOMERS = 100  # 3 messages each: under limits.max_acks_per_sender_per_hour (5)
KILLS = 8
DONE = b"$MailcaseDone"


def _messages(rng: random.Random) -> list[tuple[str, str, str, bytes]]:
    """(target, customer, message_id, raw) for each distinct message, in arrival order."""
    targets = ["contacto"] * ONLY_CONTACTO + ["info"] * ONLY_INFO + ["both"] * BOTH
    rng.shuffle(targets)
    out = []
    for i, target in enumerate(targets):
        customer = f"cliente{i % CUSTOMERS:02d}@example.com"
        message_id = f"<crash-{i}@example.com>"
        to = {"contacto": CONTACTO, "info": INFO, "both": f"{CONTACTO}, {INFO}"}[target]
        raw = mail(
            sender=f"Cliente {i % CUSTOMERS} <{customer}>",
            to=to,
            subject=f"Reporte {i}: sin servicio",
            body=f"Hola, es el reporte número {i}. Desde ayer no tengo internet.\nGracias.",
            message_id=message_id,
        )
        out.append((target, customer, message_id, raw))
    return out


def _kill_at_random_moments(config: Path, logs: Path, rng: random.Random, why: str) -> list[str]:
    """Start and SIGKILL the daemon KILLS times; return where each kill was aimed."""
    moments = []
    for life in range(KILLS):
        # Every other kill counts from the spawn (it can land in the imports, the schema
        # migration, the first transactions); the others from "daemon_started", so that
        # those lives do some work and later ones reach the outbox.
        from_spawn = life % 2 == 0
        delay = rng.uniform(0.05, 1.5)
        with DaemonProcess(config, logs / f"run-{life}.log") as daemon:
            if not from_spawn:
                daemon.wait_for_event("daemon_started", timeout=20)
            time.sleep(delay)
            assert daemon.running, f"{why}: life {life} ended by itself:\n{daemon.tail()}"
            daemon.kill()
            assert "Traceback" not in daemon.text(), f"{why}: life {life}:\n{daemon.tail()}"
        moments.append(f"{'spawn' if from_spawn else 'started'}+{delay:.2f}s")
    return moments


def _check_blobs(store: Path, why: str) -> int:
    """Every blob (written by temp file + rename) is whole: its content hashes to its name."""
    count = 0
    for path in store.rglob("*"):
        if path.is_file() and len(path.name) == 64 and not path.name.startswith("."):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == path.name, f"{why}: torn blob {path}"
            count += 1
    return count


def test_sigkill_at_random_moments_loses_and_repeats_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    seed = int(os.environ.get("MAILCASE_CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    why = f"seed {seed} (replay: MAILCASE_CRASH_SEED={seed})"
    config = write_config(tmp_path, mailboxes, sink)

    messages = _messages(rng)
    raws: dict[str, list[bytes]] = {"contacto": [], "info": []}
    for target, _customer, _mid, raw in messages:
        for user in ("contacto", "info"):
            if target in (user, "both"):
                raws[user].append(raw)
    uids = {user: mailboxes.append_many(user, raws[user]) for user in raws}
    appended = {(user, uid) for user, list_ in uids.items() for uid in list_}
    distinct = len(messages)
    assert len(appended) == ONLY_CONTACTO + ONLY_INFO + 2 * BOTH

    moments = _kill_at_random_moments(config, tmp_path, rng, why)
    why = f"{why}, kills at {', '.join(moments)}"

    final = run_process(config, "poll", timeout=60)
    assert final.returncode == 0, f"{why}:\n{final.stderr[-3000:]}"
    assert "Traceback" not in final.stderr, why

    cli = Cli(config, capsys)
    ledger = cli.json("messages", "list")
    cases = cli.json("cases", "list")

    # Every appended message: exactly one ledger row.
    keys = [(row["mailbox"], row["uid"]) for row in ledger]
    repeated = [k for k, n in Counter(keys).items() if n > 1]
    assert not repeated, f"{why}: ledger rows repeated for {repeated[:10]}"
    assert set(keys) == appended, f"{why}: missing {sorted(appended - set(keys))[:10]}"
    dispositions = Counter(row["disposition"] for row in ledger)
    assert dispositions == {"new_case": distinct, "duplicate": BOTH}, f"{why}: {dispositions}"

    # Every distinct message: exactly one case, each case once.
    folios = [c["folio"] for c in cases]
    assert len(folios) == len(set(folios)) == distinct, f"{why}: {len(folios)} cases"
    folios_of: dict[str, set[str]] = defaultdict(set)
    for row in ledger:
        folios_of[row["message_id"]].add(row["folio"])
    assert set(folios_of) == {mid for _t, _c, mid, _r in messages}, why
    split = {mid: f for mid, f in folios_of.items() if len(f) != 1}
    assert not split, f"{why}: one message in several cases: {split}"
    folio_of = {mid: next(iter(f)) for mid, f in folios_of.items()}
    assert set(folio_of.values()) == set(folios), why

    # Acknowledgements: one per case, repeated at most once per kill (in flight at the kill).
    received = sink.messages
    acks = [m.message for m in received]
    ack_ids = Counter(str(a["Message-ID"]) for a in acks)
    assert len(ack_ids) == len(cases), f"{why}: {len(ack_ids)} distinct acks for {len(cases)}"
    assert len(received) >= len(cases), why
    assert len(received) - len(cases) <= KILLS, (
        f"{why}: {len(received) - len(cases)} repeated acknowledgements for {KILLS} kills: "
        f"{[mid for mid, n in ack_ids.items() if n > 1]}"
    )
    answered = Counter(str(a["In-Reply-To"]) for a in acks)
    assert set(answered) == set(folio_of), f"{why}: unanswered {set(folio_of) - set(answered)}"
    for ack in acks:
        folio = folio_of[str(ack["In-Reply-To"])]
        assert f"[Folio {folio}]" in str(ack["Subject"]), f"{why}: {ack['Subject']} for {folio}"
    customers = {customer for _t, customer, _m, _r in messages}
    reached = {rcpt for m in received for rcpt in m.rcpt_tos}
    assert reached == customers, f"{why}: not acknowledged: {customers - reached}"

    # On the server: everything handled is flagged, whatever the kills interrupted.
    for user in ("contacto", "info"):
        flags = mailboxes.fetch_flags(user)
        assert set(flags) == set(uids[user]), why
        unflagged = sorted(uid for uid, f in flags.items() if DONE not in f)
        assert not unflagged, f"{why}: {user} UIDs without {DONE!r}: {unflagged[:20]}"

    assert _check_blobs(tmp_path / "store", why) >= distinct
