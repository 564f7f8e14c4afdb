"""The daemon over a long run (sixth review round's soak)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog
from helpers import mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.config import load_settings
from mailcase.service import Runtime, poll_mailbox

pytestmark = pytest.mark.integration


def test_an_empty_poll_is_logged_at_debug_and_a_poll_with_mail_at_info(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    # Every empty poll logged an INFO line per mailbox: 2,880 lines a day of nothing.
    rt = Runtime.open(load_settings(write_config(tmp_path, mailboxes, sink)))
    try:
        with structlog.testing.capture_logs() as logs:
            poll_mailbox(rt, "contacto")
            mailboxes.append("contacto", mail())
            poll_mailbox(rt, "contacto")
    finally:
        rt.store.dispose()
    polled = [(e["log_level"], e["fetched"]) for e in logs if e["event"] == "mailbox_polled"]
    assert polled == [("debug", 0), ("info", 1)]
