"""The wheel carries what an installed mailcase needs: templates and migrations."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

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
    assert "mailcase/migrations/env.py" in names
    assert "mailcase/migrations/script.py.mako" in names
    assert any(n.startswith("mailcase/migrations/versions/0001") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailcase", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("mailcase ")
