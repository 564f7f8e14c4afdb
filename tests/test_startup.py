"""Start-up errors an admin meets first: one line naming the key or path, the right exit code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import run_process, write_config
from servers import Dovecot, SmtpSink

from mailcase.errors import EXIT_CONFIG, EXIT_DATABASE

pytestmark = pytest.mark.integration


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["poll", "run"])
def test_a_missing_password_file_stops_poll_and_run_naming_the_key(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, command: str
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    password = mailboxes.users["info"]
    text = config.read_text()
    assert f'password = "{password}"' in text
    config.write_text(
        text.replace(f'password = "{password}"', 'password_file = "/nonexistent/info.pw"')
    )
    result = run_process(config, command)  # `run` would otherwise keep failing every poll
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert (
        line.startswith("mailcase: mailboxes.info.password_file: ")
        and "/nonexistent/info.pw" in line
    )
    assert not (tmp_path / "store").exists()  # stopped before touching anything


def test_an_unusable_storage_directory_is_one_line_naming_the_key(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    config = write_config(tmp_path, mailboxes, sink)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    text = config.read_text()
    config.write_text(
        text.replace(f'directory = "{tmp_path}/store"', f'directory = "{blocker}/store"')
    )
    result = run_process(config, "poll")
    assert result.returncode == EXIT_CONFIG
    line = one_line(result)
    assert line.startswith(f"mailcase: storage.directory {blocker / 'store'} cannot be used")


def test_an_uncreatable_database_file_is_one_line_naming_it(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, mailboxes, sink, db_url=f"sqlite:///{blocker}/mailcase.db")
    for args in (("poll",), ("cases", "list")):
        result = run_process(config, *args)
        assert result.returncode == EXIT_DATABASE, result.stderr
        assert f"{blocker}/mailcase.db" in one_line(result)
