"""Configuration mistakes found by review: each is one sentence naming the key, file or
environment variable, exit 2, no traceback, no secret. No mail server is needed: every peer
here is a closed port."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import run_process
from servers import free_port

from mailcase import metrics
from mailcase.cli import main
from mailcase.config import check_ca_files, check_secrets, load_settings
from mailcase.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError
from mailcase.oauth import TokenError, TokenProvider
from mailcase.store import make_engine

SECRET = "s3cr3t-pw-QWERTY"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILCASE_* variable of the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("MAILCASE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def config(tmp_path: Path, *, mailbox: str = "", smtp: str = "", extra: str = "") -> Path:
    """A valid config whose peers are closed ports; ``mailbox``/``smtp`` add lines to them."""
    path = tmp_path / "mailcase.toml"
    path.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path}/mailcase.db"
[storage]
directory = "{tmp_path}/store"
[mailboxes.contacto]
address = "contacto@example.com"
host = "127.0.0.1"
port = {free_port()}
security = "none"
username = "contacto"
{mailbox or f'password = "{SECRET}"'}
[smtp]
host = "127.0.0.1"
port = {free_port()}
security = "none"
{smtp}
[log]
format = "json"
{extra}
""",
        encoding="utf-8",
    )
    return path


def cli(path: Path, capsys: Any, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--config", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mailcase: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and SECRET not in err
    return lines[0]


# --- 2: folio.timezone naming a directory of the tz database --------------------------------


@pytest.mark.parametrize("zone", ["America", "Etc"])
def test_a_time_zone_that_is_a_directory_is_a_bad_value(
    tmp_path: Path, capsys: Any, zone: str
) -> None:
    path = config(tmp_path, extra=f'[folio]\ntimezone = "{zone}"')
    code, _, err = cli(path, capsys, "check")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert line.startswith(f"mailcase: bad value for folio.timezone: unknown time zone '{zone}'")
    assert line.endswith(f" in {path}")


# --- 3: files that are not UTF-8 ---------------------------------------------------------------


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path, capsys: Any) -> None:
    path = config(tmp_path)
    path.write_bytes(
        path.read_bytes().replace(b"example.com", "ejemplo-compañía.mx".encode("latin-1"), 1)
    )
    code, _, err = cli(path, capsys, "check")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert line.startswith(f"mailcase: config file {path} is not UTF-8 text")


@pytest.mark.parametrize(
    ("table", "lines", "key"),
    [
        ("mailbox", "password_file = '{file}'", "mailboxes.contacto.password_file"),
        ("smtp", "username = 'u'\npassword_file = '{file}'", "smtp.password_file"),
        (
            "mailbox",
            "auth = 'oauth2'\nclient_id = 'c'\ntoken_url = 'https://127.0.0.1:1/t'\n"
            "refresh_token_file = '{file}'",
            "mailboxes.contacto.refresh_token_file",
        ),
        (
            "mailbox",
            "auth = 'oauth2'\nclient_id = 'c'\ntoken_url = 'https://127.0.0.1:1/t'\n"
            "refresh_token = 'r'\nclient_secret_file = '{file}'",
            "mailboxes.contacto.client_secret_file",
        ),
        ("extra", "[agents]\nsigning_secret_file = '{file}'", "agents.signing_secret_file"),
    ],
)
def test_a_secret_file_that_is_not_utf8_is_named_with_its_key(
    tmp_path: Path, capsys: Any, table: str, lines: str, key: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes("contraseña-larga-de-verdad".encode("latin-1"))
    text = lines.format(file=secret)
    path = config(
        tmp_path,
        mailbox=text if table == "mailbox" else "",
        smtp=text if table == "smtp" else "",
        extra=text if table == "extra" else "",
    )
    with pytest.raises(ConfigError, match=f"^{key}: .*{secret} is not UTF-8 text"):
        check_secrets(load_settings(path))
    code, _, err = cli(path, capsys, "poll")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert key in line and str(secret) in line and "contrase" not in line


# --- 4: metrics.listen ---------------------------------------------------------------------------


def test_a_metrics_port_out_of_range_is_a_bad_value(tmp_path: Path, capsys: Any) -> None:
    path = config(tmp_path, extra='[metrics]\nlisten = "127.0.0.1:99999"')
    code, _, err = cli(path, capsys, "check")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert line.startswith("mailcase: bad value for metrics.listen: ")
    assert "65535" in line


def test_a_metrics_address_that_cannot_be_bound_names_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^metrics.listen 127.0.0.1:{port}: cannot listen"):
            metrics.serve(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"^metrics.listen no-such-host.invalid:9464: "):
        metrics.serve("no-such-host.invalid:9464")


def test_run_exits_2_when_the_metrics_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config(tmp_path, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"')
        result = run_process(path, "run", timeout=60)
    assert result.returncode == EXIT_CONFIG, result.stderr
    line = one_error_line(result.stderr)
    assert line.startswith(f"mailcase: metrics.listen 127.0.0.1:{port}: cannot listen there")


# --- 7: environment overrides ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAILCASE_AGENTS__ADDRESSES", "ana@x.com"), ("MAILCASE_MAILBOXES", "notjson")],
)
def test_an_environment_value_that_is_not_json_names_the_variable(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    path = config(tmp_path)
    monkeypatch.setenv(name, value)
    code, _, err = cli(path, capsys, "check")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert line.startswith(f"mailcase: environment variable {name} is not valid JSON")
    assert value not in line


def test_a_bad_environment_value_blames_the_variable_not_the_file(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path)
    monkeypatch.setenv("MAILCASE_POLL__IDLE", "maybe")
    code, _, err = cli(path, capsys, "check")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert line.startswith("mailcase: bad value for poll.idle: ")
    assert line.endswith(f" in environment variable MAILCASE_POLL__IDLE (overriding {path})")


def test_a_bad_value_in_the_file_still_blames_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config(tmp_path, extra="[poll]\nidle = 3")
    monkeypatch.setenv("MAILCASE_POLL__INTERVAL_SECONDS", "30")  # fine, and not the culprit
    with pytest.raises(ConfigError, match=rf"^bad value for poll.idle: .* in {path}$"):
        load_settings(path)


# --- 6: ca_file -----------------------------------------------------------------------------


def test_a_missing_or_bad_ca_file_is_a_config_error_naming_key_and_file(
    tmp_path: Path, capsys: Any
) -> None:
    missing = tmp_path / "nowhere.pem"
    path = config(
        tmp_path, mailbox=f'password = "{SECRET}"\nsecurity = "tls"\nca_file = "{missing}"'
    )
    path.write_text(path.read_text().replace('security = "none"\nusername', "username", 1))
    with pytest.raises(ConfigError) as info:
        check_ca_files(load_settings(path))
    assert str(info.value) == f"mailboxes.contacto.ca_file {missing}: No such file or directory"
    code, _, err = cli(path, capsys, "poll")
    assert code == EXIT_CONFIG
    assert one_error_line(err) == f"mailcase: {info.value}"

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    path.write_text(path.read_text().replace(str(missing), str(bad)))
    with pytest.raises(ConfigError, match=rf"^mailboxes.contacto.ca_file {bad}: not a PEM file"):
        check_ca_files(load_settings(path))


def test_check_shows_a_bad_ca_file_in_the_mailbox_and_smtp_rows(
    tmp_path: Path, capsys: Any
) -> None:
    missing = tmp_path / "nowhere.pem"
    path = config(
        tmp_path,
        mailbox=f'password = "{SECRET}"\nca_file = "{missing}"',
        smtp=f'ca_file = "{missing}"',
    )
    text = path.read_text().replace('security = "none"', 'security = "starttls"')
    path.write_text(text)
    code, out, _ = cli(path, capsys, "check")
    assert code == EXIT_FAILURE
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    expected = "{}.ca_file " + f"{missing}: No such file or directory"
    assert "FAILED" in rows["mailbox contacto"]
    assert rows["mailbox contacto"].endswith(expected.format("mailboxes.contacto"))
    assert rows["smtp"].endswith(expected.format("smtp")), rows["smtp"]
    assert "cannot connect" not in out


# --- 5: check reads secrets and the storage directory ---------------------------------------


def test_check_fails_on_a_missing_secret_file_and_a_storage_path_that_is_a_file(
    tmp_path: Path, capsys: Any
) -> None:
    missing = tmp_path / "signing.key"
    path = config(tmp_path, extra=f'[agents]\nsigning_secret_file = "{missing}"')
    (tmp_path / "store").write_text("a file, not a directory")
    code, out, err = cli(path, capsys, "check")
    assert code == EXIT_FAILURE
    lines = out.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    rows = {line.split("  ")[0]: line for line in lines[1:]}
    assert list(rows)[:4] == ["config", "secrets", "database", "storage"]
    assert rows["secrets"].split()[1] == "FAILED"
    assert (
        f"agents.signing_secret_file: cannot read agents.signing_secret file {missing}"
        in (rows["secrets"])
    )
    assert rows["storage"].split()[1] == "FAILED"
    assert rows["storage"].endswith(f"storage.directory {tmp_path}/store is not a directory")
    assert "mailcase: secrets failed: " in err and "mailcase: storage failed: " in err
    # What `run` says of the same config: the two checks agree.
    assert cli(path, capsys, "run")[0] == EXIT_CONFIG


def test_check_passes_the_secrets_and_storage_rows_of_a_good_config(
    tmp_path: Path, capsys: Any
) -> None:
    key = tmp_path / "signing.key"
    key.write_text("x" * 32)
    path = config(tmp_path, extra=f'[agents]\nsigning_secret_file = "{key}"')
    _, out, _ = cli(path, capsys, "check")
    rows = {line.split("  ")[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert rows["secrets"] == "ok" and rows["storage"] == "ok"
    assert not (tmp_path / "store").exists()  # check creates nothing


# --- 9: credentials in token_url ------------------------------------------------------------------


OAUTH = "auth = 'oauth2'\nclient_id = 'c'\nrefresh_token = 'r'\ntoken_url = '{url}'"


@pytest.mark.parametrize(
    "url",
    [
        "https://user:URLPASS-secret@127.0.0.1:1/token",
        "http://oauth.example.net/token?client_secret=QUERY-secret",
        "ftp://127.0.0.1/token?client_secret=QUERY-secret",
    ],
)
def test_config_errors_never_show_a_token_url_credential(
    tmp_path: Path, capsys: Any, url: str
) -> None:
    path = config(tmp_path, mailbox=OAUTH.format(url=url))
    code, _, err = cli(path, capsys, "check")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert "token_url" in line and "-secret" not in line


def test_check_and_the_log_never_show_a_token_url_query(tmp_path: Path, capsys: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/token?client_secret=QUERY-secret"
    path = config(tmp_path, mailbox=OAUTH.format(url=url))
    code, out, err = cli(path, capsys, "check")
    assert code == EXIT_FAILURE
    row = next(line for line in out.splitlines() if line.startswith("mailbox contacto"))
    assert f"cannot reach http://127.0.0.1:{port}/token " in row
    assert "QUERY-secret" not in out + err  # neither the table nor oauth_token_failed


def test_a_token_error_shows_scheme_host_port_and_path_only(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/token?client_secret=QUERY-secret"
    settings = load_settings(config(tmp_path, mailbox=OAUTH.format(url=url)))
    provider = TokenProvider(settings.mailboxes["contacto"], {"mailbox": "contacto"})
    with pytest.raises(TokenError) as info:
        provider.token()
    assert "QUERY-secret" not in str(info.value)
    assert url.partition("?")[0] in str(info.value)


# --- 8: an "@" left in the database password ------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://mailcase:Hunter@2024@127.0.0.1:1/mailcase",
        "postgresql+psycopg://mailcase:Hun:ter@2024@127.0.0.1/mailcase",
    ],
)
def test_an_unescaped_at_in_the_database_password_is_named_not_shown(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_engine(url)
    assert "percent-encode" in str(info.value) and "2024" not in str(info.value)
    monkeypatch.setenv("MAILCASE_DATABASE__URL", url)
    code, _, err = cli(config(tmp_path), capsys, "poll")
    assert code == EXIT_CONFIG
    line = one_error_line(err)
    assert line.startswith("mailcase: database.url has an '@' in its user name or password")
    assert "Hunter" not in err and "2024" not in err


def test_a_percent_encoded_at_is_accepted() -> None:
    engine = make_engine("postgresql+psycopg://mailcase:Hunter%402024@127.0.0.1:1/mailcase")
    assert engine.url.password == "Hunter@2024"
    engine.dispose()
