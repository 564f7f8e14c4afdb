"""Ingest benchmark: mailcase poll as a whole process against the floor for the same work.

Starts its own Dovecot and SMTP sink (tests/servers.py), loads N generated
Spanish support mails (1-8 KB bodies, 10% with a 50 KB attachment), then:

(a) runs ``mailcase poll`` as a process, timed from its start to the last
    notice accepted by the sink (an acknowledgement and an agent notification
    per message: 2N notices), with its peak RSS;
(b) measures the floor for the same work: a bare imapclient fetch of the same
    messages, mail-parser parsing each, and sending 2N already-rendered
    notices over one SMTP connection.

(a) and (b) alternate ``--repeat`` times (3 by default), each (a) on a copy
of the same fresh (or pre-filled) database, since the machine's speed drifts
within minutes. Prints each run, then the medians: messages per second for
both, and the median of the runs' ratios (a)/(b).

    .venv/bin/python bench/ingest.py -n 1000 [--db sqlite|postgresql] [--existing-cases 1000000]
        [--repeat K]

Not a test: numbers go into README.md ("Benchmark").
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mailparser  # noqa: E402
from helpers import write_config  # noqa: E402
from imapclient import IMAPClient  # noqa: E402
from servers import Dovecot, SmtpSink  # noqa: E402

from mailcase.store import Store  # noqa: E402

_TEXT = (
    "internet servicio falla módem señal lento cobro factura técnico visita domicilio antena "
    "cable fibra router contraseña wifi reporte aclaración cancelación recibo pago desde ayer "
    "no funciona por favor revisar gracias atentamente saludos buenas tardes colonia calle "
    "número cliente contrato plan megas velocidad intermitente luz roja"
)
WORDS = tuple(_TEXT.split())
SUBJECTS = (
    "Sin internet", "Internet muy lento", "Aclaración de cobro", "Cancelación de servicio",
    "Falla intermitente", "Cambio de contraseña del wifi", "Visita técnica", "Cobro duplicado",
)  # fmt: skip


def generate(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    mails = []
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = f"Cliente {i} <cliente{i}@example.com>"
        msg["To"] = "contacto@internet-plarey.com.mx"
        msg["Subject"] = f"{rng.choice(SUBJECTS)} ({i})"
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(idstring=str(i), domain="example.com")
        size = rng.randint(1024, 8192)
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < size:
            words.append(rng.choice(WORDS))
        body = "Buenas tardes,\n\n" + " ".join(words) + "\n\nGracias.\n"
        msg.set_content(body)
        if i % 10 == 0:
            msg.add_attachment(
                rng.randbytes(50 * 1024),
                maintype="image",
                subtype="jpeg",
                filename="foto del módem.jpg",
            )
        mails.append(msg.as_bytes())
    return mails


# The test suite's throw-away server skips every flush and keeps 32 MB of buffers and no
# autovacuum; measured here is PostgreSQL with its own defaults for these (its data
# directory is still under /dev/shm, as the test suite's is). At N = 10,000 the test
# settings had cost half again as much PostgreSQL CPU.
POSTGRES_AS_INSTALLED = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_wal_size": "1GB",
    "min_wal_size": "80MB",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "autovacuum": "on",
}


def populate(url: str, cases: int) -> None:
    """Pre-fill the database with ``cases`` cases (each with a message and a ledger row)."""
    import sqlalchemy as sa

    from mailcase.store import Store

    store = Store.open(url, auto_upgrade=True)
    now = "2025-06-01 12:00:00+00:00"
    step = 20_000
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO folio_counters (year, last) VALUES (2025, :n)"), {"n": cases}
        )
    for start in range(1, cases + 1, step):
        ids = range(start, min(start + step, cases + 1))
        with store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO cases (id, folio, status, customer, customer_name, subject,"
                    " mailbox, language, channel, created_at, updated_at) VALUES (:id, :folio,"
                    " 'closed', :customer, '', 'Reporte anterior', 'contacto', 'es', 'mail',"
                    " :now, :now)"
                ),
                [
                    {
                        "id": i,
                        "folio": f"PLR-2025-{i:06d}",
                        "customer": f"antiguo{i}@example.org",
                        "now": now,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                sa.text(
                    "INSERT INTO case_messages (case_id, direction, kind, from_addr, to_addrs,"
                    " subject, date, message_id, text) VALUES (:id, 'in', 'customer', :customer,"
                    " '', '', :now, :mid, 'texto')"
                ),
                [
                    {
                        "id": i,
                        "customer": f"antiguo{i}@example.org",
                        "now": now,
                        "mid": f"<old{i}@example.org>",
                    }
                    for i in ids
                ],
            )
            conn.execute(
                sa.text(
                    "INSERT INTO ledger (mailbox, uidvalidity, uid, message_id, dedup_key,"
                    " disposition, reason, case_id, raw_sha256, size, ingested_at) VALUES"
                    " ('archivo', 1, :id, :mid, :mid, 'new_case', '', :id, '', 0, :now)"
                ),
                [{"id": i, "mid": f"<old{i}@example.org>", "now": now} for i in ids],
            )
    if store.engine.dialect.name == "postgresql":
        # The cases were given their ids: their sequence must go on after them.
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("SELECT setval(pg_get_serial_sequence('cases', 'id'), :n)"), {"n": cases}
            )
    store.dispose()


# `python -m mailcase`, reporting its own peak RSS as it exits. ru_maxrss from
# wait4 cannot be used: Popen starts the child with vfork, and Linux charges
# the parent's (this benchmark's, which holds every generated mail) peak to it
# at exec. VmHWM belongs to the child's own address space.
_MEASURED = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(kib)
atexit.register(_peak)
sys.argv[0] = "mailcase"
runpy.run_module("mailcase", run_name="__main__", alter_sys=True)
"""


def _children_peak(pid: int, peaks: dict[int, int], done: threading.Event) -> None:
    """Keep the VmHWM (KiB) of each child of ``pid`` (the parser process) until ``done``."""
    while not done.wait(0.1):
        try:  # each thread's children are listed under that thread
            children = [
                int(c)
                for listing in Path(f"/proc/{pid}/task").glob("*/children")
                for c in listing.read_text().split()
            ]
        except OSError:
            return
        for child in children:
            try:
                with open(f"/proc/{child}/status") as status:
                    kib = next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
            except (OSError, StopIteration):
                continue
            peaks[child] = max(peaks.get(child, 0), kib)


def _tree_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and every descendant, living or reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of proc(5), 12-15 after the name.
        total += sum(int(f) for f in fields[11:15]) / tick
        todo += children.get(current, [])
    return total


def _process_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def run_mailcase(
    config: Path,
    sink: SmtpSink,
    expected: int,
    profile: Path | None = None,
    profile_options: Sequence[str] = (),
) -> tuple[float, int, int, float]:
    """(seconds until every notice was accepted and the process ended, peak RSS KiB of the
    process, peak RSS KiB of its largest child (the parser process), CPU seconds of both).

    ``mailcase poll`` delivers the outbox before it exits, so its exit is the
    moment the last notice was accepted; the sink's count is checked.
    """
    command = [sys.executable, "-c", _MEASURED, "--config", str(config), "poll"]
    if profile is not None:  # collapsed stacks, for flamegraph.pl or speedscope
        command = ["py-spy", "record", "--format", "raw", "-r", "200", *profile_options]
        command += ["-o", str(profile), "--"]
        command += [sys.executable, "-c", _MEASURED, "--config", str(config), "poll"]
    peak_file = config.parent / "peak-rss"
    start = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "BENCH_PEAK_FILE": str(peak_file)},
    )
    peaks: dict[int, int] = {}
    done = threading.Event()
    sampler = threading.Thread(target=_children_peak, args=(proc.pid, peaks, done), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"mailcase poll failed with exit code {proc.returncode}")
    if len(sink.messages) != expected:
        sys.exit(f"the sink got {len(sink.messages)} notices, expected {expected}")
    child_peak = max(peaks.values(), default=0)
    return elapsed, int(peak_file.read_text()), child_peak, usage.ru_utime + usage.ru_stime


def floor(imap: Dovecot, sink: SmtpSink, n: int, notices: list[bytes]) -> tuple[float, float]:
    """Bare fetch + parse + send of the same work: (seconds in all, seconds sending)."""
    start = time.monotonic()
    with IMAPClient(imap.host, port=imap.port, ssl=False) as client:
        client.login("contacto", imap.users["contacto"])
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        for i in range(0, len(uids), 50):
            data = client.fetch(uids[i : i + 50], [b"BODY.PEEK[]"])
            for item in data.values():
                mailparser.parse_from_bytes(item[b"BODY[]"])
    sending = time.monotonic()
    with smtplib.SMTP(sink.host, sink.port) as smtp:
        for raw in notices:
            smtp.sendmail("contacto@internet-plarey.com.mx", ["cliente@example.com"], raw)
    end = time.monotonic()
    return end - start, end - sending


def idle_latency(config: Path, imap: Dovecot, sink: SmtpSink, count: int) -> list[float]:
    """Seconds from APPEND to the acknowledgement at the sink, with `mailcase run` on IDLE."""
    sink.clear()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailcase", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latencies = []
    try:
        time.sleep(3)  # started, first poll done, watchers idling
        base = len(sink.messages)
        for i in range(count):
            msg = generate(1, seed=1000 + i)[0].replace(b"cliente0@", f"idle{i}@".encode())
            sent = time.monotonic()
            imap.append("contacto", msg)
            # Each message brings an acknowledgement and an agent notification.
            sink.wait_for(base + 2 * (i + 1), timeout=30)
            latencies.append(time.monotonic() - sent)
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="messages (default 1000)")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--existing-cases", type=int, default=0)
    parser.add_argument(
        "--repeat", type=int, default=3, metavar="K",
        help="pairs of (a) and (b) run one after the other; the medians are kept (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--idle-latency", type=int, default=0, metavar="K",
        help="then measure new-mail-to-acknowledgement latency for K messages under IDLE",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, metavar="FILE",
        help="run (a) under py-spy and write its collapsed stacks to FILE (slows (a) down)",
    )  # fmt: skip
    parser.add_argument(
        "--profile-options", default="", metavar="OPTIONS",
        help="more py-spy record options for --profile: --profile-options=--gil (CPU), "
        "--profile-options='--idle --threads'",
    )  # fmt: skip
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    mails = generate(args.n)
    work = Path(tempfile.mkdtemp(prefix="mailcase-bench-"))
    # Databases, stores and configs of every run: 100 MB and more at 10,000 messages.
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    with Dovecot() as imap, SmtpSink() as sink:
        pg = None
        if args.db == "postgresql":
            from servers import Postgres

            pg = Postgres(settings=POSTGRES_AS_INSTALLED)
            pg.start()

        # Each (a) starts from the same database: the schema created, as `mailcase db
        # upgrade` does at installation ((a) measures polling, not a one-time migration),
        # and pre-filled once; every run polls a copy of it.
        template = work / "template"
        template.mkdir()
        if pg is not None:
            pg.create_database("template_bench")
            template_url = pg.url("template_bench")
        else:
            template_url = f"sqlite:///{template}/mailcase.db"
        Store.open(template_url, auto_upgrade=True).dispose()
        if args.existing_cases:
            t = time.monotonic()
            populate(template_url, args.existing_cases)
            print(f"pre-filled {args.existing_cases} cases in {time.monotonic() - t:.1f} s")

        def fresh_config(run: int) -> Path:
            directory = work / f"run{run}"
            directory.mkdir()
            if pg is not None:
                pg.create_database(f"bench{run}", template="template_bench")
                extra = {"db_url": pg.url(f"bench{run}")}
            else:
                # The database and any write-ahead log left beside it.
                for part in template.glob("mailcase.db*"):
                    shutil.copyfile(part, directory / part.name)
                extra = {}
            config = write_config(directory, imap, sink, notify=True, **extra)
            config.write_text(config.read_text().replace('format = "json"', 'level = "warning"'))
            return config

        t = time.monotonic()
        with imap.client("contacto") as client:
            for raw in mails:
                client.append("INBOX", raw)
        print(f"loaded {args.n} messages into Dovecot in {time.monotonic() - t:.1f} s")

        notice_count = 2 * args.n
        servers = {"Dovecot": imap.pid} | ({"PostgreSQL": pg.pid} if pg is not None else {})
        cores = len(os.sched_getaffinity(0))
        # The machine's speed drifts by a third within minutes: (a) and (b) alternate,
        # so that each ratio compares runs made close together, and the medians are kept.
        runs: list[tuple[float, float]] = []
        rss_peaks: list[tuple[int, int]] = []
        config = work
        for run in range(args.repeat):
            config = fresh_config(run)
            sink.clear()
            before = {name: _tree_cpu(pid) for name, pid in servers.items() if pid is not None}
            sink_before = _process_cpu()
            profile = args.profile if run == 0 else None
            to_last, rss, child_rss, cpu = run_mailcase(
                config, sink, notice_count, profile, args.profile_options.split()
            )
            # Where else the two cores went during (a): the servers, and this process
            # (the SMTP sink's thread, and the RSS sampler).
            others = {name: _tree_cpu(servers[name]) - cpu0 for name, cpu0 in before.items()}
            others["sink"] = _process_cpu() - sink_before
            notices = [m.data for m in sink.messages[:notice_count]]
            sink.clear()
            base, base_sending = floor(imap, sink, args.n, notices)
            runs.append((to_last, base))
            rss_peaks.append((rss, child_rss))
            # Everything that ran during (a) shares the machine's cores: however well the
            # work overlaps, (a) cannot take less than all of its CPU spread over them.
            spent = cpu + sum(others.values())
            print(
                f"run {run + 1}: (a) {to_last:.2f} s, CPU {cpu:.2f} s, peak RSS "
                f"{rss / 1024:.0f} + {child_rss / 1024:.0f} MiB; CPU meanwhile: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in others.items())
                + f"; CPU of all {spent:.2f} s on {cores} cores, so (a) >= {spent / cores:.2f} s"
                f"; (b) {base:.2f} s ({base_sending:.2f} s sending); ratio {to_last / base:.2f}"
            )
        latencies = idle_latency(config, imap, sink, args.idle_latency) if args.idle_latency else []
        if pg is not None:
            pg.close()
    polled = statistics.median([a for a, _ in runs])
    base = statistics.median([b for _, b in runs])
    ratios = sorted(a / b for a, b in runs)
    rss, child_rss = max(rss_peaks, key=sum)
    print(f"database: {args.db}, existing cases: {args.existing_cases}, messages: {args.n}")
    print(
        f"(a) mailcase poll: {polled:.2f} s to the last of {notice_count} notices "
        f"(median of {len(runs)}), {args.n / polled:.0f} messages/s, "
        f"peak RSS {rss / 1024:.0f} MiB + {child_rss / 1024:.0f} MiB parser process"
    )
    print(
        f"(b) floor (fetch + parse + send): {base:.2f} s (median), {args.n / base:.0f} messages/s"
    )
    print(
        f"ratio (a)/(b): {statistics.median(ratios):.2f} "
        f"(median of the runs' ratios {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    if latencies:
        ordered = sorted(latencies)
        p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
        print(
            f"IDLE: new mail to acknowledgement over {len(ordered)} messages: "
            f"median {ordered[len(ordered) // 2]:.2f} s, p95 {p95:.2f} s, max {ordered[-1]:.2f} s"
        )


if __name__ == "__main__":
    main()
