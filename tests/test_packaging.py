"""The wheel carries what an installed mailcase needs; the command exits as it should."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from mailcase.errors import EXIT_DATABASE

REPO = Path(__file__).resolve().parents[1]


def test_wheel_carries_default_templates_and_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("mailcase-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for lang in ("es", "en"):
        assert f"mailcase/templates/{lang}/acknowledgement.txt.j2" in names
        assert f"mailcase/templates/{lang}/acknowledgement.html.j2" in names
        assert f"mailcase/templates/replies/{lang}/reinicio-modem.txt.j2" in names
    assert "mailcase/migrations/env.py" in names
    assert "mailcase/migrations/script.py.mako" in names
    assert any(n.startswith("mailcase/migrations/versions/0001") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailcase", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("mailcase ")


_ENTRY_PROBE = """
import atexit, sys
from mailcase.cli import entry

class Teardown:
    def __del__(self):
        sys.stderr.write("torn down\\n")

kept = Teardown()
atexit.register(lambda: sys.stderr.write("exit handlers ran\\n"))
sys.argv = ["mailcase", "--config", sys.argv[1], "db", "upgrade"]
entry()
"""


def test_the_command_flushes_output_runs_exit_handlers_and_skips_teardown(tmp_path: Path) -> None:
    """`mailcase` (cli.entry) ends with os._exit: the exit code and piped output survive it."""
    config = REPO / "config" / "mailcase.example.toml"
    env = {**os.environ, "MAILCASE_DATABASE__URL": f"sqlite:///{tmp_path}/mailcase.db"}
    result = subprocess.run(
        [sys.executable, "-c", _ENTRY_PROBE, str(config)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database is at revision ")  # block-buffered pipe, flushed
    assert "exit handlers ran" in result.stderr
    assert "torn down" not in result.stderr  # the interpreter was not torn down

    env["MAILCASE_DATABASE__URL"] = f"sqlite:///{tmp_path}/not-a-directory/x/mailcase.db"
    (tmp_path / "not-a-directory").write_text("")
    failed = subprocess.run(
        [sys.executable, "-c", _ENTRY_PROBE, str(config)], capture_output=True, text=True, env=env
    )
    assert failed.returncode == EXIT_DATABASE, failed.stderr
