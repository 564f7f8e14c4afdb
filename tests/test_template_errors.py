"""A notice template the admin broke: said once, naming the file, and no mail blamed for it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase.render import shipped_templates

pytestmark = pytest.mark.integration


def _overridden(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> tuple[Cli, Path]:
    override = tmp_path / "templates"
    (override / "es").mkdir(parents=True)
    shutil.copy(shipped_templates() / "es" / "acknowledgement.txt.j2", override / "es")
    config = write_config(tmp_path, mailboxes, sink)
    config.write_text(config.read_text() + f'\n[templates]\ndirectory = "{override}"\n')
    return Cli(config, capsys), override / "es" / "acknowledgement.txt.j2"


def _break(template: Path) -> str:
    good = template.read_text(encoding="utf-8")
    template.write_text("Hola, {{ customer_name }\n" + good, encoding="utf-8")
    return good


def test_a_broken_template_fails_the_poll_and_quarantines_nothing(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli, template = _overridden(tmp_path, mailboxes, sink, capsys)
    good = _break(template)
    mailboxes.append("contacto", mail())
    code, _, err = cli("poll")
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("mailcase:")]
    assert str(template) in line and "line 1" in line and "Traceback" not in err
    assert cli.json("messages", "list") == [] and sink.messages == []
    # Fixed: the message is read again and answered, as if nothing had happened.
    template.write_text(good, encoding="utf-8")
    cli.poll()
    [row] = cli.json("messages", "list")
    assert row["disposition"] == "new_case" and len(sink.messages) == 1


def test_a_broken_template_refuses_a_phone_case_whole(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli, template = _overridden(tmp_path, mailboxes, sink, capsys)
    _break(template)
    code, _, err = cli(
        "cases", "open", "--channel", "phone", "--subject", "Sin servicio",
        "--text", "Llamó.", "--customer", "juan.perez@example.com",
    )  # fmt: skip
    assert code == 2 and str(template) in err and "Traceback" not in err
    assert cli.json("cases", "list") == []  # not opened, so not opened twice on a retry


def test_check_names_a_broken_or_misnamed_template(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any
) -> None:
    cli, template = _overridden(tmp_path, mailboxes, sink, capsys)
    assert cli("db", "upgrade")[0] == 0
    code, out, _ = cli("check")
    assert code == 0 and "1 of" in _row(out, "templates")
    good = _break(template)
    code, out, err = cli("check")
    assert code == 1 and "FAILED" in _row(out, "templates") and str(template) in err
    template.write_text(good, encoding="utf-8")
    template.rename(template.with_name("acknowledgment.txt.j2"))  # misspelt: never used
    code, out, err = cli("check")
    assert code == 1 and "es/acknowledgment.txt.j2" in err and "never uses" in err
    shutil.rmtree(template.parent.parent)
    code, out, err = cli("check")
    assert code == 1 and "is not a directory" in err


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name))


def test_a_template_mailcase_may_not_read_is_one_sentence_naming_it(tmp_path: Path) -> None:
    # A root-owned 0600 file, or one moved with mv that kept its SELinux label: an
    # OSError, no TemplateError, so a poll quarantined every message it rendered for.
    import os
    import subprocess
    import sys

    override = tmp_path / "templates"
    (override / "es").mkdir(parents=True)
    template = override / "es" / "merged.txt.j2"
    shutil.copy(shipped_templates() / "es" / "merged.txt.j2", template)
    template.chmod(0o600)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads any file: take away the capability that lets it
        os.chown(template, 65534, 65534)
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    else:
        template.chmod(0)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from test_templates_all import context\n"
        "from mailcase.errors import TemplateError\n"
        "from mailcase.render import render_body\n"
        "try:\n"
        "    render_body('merged', 'es', context('merged'),"
        " override=Path(sys.argv[1]))\n"
        "except TemplateError as exc:\n"
        "    print('TemplateError:', exc)\n"
    )
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", script, str(override)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"TemplateError: template {template} cannot be read: Permission denied"
    ), done.stdout + done.stderr
