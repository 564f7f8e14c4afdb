"""systemd/mailcase.service: what it promises, checked with systemd's own tools.

``systemd-analyze`` (Debian package ``systemd``) is required: without it these tests
fail, they are not skipped, so CI cannot go green without checking the unit.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

from mailcase.errors import EXIT_CONFIG, EXIT_SCHEMA

UNIT = REPO / "systemd" / "mailcase.service"
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(
            "systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd); "
            "it is needed to check systemd/mailcase.service",
            pytrace=False,
        )
    return found


def service_entries() -> dict[str, list[str]]:
    """Every ``Key=value`` of the [Service] section, repeated keys kept in order."""
    entries: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_overall_exposure_is_at_most_two() -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert found, f"no exposure in the output:\n{result.stdout}\n{result.stderr}"
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def test_unit_verifies(tmp_path: Path) -> None:
    # `systemd-analyze verify` also checks that ExecStart's binary exists and is
    # executable; /usr/bin/mailcase exists only once the package is installed. So a
    # copy whose ExecStart runs /bin/true is verified (every other line as shipped),
    # and ExecStart itself is checked word for word by the next test.
    copy = tmp_path / UNIT.name
    text = UNIT.read_text(encoding="utf-8")
    copy.write_text(text.replace("ExecStart=/usr/bin/mailcase ", "ExecStart=/bin/true ", 1))
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify exits 0 on unknown or misspelt keys and only warns: any line about
    # our unit is a failure (lines about the host's own units are not ours).
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_unit_runs_the_daemon_as_a_notify_service() -> None:
    service = service_entries()
    assert service["ExecStart"] == ["/usr/bin/mailcase --config /etc/mailcase/mailcase.toml run"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"], "a watchdog is configured"
    assert service["Restart"] == ["on-failure"]
    # Death by SIGHUP counts as clean to systemd: it must still restart.
    assert "SIGHUP" in " ".join(service["RestartForceExitStatus"]).split()
    prevented = " ".join(service["RestartPreventExitStatus"]).split()
    assert str(EXIT_CONFIG) in prevented  # a config error is not retried
    assert str(EXIT_SCHEMA) in prevented  # nor a schema newer than the code: a restart cannot help
    assert service["StateDirectory"] == ["mailcase"]
    assert service["ConfigurationDirectory"] == ["mailcase"]
    # Passwords arrive as credentials, named in the config by password_credential.
    assert any(c.startswith("contacto.pw:") for c in service["LoadCredential"])


def test_the_daemon_starts_after_the_network_and_the_clock() -> None:
    # Folio years, reopen windows and visit checks read the wall clock.
    unit = [
        line.partition("=")[2].split()
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith("After=")
    ]
    after = {target for targets in unit for target in targets}
    assert {"network-online.target", "time-sync.target"} <= after
