"""Operations review, round 2: host names, relative paths, the SMTP login, the example
config against the systemd unit, mailbox names and the environment, CLI usage errors,
database.url options, APScheduler's skipped ticks, and the CLI's tables."""

from __future__ import annotations

import logging
import os
import re
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, write_config
from test_log_bridge import restore_logging

from mailcase import logs
from mailcase.config import _variable_at, load_settings
from mailcase.errors import EXIT_CONFIG, ConfigError
from mailcase.store import Store

__all__ = ["restore_logging"]  # the fixture, shared with test_log_bridge

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "mailcase.example.toml"
UNIT = REPO / "systemd" / "mailcase.service"
AREAS = '[areas.redes]\nnotify = "redes@internet-plarey.com.mx"\nname = "Redes y nodos"\n'


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILCASE_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("MAILCASE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def offline_config(directory: Path, *, extra: str = "", db_url: str | None = None) -> Path:
    """A config whose servers are never reached (ports 1 to 3: nothing listens there)."""
    servers: Any = types.SimpleNamespace(port=1, ssl_port=2, users={"contacto": "x", "info": "y"})
    sink: Any = types.SimpleNamespace(port=3)
    return write_config(directory, servers, sink, extra=extra, db_url=db_url)


def config_error(config: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    return str(info.value)


@pytest.fixture
def cli(tmp_path: Path, capsys: Any) -> Cli:
    """The CLI on an offline config with an area, its database created."""
    runner = Cli(offline_config(tmp_path, extra=AREAS), capsys)
    assert runner("db", "upgrade")[0] == 0
    return runner


OPEN = ("cases", "open", "--channel", "phone", "--subject", "s", "--text", "t")


def exit_code(cli: Cli, *args: str) -> tuple[int, str]:
    """The exit code and stderr of ``mailcase ARGS``, whether argparse or main ends it."""
    try:
        code, _, err = cli(*args)
    except SystemExit as exited:  # argparse's own usage errors leave main this way
        code, err = int(str(exited.code)), cli.capsys.readouterr().err
    return code, err


def open_case(cli: Cli, *extra: str) -> str:
    folio: str = cli.json(
        "cases", "open", "--channel", "phone", "--subject", "Sin servicio", "--text", "llamó",
        *extra,
    )["folio"]  # fmt: skip
    return folio


# --- 1: host names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["imap..example.net", "a" * 64 + ".example.net", "imap example.net", " imap.example.net"],
)
@pytest.mark.parametrize("table", ["mailboxes.contacto", "smtp"])
def test_a_host_that_is_not_a_host_name_is_a_config_error_naming_the_key(
    tmp_path: Path, table: str, host: str
) -> None:
    config = offline_config(tmp_path)
    text = config.read_text()
    section = f"[{table}]\n"
    start = text.index(section)
    old = text.index('host = "127.0.0.1"', start)
    config.write_text(text[:old] + f'host = "{host}"' + text[old + len('host = "127.0.0.1"') :])
    message = config_error(config)
    assert message.startswith(f"bad value for {table}.host: ")
    assert str(config) in message


def test_host_names_and_addresses_that_resolve_are_kept(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    config.write_text(
        config.read_text()
        .replace('host = "127.0.0.1"', 'host = "imap.correo-años.mx"\nallow_insecure = true', 1)
        .replace('host = "127.0.0.1"', 'host = "::1"', 1)
    )
    settings = load_settings(config)
    assert settings.mailboxes["contacto"].host == "imap.correo-años.mx"
    assert settings.mailboxes["info"].host == "::1"


def test_cases_open_with_a_bad_smtp_host_exits_2_and_opens_no_case(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCASE_SMTP__HOST", "smtp..example.net")
    code, err = exit_code(
        cli, "cases", "open", "--channel", "phone", "--subject", "s", "--text", "t",
        "--customer", "juan@example.com",
    )  # fmt: skip
    assert code == EXIT_CONFIG
    assert "smtp.host" in err and "MAILCASE_SMTP__HOST" in err
    monkeypatch.delenv("MAILCASE_SMTP__HOST")
    assert cli.json("cases", "list") == []


# --- 2: relative paths ------------------------------------------------------------------------


def test_relative_paths_are_read_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc, home = tmp_path / "etc", tmp_path / "home"
    etc.mkdir()
    home.mkdir()
    config = offline_config(etc, db_url="sqlite:///data/mailcase.db")
    text = config.read_text().replace(f'directory = "{etc}/store"', 'directory = "store"')
    text = text.replace('password = "x"', 'password_file = "contacto.pw"\nca_file = "ca.pem"')
    text = text.replace("[smtp]\n", '[smtp]\nusername = "mesa"\npassword_file = "../smtp.pw"\n')
    text = text.replace("[agents]\n", '[agents]\nsigning_secret_file = "signing.secret"\n')
    config.write_text(text + '[templates]\ndirectory = "tpl"\n')
    monkeypatch.chdir(home)

    settings = load_settings(config)
    assert settings.database.url == f"sqlite:///{etc}/data/mailcase.db"
    assert settings.storage.directory == etc / "store"
    assert settings.templates.directory == etc / "tpl"
    contacto = settings.mailboxes["contacto"]
    assert contacto.password_file == etc / "contacto.pw"
    assert contacto.ca_file == etc / "ca.pem"
    assert settings.smtp.password_file == etc / "../smtp.pw"
    assert settings.agents.signing_secret_file == etc / "signing.secret"


def test_a_relative_path_from_the_environment_is_relative_to_the_config_file_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = offline_config(tmp_path)
    monkeypatch.chdir("/")
    monkeypatch.setenv("MAILCASE_STORAGE__DIRECTORY", "blobs")
    monkeypatch.setenv("MAILCASE_DATABASE__URL", "sqlite:///mc.db")
    settings = load_settings(config)
    assert settings.storage.directory == tmp_path / "blobs"
    assert settings.database.url == f"sqlite:///{tmp_path}/mc.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/mailcase/mailcase.db",
        "sqlite:///:memory:",
        "sqlite://",
        "postgresql+psycopg://mailcase:pw@db.example.net/mailcase",
    ],
)
def test_other_database_urls_are_kept_as_written(tmp_path: Path, url: str) -> None:
    assert load_settings(offline_config(tmp_path, db_url=url)).database.url == url


@pytest.mark.parametrize(
    "url", ["sqlite:///file:mc.db?mode=ro&uri=true", "sqlite:///file:/var/lib/mc.db?uri=true"]
)
def test_an_sqlite_uri_is_a_config_error(tmp_path: Path, url: str) -> None:
    # Read as a relative path "file:/...": the sent log, the delivery lock and an
    # empty decoy database went under the command's working directory, and SQLite
    # created the real file readable by all (fifth review round).
    with pytest.raises(ConfigError, match="SQLite URI is not supported"):
        load_settings(offline_config(tmp_path, db_url=url))


def test_absolute_paths_and_the_defaults_are_kept(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    text = (
        config.read_text().replace("[storage]\n", "").replace(f'directory = "{tmp_path}/store"', "")
    )
    config.write_text(text)
    settings = load_settings(config)
    assert settings.storage.directory == Path("/var/lib/mailcase/store")
    assert settings.database.url == f"sqlite:///{tmp_path}/mailcase.db"
    assert settings.templates.directory is None


def test_commands_from_another_directory_use_the_same_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    etc, home = tmp_path / "etc", tmp_path / "home"
    etc.mkdir()
    home.mkdir()
    config = offline_config(etc, db_url="sqlite:///mailcase.db")
    config.write_text(config.read_text().replace(f'"{etc}/store"', '"store"'))
    cli = Cli(config, capsys)
    monkeypatch.chdir(etc)
    assert cli("db", "upgrade")[0] == 0
    folio = open_case(cli)
    monkeypatch.chdir(home)
    assert [c["folio"] for c in cli.json("cases", "list")] == [folio]
    assert not list(home.iterdir())  # no second database, no store


# --- 3: an SMTP password needs a user name ----------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ['password = "s3cret"', 'password_file = "/etc/mailcase/smtp.pw"',
     'password_credential = "smtp.pw"'],
)  # fmt: skip
def test_an_smtp_password_without_username_is_a_config_error(tmp_path: Path, line: str) -> None:
    config = offline_config(tmp_path)
    config.write_text(config.read_text().replace("[smtp]\n", f"[smtp]\n{line}\n"))
    message = config_error(config)
    assert "smtp.username" in message
    assert "s3cret" not in message
    config.write_text(config.read_text().replace("[smtp]\n", '[smtp]\nusername = "mesa"\n'))
    assert load_settings(config).smtp.username == "mesa"


# --- 4: the example config and the systemd unit -----------------------------------------------


def test_the_example_reads_its_passwords_as_the_units_credentials() -> None:
    unit = UNIT.read_text(encoding="utf-8")
    example = EXAMPLE.read_text(encoding="utf-8")
    loaded = {line.split(":", 1)[0] for line in re.findall(r"(?m)^LoadCredential=(.+)$", unit)}
    settings = load_settings(EXAMPLE)
    servers = [*settings.mailboxes.values(), settings.smtp]
    named = {s.password_credential for s in servers}
    assert named == loaded
    # No other password source in the keys in force: the unit makes the files root-only.
    assert not re.findall(r"(?m)^password(_file)? *=", example)


def test_the_unit_gives_the_config_files_mode_as_the_readme_installs_it() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    install = re.search(
        r"install -m (\d+) -o (\w+) -g (\w+) \S+ /etc/mailcase/mailcase.toml", readme
    )
    assert install is not None
    mode, owner, group = install.groups()
    header = UNIT.read_text(encoding="utf-8").split("\n[Unit]")[0]
    assert f"{mode} {owner}:{group}" in " ".join(header.replace("#", " ").split())
    assert "0644" not in header


# --- 5: mailbox names and the environment -----------------------------------------------------


def test_a_mailbox_name_with_capitals_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = offline_config(tmp_path)
    config.write_text(config.read_text().replace("[mailboxes.contacto]", "[mailboxes.Soporte]"))
    monkeypatch.setenv("MAILCASE_MAILBOXES__SOPORTE__PASSWORD", "nueva")
    message = config_error(config)
    assert message.startswith("bad value for mailboxes.Soporte: ")
    assert "lower-case" in message
    assert message.endswith(f"in {config}")


def test_a_table_rule_broken_by_a_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = offline_config(tmp_path)  # security = "none": allowed to loopback only
    monkeypatch.setenv("MAILCASE_MAILBOXES__INFO__HOST", "imap.example.net")
    message = config_error(config)
    assert message.startswith("bad value for mailboxes.info: ")
    assert f"in environment variable MAILCASE_MAILBOXES__INFO__HOST (overriding {config})" in (
        message
    )


def test_a_mailbox_only_the_environment_gives_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = offline_config(tmp_path)
    monkeypatch.setenv("MAILCASE_MAILBOXES__SOPORT__PASSWORD", "nueva")  # a typo of a name
    message = config_error(config)
    assert message.startswith("missing required key mailboxes.soport.")
    assert "environment variable MAILCASE_MAILBOXES__SOPORT__PASSWORD" in message


def test_variable_at_names_the_variables_under_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCASE_SMTP__HOST", "smtp.example.net")
    monkeypatch.setenv("MAILCASE_SMTP__PORT", "25")
    monkeypatch.setenv("MAILCASE_POLL__IDLE", "false")
    assert _variable_at(("smtp",)) == "MAILCASE_SMTP__HOST, MAILCASE_SMTP__PORT"
    assert _variable_at(("smtp", "host")) == "MAILCASE_SMTP__HOST"
    assert _variable_at(("smtp", "security")) is None
    assert _variable_at(("database",)) is None


# --- 6: CLI usage errors ----------------------------------------------------------------------


def test_usage_errors_exit_2_with_one_sentence(cli: Cli) -> None:
    folio = open_case(cli)
    for args, words in [
        (("cases", "open", "--channel", "phone", "--subject", "s", "--text", "t",
          "--customer", "juan"), "'juan' is not a mail address"),
        (("messages", "retry", "7"), "messages retry UID needs --mailbox"),
        (("cases", "visit", folio, "--date", "mañana"), "'mañana' is not a date"),
        (("cases", "visit", folio, "--date", "2027-01-10", "--time", "25:00"),
         "'25:00' is not a time"),
        (("cases", "participant", folio, "--add", "juan"), "'juan' is not a mail address"),
        (("cases", "participant", folio, "--add", "juan@example.com pedro@example.com"),
         "is not a mail address"),
    ]:  # fmt: skip
        code, err = exit_code(cli, *args)
        assert code == EXIT_CONFIG, (args, err)
        (line,) = [line for line in err.splitlines() if line.startswith("mailcase: ")]
        assert words in line
    assert len(cli.json("cases", "list")) == 1
    texts = [m["text"] for m in cli.json("cases", "show", folio)["messages"]]
    assert not any("participant" in t for t in texts)


def test_a_customer_is_taken_from_name_and_address(cli: Cli) -> None:
    folio = open_case(cli, "--customer", "Juan Pérez <Juan@Telefonía-Señal.mx>")
    # Kept as mail spells it: the domain in its ASCII (IDNA) form (inbound.canonical_address).
    assert cli.json("cases", "show", folio)["customer"] == "juan@xn--telefona-seal-2ib8d.mx"
    code, err = exit_code(cli, *OPEN, "--customer", "juan perez@example.com")
    assert code == EXIT_CONFIG and "is not a mail address" in err


def test_a_participant_is_taken_from_name_and_address(cli: Cli) -> None:
    folio = open_case(cli)
    code, _, err = cli("cases", "participant", folio, "--add", "Juan Pérez <Juan@Example.com>")
    assert code == 0, err
    texts = [m["text"] for m in cli.json("cases", "show", folio)["messages"]]
    assert "participant juan@example.com added" in texts


@pytest.mark.parametrize(
    ("text", "address"),
    [("juan@example.com", "juan@example.com"), ("<Juan@Example.com>", "juan@example.com"),
     ('"Pérez, Juan" <juan@example.com>', "juan@example.com")],
)  # fmt: skip
def test_mail_address_option(text: str, address: str) -> None:
    from mailcase.cli_cases import _mail_address

    assert _mail_address("--add", text) == address


@pytest.mark.parametrize(
    "text",
    ["", "juan", "juan@", "juan@example", "a@b.com c@d.com", "Juan <juan>",
     "juan@example.com\n#cerrar"],
)  # fmt: skip
def test_mail_address_option_refuses(text: str) -> None:
    from mailcase.cli_cases import _mail_address
    from mailcase.cli_common import UsageError

    with pytest.raises(UsageError, match=r"^--add .* is not a mail address"):
        _mail_address("--add", text)


# --- 7: database.url options the driver refuses ----------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [("bogus=1", 'invalid connection option "bogus"'),
     ("password=qu3rys3cret&connect_timeout=x", "bad value for connect_timeout"),
     ("connect_timeout=pa55word", "bad value for connect_timeout")],
)  # fmt: skip
def test_a_connection_option_the_driver_refuses_is_a_config_error(query: str, words: str) -> None:
    url = f"postgresql+psycopg://mailcase:pa55word@127.0.0.1:1/mailcase?{query}"
    for attempt in (
        lambda: Store.open(url, auto_upgrade=False),
        lambda: Store.schema_state(url),
    ):
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith("database.url ")
        assert words in message
        assert "pa55word" not in message and "qu3rys3cret" not in message


def test_db_current_with_a_refused_option_exits_2(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli = Cli(offline_config(tmp_path), capsys)
    monkeypatch.setenv(
        "MAILCASE_DATABASE__URL", "postgresql+psycopg://mailcase:pa55word@127.0.0.1:1/m?bogus=1"
    )
    code, _, err = cli("db", "current")
    assert code == EXIT_CONFIG
    assert "database.url" in err and "pa55word" not in err


# --- 8: APScheduler's skipped ticks -----------------------------------------------------------


def test_a_tick_skipped_during_a_long_poll_is_not_logged(
    restore_logging: None, capsys: Any
) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    logs.configure("info", "json")
    release = threading.Event()
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        timezone="UTC",
    )
    skipped = threading.Event()
    scheduler.add_listener(lambda _event: skipped.set(), mask=2**16)  # EVENT_JOB_MAX_INSTANCES
    scheduler.add_job(release.wait, "interval", seconds=0.1, args=[5], id="poll contacto")
    scheduler.start()
    try:
        assert skipped.wait(5), "APScheduler skipped no tick"
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %r was missed", "x")
    err = capsys.readouterr().err
    assert "maximum number of running instances" not in err
    assert "Run time of job 'x' was missed" in err  # APScheduler's other warnings stay


# --- 9: the CLI's tables ----------------------------------------------------------------------


def test_cases_list_shows_the_area(cli: Cli) -> None:
    folio = open_case(cli)
    assert cli("cases", "route", folio, "--area", "redes")[0] == 0
    _, out, _ = cli("cases", "list")
    header, row = out.splitlines()
    assert "AREA" in header.split()
    assert row[header.index("AREA") :].split()[0] == "redes"


def test_cases_show_gives_the_customers_name(cli: Cli) -> None:
    folio = open_case(cli, "--name", "Juan Pérez")
    _, out, _ = cli("cases", "show", folio)
    assert re.search(r"(?m)^name: +Juan Pérez$", out)


def test_cases_show_says_how_much_of_a_long_text_it_left_out(cli: Cli) -> None:
    text = "\n".join(f"línea {n}" for n in range(1, 46))
    folio: str = cli.json("cases", "open", "--channel", "phone", "--subject", "s", "--text", text)[
        "folio"
    ]
    _, out, _ = cli("cases", "show", folio)
    assert "línea 40" in out and "línea 41" not in out
    assert f"5 more lines: mailcase cases show {folio} --json has the whole text" in out


@pytest.mark.parametrize(
    ("word", "outcome"),
    [("valid", "valid"), ("procedente", "valid"), ("Improcedente", "invalid"),
     ("invalid", "invalid")],
)  # fmt: skip
def test_resolve_takes_the_mail_commands_outcomes(cli: Cli, word: str, outcome: str) -> None:
    folio = open_case(cli)
    code, _, err = cli("cases", "resolve", folio, "--outcome", word, "--cause", "módem")
    assert code == 0, err
    assert cli.json("cases", "show", folio)["outcome"] == outcome


def test_resolve_refuses_an_outcome_the_mail_commands_do_not_know(cli: Cli) -> None:
    folio = open_case(cli)
    code, err = exit_code(cli, "cases", "resolve", folio, "--outcome", "upheld", "--cause", "x")
    assert code == EXIT_CONFIG
    assert "'upheld' is not an outcome" in err


@pytest.mark.parametrize("key", ["address", "notify"])
def test_an_own_address_with_a_non_ascii_domain_is_refused_with_its_ascii_form(
    tmp_path: Path, key: str
) -> None:
    # Every message to contacto@telefonía.mx was quarantined (no Message-ID domain could
    # be made of it), and every notice needed SMTPUTF8.
    config = tmp_path / "mailcase.toml"
    address = "contacto@telefonía.mx" if key == "address" else "soporte@telefonía.mx"
    text = EXAMPLE.read_text(encoding="utf-8")
    if key == "address":
        text = text.replace('"contacto@internet-plarey.com.mx"', f'"{address}"', 1)
    else:
        text = text.replace('notify = "soporte@internet-plarey.com.mx"', f'notify = "{address}"')
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"xn--telefona-i2a\.mx"):
        load_settings(config)
