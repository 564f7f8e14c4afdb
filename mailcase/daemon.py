"""``mailcase run``: the scheduler that polls every mailbox and delivers the outbox.

* One apscheduler job per mailbox, every ``poll.interval_seconds``, at most one
  poll of a mailbox at a time, missed runs coalesced into one.
* With IMAP IDLE (``poll.idle``, on where the server offers it) a watcher
  thread per mailbox polls it as soon as the server reports new mail; the
  schedule stays as the safety net.
* A mailbox that cannot be read is logged once per failure and backs off
  (doubling up to 15 minutes); the others go on, and the daemon never exits on it.
* One outbox job (never two at once, so a notice cannot be sent twice by two
  runs); a poll that queued notices brings it forward.
* Every :data:`~mailcase.reminders.CHECK_MINUTES` minutes (unless
  ``escalation.unanswered_hours = 0``), from the end of the first round of
  polls, one reminder to the agents per case whose customer has waited that
  long for an answer (:mod:`mailcase.reminders`); with ``escalation.clock =
  "business"``, open hours only, and none while the desk is closed.
* With ``retention.inactive_days`` above 0, once after the first round of polls
  and then once a day, the purge by age (:mod:`mailcase.retention`): one
  ``customers_purged`` event with counts and folios, never an address.
* SIGTERM/SIGINT: the message in hand is finished (whichever thread polls it:
  the schedule's or an IDLE watcher's, waited for up to :data:`STOP_GRACE`
  seconds), the notice being sent is finished and the rest of the outbox stays
  queued for the next run; then the process exits 0.
* SIGHUP (a closed terminal, ``kill -HUP``, a log rotation script) is logged
  as ``sighup_ignored`` and changes nothing: without a handler it would kill
  the daemon mid-message, and systemd counts death by SIGHUP as a clean exit,
  so ``Restart=on-failure`` would not bring it back. A new configuration
  needs a restart (templates are re-read on their own).

Under systemd (``Type=notify``, see ``systemd/mailcase.service`` and
:mod:`mailcase.sdnotify`):

* ``READY=1`` is sent once the first round of polls has finished, one poll of
  every mailbox, whether it succeeded or not. By then the configuration was
  loaded and the database opened (the CLI does both before the daemon starts)
  and every mailbox has had its first login. A mailbox that failed does not hold
  the start back: it is named ``failed`` in the ``STATUS=`` sent with
  ``READY=1`` and backs off like any failure, while the other mailboxes are
  served. (Refusing to start would turn one changed password into a restart
  loop that stops every mailbox.)
* ``STATUS=`` after every poll, e.g.
  ``last poll 12:00:03 CST: contacto ok (3 new), info failed``; messages
  already in the ledger (a folder rebuilt under a new UIDVALIDITY) are not
  new: ``contacto ok (0 new, 120 remapped)``.
* ``STOPPING=1`` as soon as SIGTERM/SIGINT arrives.
* Watchdog (``WatchdogSec=``): a scheduler job, on an executor of its own,
  sends ``WATCHDOG=1`` every half timeout. Each poll job records when it
  started and forgets it when it ends; while any poll has been running longer
  than the watchdog timeout the pings are withheld, so systemd kills and
  restarts a daemon whose poll hangs. The pings come from the scheduler's own
  loop, so a scheduler that stopped dispatching jobs stops them too. A poll that
  is merely slow is not a hang: ``WatchdogSec=`` must exceed the longest
  legitimate poll.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from mailcase import __version__, leases, metrics
from mailcase.errors import ConfigError, DatabaseError, MailboxError, TemplateError
from mailcase.idle import IdleWatcher
from mailcase.logs import get_logger
from mailcase.models import Checkpoint
from mailcase.outbox import deliver_outbox, log_run_failure
from mailcase.reminders import CHECK_MINUTES, remind_unanswered
from mailcase.sdnotify import notify, watchdog_interval
from mailcase.service import Runtime, close_stale_cases, poll_mailbox, record_mailbox_failure
from mailcase.store import as_utc, error_text, is_unavailable, utcnow

MAX_BACKOFF = timedelta(minutes=15)
RETRY_SLACK = timedelta(milliseconds=250)
OUTBOX_JOB = "outbox"
WATCHDOG_JOB = "watchdog"
REMIND_JOB = "remind"
CLOSE_STALE_JOB = "close-stale"
PURGE_JOB = "purge"
PENDING = "pending"  # a mailbox's STATUS= word until its first poll ends
# How long a stop waits for the polls in progress to finish their message: well
# under systemd's TimeoutStopSec= (2 min in systemd/mailcase.service), after
# which the whole process would be SIGKILLed mid-transaction.
STOP_GRACE = 90.0


class _Coalesced:
    """Runs ``work`` on request, one run at a time; requests during a run make it go round again.

    The schedule, IDLE and other polls ask for the same work (a mailbox's
    poll, an outbox run). A run already past its query would not see what a
    request during it was about, and APScheduler skips a second instance of a
    job: so a request never waits behind a run, it marks it to repeat. Runs
    stop repeating once ``go_on`` says so.
    """

    def __init__(self, work: Callable[[], None], go_on: Callable[[], bool]) -> None:
        self._work, self._go_on = work, go_on
        self._lock = threading.Lock()
        self._pending = threading.Event()

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def ask(self) -> None:
        """Make the run in progress (or the next one) go round once more."""
        self._pending.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the run in progress to end; whether none runs now."""
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            return False
        self._lock.release()
        return True

    def run(self) -> None:
        """Run now, or leave it to the run in progress. Never blocks on another run."""
        self._pending.set()
        while self._lock.acquire(blocking=False):
            try:
                while self._pending.is_set() and self._go_on():
                    self._pending.clear()
                    self._work()
            finally:
                self._lock.release()
            # A request that came between the last check and the release.
            if not self._pending.is_set() or not self._go_on():
                return


@dataclass
class _Health:
    failures: int = 0
    retry_at: datetime | None = None
    # Whether the last failure was the mailbox's (IMAP, its credentials) rather
    # than the database's: only then is an IDLE connection to it suspect.
    mailbox_at_fault: bool = False


def backoff_delay(interval_seconds: float, failures: int) -> timedelta:
    """The wait after ``failures`` failed polls in a row: the interval doubled per
    failure, at most :data:`MAX_BACKOFF`, for any number of failures.

    The exponent is capped before multiplying: ``timedelta * 2 ** 41`` overflows,
    which after about 42 failures (nine hours of an outage) ended the back-off and
    had the mailbox polled at every interval again, one refused login a minute.
    """
    # 2**10 seconds already pass MAX_BACKOFF, whatever the interval (at least 1 s).
    doublings = min(max(failures - 1, 0), 10)
    base = min(interval_seconds, MAX_BACKOFF.total_seconds())
    return min(timedelta(seconds=base) * (1 << doublings), MAX_BACKOFF)


def _mailbox_at_fault(exc: Exception) -> bool:
    """Whether a failed poll's ``exc`` is the mailbox's (its server, login, folder,
    credentials), not the database's, a template's or ``storage.directory``'s:
    only then is an IDLE connection to it suspect."""
    if isinstance(exc, MailboxError):
        return exc.component == "imap"
    return not isinstance(exc, (DatabaseError, TemplateError))


class Daemon:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.log = get_logger()
        self.health = {name: _Health() for name in rt.settings.mailboxes}
        # For systemd: the last poll's result per mailbox, READY=1 sent yet, and the
        # monotonic start of every poll now running (the watchdog's evidence).
        self.results = dict.fromkeys(rt.settings.mailboxes, PENDING)
        self.ready = False
        self.polls_running: dict[str, float] = {}
        self._lock = threading.Lock()
        self._polls = {
            name: _Coalesced(partial(self._poll_once, name), self._running)
            for name in rt.settings.mailboxes
        }
        # Stopping ends delivery too: the rest stays queued for the next start.
        self._delivery = _Coalesced(self._deliver_once, self._running)
        self.watchers: list[IdleWatcher] = []
        self.scheduler = BackgroundScheduler(
            executors={
                "default": ThreadPoolExecutor(len(rt.settings.mailboxes) + 1),
                # Its own thread: busy poll threads cannot delay a ping.
                WATCHDOG_JOB: ThreadPoolExecutor(1),
                # Its own too: a long first purge must not hold a poll's or delivery's.
                PURGE_JOB: ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    def _running(self) -> bool:
        return not self.rt.stop.is_set()

    def poll(self, name: str) -> None:
        """Poll ``name`` now, or make the poll already running go round once more.

        Called by the schedule and by the IDLE watcher. At most one poll of a
        mailbox runs at a time: a request that arrives during a poll sets
        ``pending`` and that poll repeats, so mail that arrived after its
        SEARCH is not left for the next interval. Never raises.
        """
        self._polls[name].run()

    def _poll_once(self, name: str) -> None:
        """One poll; a poll that ran (was not skipped for back-off) is reported to systemd."""
        with self._lock:
            self.polls_running[name] = time.monotonic()
        try:
            result = self._poll(name)
        finally:
            with self._lock:
                del self.polls_running[name]
        if result is not None:
            self._report(name, result)

    def _held_for(self, name: str) -> float:
        """Seconds until ``name``'s next retry while its polls fail for the mailbox's sake.

        0 when healthy, and 0 while only the database fails: the IDLE watcher
        drops and re-opens its connection while this is positive, and an IMAP
        connection that works would then log idle_failed/idle_resumed over
        and over for an outage that is not the mailbox's.
        """
        health = self.health[name]
        retry_at = health.retry_at
        if retry_at is None or not health.mailbox_at_fault:
            return 0.0
        return max((retry_at - utcnow()).total_seconds(), 0.0)

    def _poll(self, name: str) -> str | None:
        """Poll ``name``; return its STATUS= word, or None when skipped for back-off."""
        health = self.health[name]
        # The schedule itself is moved to retry_at (below), so only an IDLE
        # wake-up can arrive early; a little slack absorbs thread start-up.
        if health.retry_at is not None and utcnow() + RETRY_SLACK < health.retry_at:
            return None
        try:
            report = poll_mailbox(self.rt, name)
        # ConfigError: a password file or credential that became unreadable
        # after start-up fails that mailbox, with back-off, like a refused login.
        except (MailboxError, DatabaseError, ConfigError) as exc:
            record_mailbox_failure(self.rt, name, str(exc))
            health.failures += 1
            delay = backoff_delay(self.rt.settings.poll.interval_seconds, health.failures)
            # Counted from the failure, not from the attempt's start: a connect
            # that took seconds to fail must not shorten the promised wait.
            health.retry_at = utcnow() + delay
            health.mailbox_at_fault = _mailbox_at_fault(exc)
            self._reschedule(name, health.retry_at)
            self.log.error(
                "mailbox_failed", mailbox=name, error=str(exc), retry_in=int(delay.total_seconds())
            )
            return "failed"
        except Exception:
            self.log.exception("mailbox_poll_crashed", mailbox=name)
            return "failed"
        if report.skipped:
            return "held by another instance"
        if health.failures:
            self.log.info("mailbox_recovered", mailbox=name, after_failures=health.failures)
        health.failures, health.retry_at, health.mailbox_at_fault = 0, None, False
        if report.dispositions.get("new_case") and not self.rt.stop.is_set():
            self.request_delivery()
        # A rebuilt folder's messages, met again at new UIDs, are not new mail.
        remapped = f", {report.remapped} remapped" if report.remapped else ""
        return f"ok ({report.new} new{remapped})"

    def request_delivery(self) -> None:
        """Deliver the outbox now: start a run, or make the run in progress go round again.

        A run already past its query for due notices would not see the new
        ones, and the scheduler skips a second instance of the job: without
        the repeat they waited for the next interval (seen: 4.8 s under IDLE).
        """
        self._delivery.ask()
        job = self.scheduler.get_job(OUTBOX_JOB)
        if job is not None and not self._delivery.running:
            job.modify(next_run_time=datetime.now(job.next_run_time.tzinfo))

    def _reschedule(self, name: str, when: datetime) -> None:
        """Move ``name``'s next scheduled poll to ``when``; its interval then runs from there.

        APScheduler has already set the job's next run before calling it, so
        this overrides that tick instead of racing it.
        """
        if self.rt.stop.is_set() or self.scheduler.get_job(f"poll:{name}") is None:
            return
        self.scheduler.modify_job(f"poll:{name}", next_run_time=when)

    def _report(self, name: str, result: str) -> None:
        """Send STATUS= with every mailbox's last result; READY=1 with it after the first round.

        Nothing is sent once stopping: STATUS= keeps saying so, and no READY=1 follows
        STOPPING=1.
        """
        with self._lock:  # held while sending, so STATUS= lines reach systemd in order
            self.results[name] = result
            if self.rt.stop.is_set():
                return
            summary = ", ".join(f"{n} {r}" for n, r in self.results.items())
            # The business's clock, as the command line's tables show it.
            now = datetime.now(self.rt.settings.folio.zone)
            fields = [f"STATUS=last poll {now:%H:%M:%S %Z}: {summary}"]
            became_ready = not self.ready and PENDING not in self.results.values()
            if became_ready:
                self.ready = True
                fields.insert(0, "READY=1")
            notify(*fields)
        if became_ready:
            failed = [n for n, r in self.results.items() if r == "failed"]
            self.log.info("daemon_ready", failed_mailboxes=failed)
            self._start_reminders()

    def _start_reminders(self) -> None:
        """Run the paused close-stale, reminder and purge jobs now, and at their intervals
        from now on."""
        for job in (CLOSE_STALE_JOB, REMIND_JOB, PURGE_JOB):
            if self.rt.stop.is_set() or self.scheduler.get_job(job) is None:
                continue
            self.scheduler.modify_job(job, next_run_time=datetime.now().astimezone())

    def _after_a_clock_step(self, offset: float) -> float:
        """Put the schedule right when the wall clock was stepped back since ``offset`` (its
        lead over the monotonic clock then); the lead now.

        APScheduler 3 waits for each job's next run time by the wall clock: set back
        an hour, every poll, delivery run and watchdog ping waited an hour (systemd
        then killed the daemon for a missed watchdog). Every scheduled job runs now
        instead, and each back-off keeps the wait it had left. A paused job (no next
        run time: close-stale, reminders and purge before READY=1) stays paused.
        """
        now_offset = _wall_minus_monotonic()
        step = now_offset - offset
        if step < -CLOCK_STEP_SECONDS:
            self.log.warning("clock_stepped_back", seconds=round(-step))
            now = datetime.now(UTC)
            for job in self.scheduler.get_jobs():
                # modify_job would resume a paused job: a step during the first round
                # (chrony's first sync at boot) started the purge, close-stale and the
                # reminders before a customer's or agent's waiting mail was read.
                if job.next_run_time is not None:
                    self.scheduler.modify_job(job.id, next_run_time=now)
            for health in self.health.values():
                retry_at = health.retry_at
                if retry_at is not None:
                    health.retry_at = retry_at + timedelta(seconds=step)
        return now_offset

    def feed_watchdog(self, timeout: float) -> None:
        """Send WATCHDOG=1 unless a poll has been running for longer than ``timeout`` seconds."""
        now = time.monotonic()
        with self._lock:
            hung = sorted(n for n, began in self.polls_running.items() if now - began > timeout)
        if hung:
            # No ping: systemd's WatchdogSec= runs out and it restarts the daemon.
            self.log.error("watchdog_withheld", mailboxes=hung, timeout=timeout)
            return
        notify("WATCHDOG=1")

    def deliver(self) -> None:
        """Run the outbox until no request is pending; at most one run at a time. Never raises."""
        self._delivery.run()

    def _deliver_once(self) -> None:
        try:
            # SIGTERM ends the run after the notice in hand (seen: 120 queued
            # notices to a slow server kept a stopping daemon up for a minute,
            # past TimeoutStopSec=, so systemd SIGKILLed it mid-transaction).
            report = deliver_outbox(self.rt.store, self.rt.settings, stop=self.rt.stop)
        except Exception as exc:  # the next run (at most 30 s away) tries again
            log_run_failure(exc)
            return
        if report.sent or report.deferred or report.failed or report.stopped:
            self.log.info("outbox_delivered", **vars(report))

    def close_stale(self) -> None:
        """Close stale cases; never raises. A database that is down is one line, not a traceback."""
        try:
            close_stale_cases(self.rt)
        except SQLAlchemyError as exc:
            if not is_unavailable(exc):
                self.log.exception("close_stale_crashed")
                return
            # Expected trouble, like outbox_run_failed: the next hourly run tries again.
            self.log.warning("close_stale_failed", error=error_text(exc))
        except Exception:
            self.log.exception("close_stale_crashed")

    def remind(self) -> None:
        """Remind the agents of cases left unanswered (:mod:`mailcase.reminders`); never
        raises. A database that is down is one line, as for :meth:`close_stale`."""
        try:
            reminded = remind_unanswered(self.rt.store, self.rt.settings)
        except SQLAlchemyError as exc:
            if not is_unavailable(exc):
                self.log.exception("remind_crashed")
                return
            self.log.warning("remind_failed", error=error_text(exc))  # the next run tries again
            return
        except TemplateError as exc:  # an override no reminder can use: the admin's to fix
            self.log.error("remind_failed", error=str(exc))
            return
        except Exception:
            self.log.exception("remind_crashed")
            return
        if reminded:
            self.request_delivery()  # not the next outbox interval: the agents are waited on

    def purge(self) -> None:
        """Erase the customers inactive for ``retention.inactive_days`` and the old mail
        of no case (:mod:`mailcase.retention`, which logs what it erased); never raises.
        A database that is down is one line, as for :meth:`close_stale`."""
        from mailcase.retention import purge_inactive  # loads the erasure: only when used

        settings = self.rt.settings
        try:
            done = purge_inactive(
                self.rt.store,
                settings.storage.directory,
                settings.retention.inactive_days,
                insiders=settings.own_addresses | frozenset(settings.agents.addresses),
                by="mailcase",
                dry_run=False,
                stop=self.rt.stop,  # a stop waits for the batch in hand only
            )
        except SQLAlchemyError as exc:
            if not is_unavailable(exc):
                self.log.exception("purge_crashed")
                return
            self.log.warning("purge_failed", error=error_text(exc))  # tomorrow's run tries again
            return
        except Exception:
            self.log.exception("purge_crashed")
            return
        if done.files_left:
            # Paths of the message store (hashes), no address: tried again by the next run.
            self.log.warning("purge_files_left", files=len(done.files_left))

    def seed_metrics(self) -> None:
        """Give every configured mailbox a ``mailcase_seconds_since_last_successful_poll``
        series from the start: its last success from the database, or, for a mailbox
        that never polled successfully, the moment of this call (the daemon's start).

        Otherwise a mailbox had no series until it succeeded in this process: one
        broken across a restart vanished from the dashboard instead of showing a
        growing value, and one never read (a mistyped password from day one) never
        fired an alert on "too long". The daemon's start is chosen because nothing
        earlier is known of a mailbox never read; its value therefore begins again
        at 0 on a restart (``mailcase status`` keeps its consecutive failures).
        Best effort: a database that cannot be read counts every mailbox from the
        start, and the next successful poll of each corrects it.
        """
        started = time.time()
        names = list(self.rt.settings.mailboxes)
        query = select(Checkpoint.mailbox, Checkpoint.last_poll_at).where(
            col(Checkpoint.mailbox).in_(names)
        )
        rows: list[tuple[str, datetime | None]] = []
        try:
            with self.rt.store.reading() as conn:
                rows = [(str(box), at) for box, at in conn.execute(query)]
        except SQLAlchemyError as exc:
            self.log.warning("metrics_seed_failed", error=error_text(exc))
        last_success = {box: as_utc(at) for box, at in rows}
        for mailbox in names:
            at = last_success.get(mailbox)
            metrics.seed_last_success(mailbox, at.timestamp() if at is not None else started)

    def _finish_polls(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for every poll in progress to end; log those that did not.

        The scheduler's shutdown waits for its own jobs, but an IDLE watcher
        polls on its own thread: without this, leases were released and the
        process exited while its message was half done.
        """
        deadline = time.monotonic() + grace
        unfinished = [
            name
            for name, poll in self._polls.items()
            if not poll.wait_idle(deadline - time.monotonic())
        ]
        if unfinished:
            self.log.warning("polls_abandoned", mailboxes=unfinished, grace=grace)

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
        # Paused until every mailbox's first poll has ended, as the reminders: a customer's
        # answer waiting there since before a restart is read before a case is closed
        # for want of one (or a resolved one for want of a reply).
        self.scheduler.add_job(
            self.close_stale, "interval", hours=1, id=CLOSE_STALE_JOB, next_run_time=None
        )
        if self.rt.settings.escalation.unanswered_hours:
            # Paused until every mailbox's first poll has ended (_report): an agent's
            # answer waiting there since before a restart is read first.
            self.scheduler.add_job(
                self.remind, "interval", minutes=CHECK_MINUTES, id=REMIND_JOB, next_run_time=None
            )
        retention = self.rt.settings.retention.inactive_days
        if 0 < retention < self.rt.settings.cases.reopen_days:
            # Allowed (the admin may mean it) but said: a reply within cases.reopen_days
            # of a resolution can no longer reopen a case erased meanwhile.
            self.log.warning(
                "retention_shorter_than_reopen",
                inactive_days=retention,
                reopen_days=self.rt.settings.cases.reopen_days,
            )
        if retention:
            # Paused until the first polls have ended, as the reminders: mail waiting since
            # before a restart is read (and counted as activity) first.
            self.scheduler.add_job(
                self.purge,
                "interval",
                days=1,
                id=PURGE_JOB,
                executor=PURGE_JOB,
                next_run_time=None,
            )
        ping_every = watchdog_interval()
        if ping_every is not None:
            self.scheduler.add_job(
                self.feed_watchdog,
                "interval",
                seconds=ping_every,
                args=[2 * ping_every],  # the WatchdogSec= timeout itself
                id=WATCHDOG_JOB,
                executor=WATCHDOG_JOB,
                next_run_time=start,
            )

        def _stop(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            notify("STOPPING=1", f"STATUS=stopping on {name}")
            self.log.info("stopping", signal=name)
            self.rt.stop.set()

        def _hangup(_signum: int, _frame: FrameType | None) -> None:
            # Not a reload: the settings are read once, by the CLI, and polls in
            # progress hold them. Said so that whoever sent it knows to restart.
            self.log.warning("sighup_ignored", hint="restart mailcase to apply a new configuration")

        self.seed_metrics()  # before the first scrape can come
        if self.rt.settings.metrics.listen:
            # Before the scheduler starts: an address that cannot be bound raises
            # ConfigError, and the process exits 2 with nothing left running.
            metrics.serve(self.rt.settings.metrics.listen)
            self.log.info("metrics_listening", listen=self.rt.settings.metrics.listen)
        if self.rt.settings.poll.idle is not False:
            for name, box in self.rt.settings.mailboxes.items():
                watcher = IdleWatcher(
                    name, box, self.poll, self.rt.stop, hold=partial(self._held_for, name)
                )
                watcher.start()
                self.watchers.append(watcher)

        handlers = {signal.SIGTERM: _stop, signal.SIGINT: _stop, signal.SIGHUP: _hangup}
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        self.log.info(
            "daemon_started",
            version=__version__,  # which code a journal's lines came from, across upgrades
            database=self.rt.store.engine.dialect.name,  # never the URL: it may hold a password
            mailboxes=list(self.rt.settings.mailboxes),
            interval=interval,
        )
        self.scheduler.start()
        try:
            offset = _wall_minus_monotonic()
            while not self.rt.stop.wait(CLOCK_CHECK_SECONDS):
                offset = self._after_a_clock_step(offset)
        finally:
            self.scheduler.shutdown(wait=True)
            # Before the leases go: an IDLE watcher may be polling on its own thread.
            self._finish_polls(STOP_GRACE)
            for watcher in self.watchers:
                watcher.join(timeout=5)
            for name in self.rt.settings.mailboxes:
                with contextlib.suppress(Exception):  # best effort: leases expire anyway
                    leases.release(self.rt.store, name)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.log.info("daemon_stopped")


# How often the main thread compares the wall clock with the monotonic one, and the
# step back it acts on (NTP slews small errors; a step is an admin's `date -s`, a
# sync correcting a clock that ran ahead, or chrony's first sync after a bad RTC).
CLOCK_CHECK_SECONDS = 5.0
CLOCK_STEP_SECONDS = 5.0


def _wall_minus_monotonic() -> float:
    return datetime.now(UTC).timestamp() - time.monotonic()


def run_daemon(rt: Runtime) -> None:
    Daemon(rt).run()
