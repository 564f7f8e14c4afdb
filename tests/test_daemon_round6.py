"""The daemon over a long run (sixth review round's soak)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

import apscheduler.schedulers.base
import pytest
import structlog
from helpers import mail, write_config
from servers import Dovecot, SmtpSink

from mailcase import daemon, store
from mailcase.config import load_settings
from mailcase.idle import IdleWatcher
from mailcase.service import Runtime, poll_mailbox

pytestmark = pytest.mark.integration


def test_an_empty_poll_is_logged_at_debug_and_a_poll_with_mail_at_info(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Every empty poll logged an INFO line per mailbox: 2,880 lines a day of nothing.
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink)))
    configured = structlog.get_config()
    # Every level reaches the capture, whatever an earlier test's command configured.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            poll_mailbox(rt, "contacto")
            mailboxes.append("contacto", mail())
            poll_mailbox(rt, "contacto")
    finally:
        structlog.configure(**configured)
        rt.store.dispose()
    polled = [(e["log_level"], e["fetched"]) for e in logs if e["event"] == "mailbox_polled"]
    assert polled == [("debug", 0), ("info", 1)]


class _SteppedClock:
    """``datetime`` whose ``now`` is off by ``offset``: the wall clock as APScheduler and
    mailcase read it after an NTP step, the monotonic clock untouched."""

    offset = timedelta(0)

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> None:
        class Stepped(datetime):
            @classmethod
            def now(cls_, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
                return datetime.now(tz) + cls.offset

        for module in (apscheduler.schedulers.base, daemon, store):
            monkeypatch.setattr(module, "datetime", Stepped)


def test_a_clock_stepped_back_does_not_stop_the_schedule(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set back an hour, every scheduled job (polls, delivery, the watchdog's pings)
    # waited for the old wall-clock time: no mail read for an hour, or systemd killing
    # the daemon for a missed watchdog.
    config = write_config(tmp_path, mailboxes, sink)
    config.write_text(config.read_text().replace("[poll]\n", "[poll]\nidle = false\n", 1))
    monkeypatch.setattr(daemon, "CLOCK_CHECK_SECONDS", 0.2, raising=False)
    _SteppedClock.install(monkeypatch)
    rt = Runtime.open(load_settings(config))
    polled = threading.Event()
    done: list[str] = []

    def step_then_mail() -> None:
        try:
            assert polled.wait(30), "no first poll"
            time.sleep(1)  # the first round is over; the next is 5 s away
            _SteppedClock.offset = -timedelta(hours=1)
            mailboxes.append("contacto", mail(subject="Falla tras el ajuste de hora"))
            sink.wait_for(1, timeout=20)
            done.append("acknowledged")
        finally:
            rt.stop.set()

    the_daemon = daemon.Daemon(rt)
    first = the_daemon._report

    def report(name: str, result: str) -> None:
        first(name, result)
        polled.set()

    monkeypatch.setattr(the_daemon, "_report", report)
    driver = threading.Thread(target=step_then_mail, daemon=True)
    driver.start()
    try:
        the_daemon.run()  # the main thread: it installs the signal handlers
    finally:
        driver.join(30)
        rt.store.dispose()
    assert done == ["acknowledged"]


def test_idle_waits_out_the_polls_back_off_before_it_reconnects(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # The watcher reconnected while the polls' back-off still held, logged idle_resumed,
    # then dropped at its first look at the hold: idle_failed again, and IDLE off for
    # another back-off after the mailbox had recovered.
    settings = load_settings(write_config(tmp_path, mailboxes, sink))
    released_at = time.monotonic() + 1.5
    stop = threading.Event()
    watcher = IdleWatcher(
        "contacto",
        settings.mailboxes["contacto"],
        lambda _: None,
        stop,
        hold=lambda: max(released_at - time.monotonic(), 0.0),
    )
    watcher._failing = True  # an outage is being reported: idle_failed was logged
    with structlog.testing.capture_logs() as logs:
        watcher.start()
        try:
            assert watcher.ready.wait(10)
            time.sleep(0.5)
        finally:
            stop.set()
            watcher.join(10)
    events = [e["event"] for e in logs if e["event"].startswith("idle_")]
    assert events == ["idle_resumed"]
    assert time.monotonic() - released_at > 0.4  # connected after the hold, not before
