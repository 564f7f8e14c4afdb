"""config: the example file, the documented keys, one-line errors naming key and file, secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailcase.config import (
    DEFAULT_CONFIG_PATH,
    Settings,
    config_path,
    load_settings,
)
from mailcase.errors import EXIT_CONFIG, ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "mailcase.example.toml"
PASSWORD = "s3cr3t-Contraseña"

# Exactly the keys of the issue that asked for the config file, nothing more.
ISSUE_CONFIG = f"""
[database]
url = "sqlite:////var/lib/mailcase/mailcase.db"

[storage]
directory = "/var/lib/mailcase/store"

[mailboxes.contacto]
address = "contacto@internet-plarey.com.mx"
host = "imap.example.net"
port = 993
security = "tls"
username = "contacto@internet-plarey.com.mx"
password = "{PASSWORD}"
folder = "INBOX"

[smtp]
host = "smtp.example.net"
port = 465
security = "tls"
username = "contacto@internet-plarey.com.mx"

[agents]
addresses = ["ana.tecnica@internet-plarey.com.mx"]
notify = "soporte@internet-plarey.com.mx"

[web_form]
senders = ["web@internet-plarey.com.mx"]

[folio]
prefix = "PLR"

[poll]
interval_seconds = 60
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILCASE_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("MAILCASE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "mailcase.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert PASSWORD not in message
    return message


def edit(old: str, new: str) -> str:
    assert old in ISSUE_CONFIG, old
    return ISSUE_CONFIG.replace(old, new, 1)


# --- files that load -----------------------------------------------------------------------


def test_the_example_file_loads() -> None:
    # Its credentials do not exist here: loading must not read them.
    settings = load_settings(EXAMPLE)
    assert set(settings.mailboxes) == {"contacto", "info"}
    assert settings.mailboxes["info"].password_credential == "info.pw"
    assert settings.smtp.password_credential == "smtp.pw"
    assert settings.folio.prefix == "PLR"
    assert settings.notices.language == "es"
    assert settings.company.name == "Internet Plarey"


def test_the_key_set_of_the_issue_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ISSUE_CONFIG))
    assert settings.database.url == "sqlite:////var/lib/mailcase/mailcase.db"
    assert settings.storage.directory == Path("/var/lib/mailcase/store")
    box = settings.mailboxes["contacto"]
    assert box.address == "contacto@internet-plarey.com.mx"
    assert (box.host, box.port, box.security, box.folder) == (
        "imap.example.net",
        993,
        "tls",
        "INBOX",
    )
    assert box.username == "contacto@internet-plarey.com.mx"
    assert box.resolved_password() == PASSWORD
    smtp = settings.smtp
    assert (smtp.host, smtp.port, smtp.security) == ("smtp.example.net", 465, "tls")
    assert smtp.username == "contacto@internet-plarey.com.mx"
    assert smtp.resolved_password() is None
    assert settings.agents.addresses == ["ana.tecnica@internet-plarey.com.mx"]
    assert settings.agents.notify == "soporte@internet-plarey.com.mx"
    assert settings.web_form.senders == ["web@internet-plarey.com.mx"]
    assert settings.folio.prefix == "PLR"
    assert settings.poll.interval_seconds == 60
    assert settings.own_addresses == {
        "contacto@internet-plarey.com.mx",
        "soporte@internet-plarey.com.mx",
    }


def test_default_ports_follow_the_security_mode(tmp_path: Path) -> None:
    text = ISSUE_CONFIG.replace("port = 993\n", "").replace("port = 465\n", "")
    text = text.replace(
        'security = "tls"\nusername = "contacto@internet-plarey.com.mx"\n\n[agents]',
        'security = "starttls"\nusername = "contacto@internet-plarey.com.mx"\n\n[agents]',
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.mailboxes["contacto"].effective_port == 993
    assert settings.smtp.effective_port == 587


# --- errors: one line naming the dotted key and the file -------------------------------------


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, edit('folder = "INBOX"', 'folder = "INBOX"\npasword = "x"'))
    assert "unknown key mailboxes.contacto.pasword" in message


def test_an_unknown_table_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, ISSUE_CONFIG + "\n[pol]\ninterval_seconds = 5\n")
    assert "unknown key pol" in message


def test_a_missing_smtp_table_is_named(tmp_path: Path) -> None:
    start = ISSUE_CONFIG.index("[smtp]")
    end = ISSUE_CONFIG.index("[agents]")
    message = load_error(tmp_path, ISSUE_CONFIG[:start] + ISSUE_CONFIG[end:])
    assert "missing required key smtp" in message


def test_a_missing_mailbox_host_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, edit('host = "imap.example.net"\n', ""))
    assert "missing required key mailboxes.contacto.host" in message


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("interval_seconds = 60", 'interval_seconds = "soon"', "poll.interval_seconds"),
        ("interval_seconds = 60", "interval_seconds = 1", "poll.interval_seconds"),
        ('security = "tls"', 'security = "ssl"', "mailboxes.contacto.security"),
        ("port = 993", "port = 99999", "mailboxes.contacto.port"),
        ('prefix = "PLR"', 'prefix = "P.R"', "folio.prefix"),
        ('notify = "soporte@', 'notify = "soporte-', "agents.notify"),
        ('senders = ["web@', 'senders = ["web-', "web_form.senders"),
    ],
)
def test_a_bad_value_is_named(tmp_path: Path, old: str, new: str, key: str) -> None:
    message = load_error(tmp_path, edit(old, new))
    assert message.startswith(f"bad value for {key}: ")


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("[mailboxes.contacto]", "[mailboxes.\"contacto principal\"]",
         "mailbox name 'contacto principal' may use only lower-case a-z, 0-9, _ . and -"),
        ("[poll]", '[areas.Redes]\nnotify = "redes@internet-plarey.com.mx"\n\n[poll]',
         "area name 'Redes' may use only a-z, 0-9, _ and -"),
    ],
)  # fmt: skip
def test_a_bad_table_name_is_named(tmp_path: Path, old: str, new: str, words: str) -> None:
    assert words in load_error(tmp_path, edit(old, new))


def test_a_config_without_mailboxes_is_refused(tmp_path: Path) -> None:
    start = ISSUE_CONFIG.index("[mailboxes.contacto]")
    end = ISSUE_CONFIG.index("[smtp]")
    message = load_error(tmp_path, ISSUE_CONFIG[:start] + "[mailboxes]\n" + ISSUE_CONFIG[end:])
    assert "at least one [mailboxes.NAME] table is required" in message


def test_an_unreadable_config_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_CONFIG)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: make it a directory instead
            path.chmod(0o600)
            path.unlink()
            path.mkdir()
        with pytest.raises(ConfigError) as info:
            load_settings(path)
    finally:
        if path.is_file():
            path.chmod(0o600)
    assert str(info.value).startswith(f"cannot read config file {path}: ")


def test_invalid_toml_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    message = load_error(tmp_path, ISSUE_CONFIG + "\n[poll\n")
    assert "not valid TOML" in message
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nowhere.toml")


# --- security = "none" ---------------------------------------------------------------------


def test_cleartext_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    message = load_error(tmp_path, edit('security = "tls"', 'security = "none"'))
    assert "mailboxes.contacto" in message
    assert "allow_insecure" in message


def test_cleartext_to_a_remote_host_is_allowed_when_asked_for(tmp_path: Path) -> None:
    text = edit('security = "tls"', 'security = "none"\nallow_insecure = true')
    assert load_settings(write(tmp_path, text)).mailboxes["contacto"].security == "none"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.53"])
def test_cleartext_to_loopback_is_allowed(tmp_path: Path, host: str) -> None:
    text = edit('security = "tls"', 'security = "none"').replace("imap.example.net", host)
    assert load_settings(write(tmp_path, text)).mailboxes["contacto"].host == host


def test_cleartext_smtp_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    text = ISSUE_CONFIG.replace('port = 465\nsecurity = "tls"', 'port = 25\nsecurity = "none"')
    message = load_error(tmp_path, text)
    assert "bad value for smtp:" in message


# --- secrets -------------------------------------------------------------------------------


def test_password_file_is_read_and_its_line_end_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "contacto.pw"
    secret.write_text(f"{PASSWORD}\r\n", encoding="utf-8")
    text = edit(f'password = "{PASSWORD}"', f'password_file = "{secret}"')
    settings = load_settings(write(tmp_path, text))
    assert settings.mailboxes["contacto"].resolved_password() == PASSWORD


def test_a_missing_password_file_is_a_config_error_when_read(tmp_path: Path) -> None:
    text = edit(f'password = "{PASSWORD}"', f'password_file = "{tmp_path}/missing.pw"')
    box = load_settings(write(tmp_path, text)).mailboxes["contacto"]
    with pytest.raises(ConfigError, match=r"missing\.pw"):
        box.resolved_password()


def test_password_credential_is_read_from_the_systemd_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "contacto").write_text(PASSWORD + "\n", encoding="utf-8")
    text = edit(f'password = "{PASSWORD}"', 'password_credential = "contacto"')
    box = load_settings(write(tmp_path, text)).mailboxes["contacto"]
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        box.resolved_password()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert box.resolved_password() == PASSWORD


def test_two_password_sources_are_refused(tmp_path: Path) -> None:
    message = load_error(
        tmp_path, edit(f'password = "{PASSWORD}"', f'password = "{PASSWORD}"\npassword_file = "/x"')
    )
    assert "mailboxes.contacto" in message
    assert "password_file" in message


def test_the_password_never_appears_in_the_settings_repr(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ISSUE_CONFIG))
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert PASSWORD not in repr(settings.mailboxes["contacto"])
    assert PASSWORD not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('host = "imap.example.net"\n', ""),  # the whole table is the "input"
        ('folder = "INBOX"', 'folder = "INBOX"\npasword = "x"'),
        ('security = "tls"', 'security = "none"'),  # a model-level check
        (f'password = "{PASSWORD}"', "password = 12345"),
    ],
)
def test_the_password_never_appears_in_an_error_or_its_cause(
    tmp_path: Path, old: str, new: str
) -> None:
    path = write(tmp_path, edit(old, new))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    # --debug prints the chained pydantic error too.
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in str(info.value.__cause__)
    assert "input_value" not in str(info.value.__cause__)


# --- where the file comes from, and the environment ------------------------------------------


def test_config_path_prefers_the_explicit_path_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert config_path(None) == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("MAILCASE_CONFIG", "/srv/mailcase.toml")
    assert config_path(None) == Path("/srv/mailcase.toml")
    assert config_path("") == Path("/srv/mailcase.toml")
    assert config_path("/etc/otro.toml") == Path("/etc/otro.toml")


def test_mailcase_config_in_the_environment_is_not_a_settings_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, ISSUE_CONFIG)
    monkeypatch.setenv("MAILCASE_CONFIG", str(path))
    assert load_settings(config_path(None)).poll.interval_seconds == 60


def test_an_environment_variable_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, ISSUE_CONFIG)
    monkeypatch.setenv("MAILCASE_POLL__INTERVAL_SECONDS", "30")
    monkeypatch.setenv("MAILCASE_DATABASE__URL", "sqlite:////tmp/otra.db")
    settings = load_settings(path)
    assert settings.poll.interval_seconds == 30
    assert settings.database.url == "sqlite:////tmp/otra.db"
    # The rest of the tables still come from the file.
    assert settings.poll.batch_size == 50
    assert settings.storage.directory == Path("/var/lib/mailcase/store")


def test_a_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCASE_POLL__INTERVAL_SECONDS", "soon")
    message = load_error(tmp_path, ISSUE_CONFIG)
    assert "poll.interval_seconds" in message


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ISSUE_CONFIG))
    assert isinstance(settings, Settings)
    with pytest.raises(ValueError, match="frozen"):
        settings.poll.interval_seconds = 5  # type: ignore[misc]


# --- the command line, as a real process -----------------------------------------------------


def run_cli(*args: str, env_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCASE_")}
    return subprocess.run(
        [sys.executable, "-m", "mailcase", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=env_path,
        env=env,
    )


def test_cli_with_a_bad_config_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = write(tmp_path, edit('folder = "INBOX"', 'folder = "INBOX"\npasword = "x"'))
    result = run_cli("--config", str(bad), "poll", env_path=tmp_path)
    assert result.returncode == EXIT_CONFIG == 2
    lines = result.stderr.splitlines()
    assert lines == [f"mailcase: unknown key mailboxes.contacto.pasword in {bad}"]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_with_debug_shows_the_traceback_but_not_the_password(tmp_path: Path) -> None:
    bad = write(tmp_path, edit('host = "imap.example.net"\n', ""))
    result = run_cli("--config", str(bad), "--debug", "poll", env_path=tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "missing required key mailboxes.contacto.host" in result.stderr.splitlines()[-1]
    assert PASSWORD not in result.stderr


NOTIFY_LINE = 'notify = "soporte@internet-plarey.com.mx"'


def test_signing_secret_inline_file_or_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = "s" * 16
    agents = load_settings(
        write(tmp_path, edit(NOTIFY_LINE, f'{NOTIFY_LINE}\nsigning_secret = "{inline}"'))
    ).agents
    assert agents.resolved_signing_secret() == inline.encode()
    assert inline not in repr(agents)
    (tmp_path / "key").write_text("f" * 20 + "\n", encoding="utf-8")
    text = edit(NOTIFY_LINE, f'{NOTIFY_LINE}\nsigning_secret_file = "{tmp_path}/key"')
    assert load_settings(write(tmp_path, text)).agents.resolved_signing_secret() == b"f" * 20
    text = edit(NOTIFY_LINE, f'{NOTIFY_LINE}\nsigning_secret_credential = "key"')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings(write(tmp_path, text)).agents.resolved_signing_secret() == b"f" * 20
    assert load_settings(write(tmp_path, ISSUE_CONFIG)).agents.resolved_signing_secret() is None


def test_a_short_or_doubled_signing_secret_is_refused(tmp_path: Path) -> None:
    short = load_error(tmp_path, edit(NOTIFY_LINE, f'{NOTIFY_LINE}\nsigning_secret = "corto"'))
    assert "agents.signing_secret" in short
    both = f'{NOTIFY_LINE}\nsigning_secret = "{"s" * 16}"\nsigning_secret_file = "/x"'
    assert "signing_secret_file" in load_error(tmp_path, edit(NOTIFY_LINE, both))
    (tmp_path / "key").write_text("corto\n", encoding="utf-8")
    text = edit(NOTIFY_LINE, f'{NOTIFY_LINE}\nsigning_secret_file = "{tmp_path}/key"')
    with pytest.raises(ConfigError, match="fewer than 16"):
        load_settings(write(tmp_path, text)).agents.resolved_signing_secret()


def test_defaults_of_the_limits_and_the_smtp_retry_window(tmp_path: Path) -> None:
    # ISSUE_CONFIG sets none of these: what an admin gets without asking.
    settings = load_settings(write(tmp_path, ISSUE_CONFIG))
    assert settings.limits.max_message_bytes == 50_000_000  # 50 MB
    assert settings.limits.max_acks_per_sender_per_hour == 5
    assert settings.limits.max_notices_per_hour is None  # no total cap unless set
    assert settings.smtp.retry_for_hours == 72
