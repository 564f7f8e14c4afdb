"""``mailcase run``: the scheduler that polls every mailbox and delivers the outbox.

* One apscheduler job per mailbox, every ``poll.interval_seconds``, at most one
  instance at a time, missed runs coalesced into one.
* A mailbox that cannot be read is logged once per failure and backs off
  (doubling up to 15 minutes); the others go on, and the daemon never exits on it.
* One outbox job (never two at once, so a notice cannot be sent twice by two
  runs); a poll that queued notices brings it forward.
* SIGTERM/SIGINT: the message in hand is finished, then the process exits 0.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from mailcase.errors import DatabaseError, MailboxError
from mailcase.logs import get_logger
from mailcase.outbox import deliver_outbox
from mailcase.service import Runtime, close_stale_cases, poll_mailbox
from mailcase.store import utcnow

MAX_BACKOFF = timedelta(minutes=15)
OUTBOX_JOB = "outbox"


@dataclass
class _Health:
    failures: int = 0
    retry_at: datetime | None = None


class Daemon:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.log = get_logger()
        self.health = {name: _Health() for name in rt.settings.mailboxes}
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(len(rt.settings.mailboxes) + 1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    def poll(self, name: str) -> None:
        """One scheduled poll of ``name``; never raises (a job that raises is just logged)."""
        health = self.health[name]
        now = utcnow()
        if health.retry_at is not None and now < health.retry_at:
            return
        try:
            report = poll_mailbox(self.rt, name)
        except (MailboxError, DatabaseError) as exc:
            health.failures += 1
            delay = min(
                timedelta(seconds=self.rt.settings.poll.interval_seconds)
                * 2 ** (health.failures - 1),
                MAX_BACKOFF,
            )
            health.retry_at = now + delay
            self.log.error(
                "mailbox_failed", mailbox=name, error=str(exc), retry_in=int(delay.total_seconds())
            )
            return
        except Exception:
            self.log.exception("mailbox_poll_crashed", mailbox=name)
            return
        if health.failures:
            self.log.info("mailbox_recovered", mailbox=name, after_failures=health.failures)
        health.failures, health.retry_at = 0, None
        if report.dispositions.get("new_case") and not self.rt.stop.is_set():
            job = self.scheduler.get_job(OUTBOX_JOB)
            if job is not None:
                job.modify(next_run_time=datetime.now(job.next_run_time.tzinfo))

    def deliver(self) -> None:
        try:
            report = deliver_outbox(self.rt.store, self.rt.settings)
        except Exception:
            self.log.exception("outbox_run_crashed")
            return
        if report.sent or report.deferred or report.failed:
            self.log.info("outbox_delivered", **vars(report))

    def close_stale(self) -> None:
        try:
            close_stale_cases(self.rt)
        except Exception:
            self.log.exception("close_stale_crashed")

    def run(self) -> None:
        """Run until SIGTERM or SIGINT; return after in-flight work is finished."""
        interval = self.rt.settings.poll.interval_seconds
        start = datetime.now().astimezone()
        for name in self.rt.settings.mailboxes:
            self.scheduler.add_job(
                self.poll,
                "interval",
                seconds=interval,
                args=[name],
                id=f"poll:{name}",
                next_run_time=start,
            )
        self.scheduler.add_job(
            self.deliver,
            "interval",
            seconds=min(interval, 30),
            id=OUTBOX_JOB,
            next_run_time=start,
        )
        self.scheduler.add_job(
            self.close_stale, "interval", hours=1, id="close-stale", next_run_time=start
        )

        def _stop(signum: int, _frame: FrameType | None) -> None:
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.rt.stop.set()

        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
        self.log.info(
            "daemon_started", mailboxes=list(self.rt.settings.mailboxes), interval=interval
        )
        self.scheduler.start()
        try:
            self.rt.stop.wait()
        finally:
            self.scheduler.shutdown(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.info("daemon_stopped")


def run_daemon(rt: Runtime) -> None:
    Daemon(rt).run()
