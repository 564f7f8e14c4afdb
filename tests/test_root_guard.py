"""Root running a command that writes, over state that belongs to the service's user.

What root created in the state directory (the message store's folders, the
database's -wal and -shm, the delivery lock) the service could not write
afterwards: its polls failed much later, naming only ``storage.directory``.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, write_config

from mailcase.cli import _writes, build_parser

NOBODY = 65534


@pytest.mark.parametrize(
    ("argv", "writes"),
    [
        (["poll"], True),
        (["run"], True),
        (["db", "upgrade"], True),
        (["db", "current"], False),
        # Opening a WAL database makes its -wal and -shm when missing: root's would
        # lock the service out of its own database.
        (["db", "backup", "/tmp/copy.db"], True),
        (["cases", "list"], False),
        (["cases", "show", "PLR-2026-000001"], False),
        (["cases", "close", "PLR-2026-000001"], True),
        (["cases", "remind"], True),  # queues reminders
        (["cases", "list", "--unanswered"], False),
        (["messages", "list"], False),
        (["messages", "retry", "--all"], True),
        (["messages", "dismiss", "3", "--mailbox", "contacto"], True),
        (["outbox", "list"], False),
        (["outbox", "retry", "--all"], True),
        (["check"], False),
        (["status"], False),
    ],
)
def test_which_commands_write(argv: list[str], writes: bool) -> None:
    assert _writes(build_parser().parse_args(argv)) is writes


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play root and to chown")
def test_root_is_told_to_run_as_the_owner_of_the_state(tmp_path: Path, capsys: Any) -> None:
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    config = write_config(tmp_path, servers, types.SimpleNamespace(port=3))
    cli = Cli(config, capsys)
    opened = ("cases", "open", "--channel", "phone", "--subject", "Llamada", "--text", "Sin red.")
    # Root owns it all: root may do anything.
    code, _, err = cli(*opened)
    assert code == 0, err
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    os.chown(store, NOBODY, NOBODY)
    code, _, err = cli(*opened)
    assert code == 2
    assert f"{store} belongs to nobody" in err and "sudo -u nobody mailcase" in err
    assert err.count("\n") == 1
    # Reading is harmless.
    assert cli("cases", "list")[0] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play root and to chown")
def test_a_state_directory_not_made_yet_is_judged_by_its_parent(
    tmp_path: Path, capsys: Any
) -> None:
    # PostgreSQL before the service's first start: no store yet, and root made it.
    state = tmp_path / "var-lib-mailcase"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    config = write_config(tmp_path, servers, types.SimpleNamespace(port=3))
    text = config.read_text()
    config.write_text(text.replace(f'"{tmp_path}/store"', f'"{state}/store"'))
    code, _, err = Cli(config, capsys)("poll")
    assert code == 2 and f"{state} belongs to nobody" in err
    assert not (state / "store").exists()
