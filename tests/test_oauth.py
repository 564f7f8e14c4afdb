"""OAuth2 (XOAUTH2) logins end to end: a real Dovecot checking tokens against an
introspection endpoint the test runs, an SMTP sink taking XOAUTH2, and the token
sources (token_command, refresh-token grant) against a real HTTP token endpoint."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import select
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from helpers import CONTACTO, REPO, Cli, json_events, mail, write_config
from oauth_servers import OAuthDovecot, OAuthServer, OAuthSmtpSink, parse_xoauth2
from servers import free_port

from mailcase import oauth, service
from mailcase.config import MailboxSettings, SmtpSettings, load_settings
from mailcase.errors import (
    ConfigError,
    DeliveryError,
    MailboxError,
    PermanentDeliveryError,
    SecretError,
)
from mailcase.imap import FetchedMessage, ImapMailbox
from mailcase.logs import configure
from mailcase.models import Notice
from mailcase.oauth import TokenError, TokenProvider, xoauth2_string
from mailcase.outbox import deliver_outbox
from mailcase.service import Runtime
from mailcase.smtp import SmtpConnection

pytestmark = pytest.mark.integration

SMTP_USER = "avisos@internet-plarey.com.mx"
_scripts = itertools.count(1)


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oauth_server() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture(scope="session")
def oauth_dovecot_session(oauth_server: OAuthServer) -> Iterator[OAuthDovecot]:
    """A Dovecot of its own (the session one has no oauth2 passdb); never skipped."""
    server = OAuthDovecot(oauth_server.introspection_url, introspection_mode="post")
    try:
        server.start()
    except Exception as exc:
        server.close()
        pytest.fail(f"cannot start the OAuth2 test Dovecot: {exc}", pytrace=False)
    yield server
    server.close()


@pytest.fixture(scope="session")
def oauth_sink_session() -> Iterator[OAuthSmtpSink]:
    sink = OAuthSmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def idp(oauth_server: OAuthServer) -> OAuthServer:
    """The identity provider, with no tokens, clients or faults."""
    oauth_server.reset()
    return oauth_server


@pytest.fixture
def imap(oauth_dovecot_session: OAuthDovecot) -> OAuthDovecot:
    d = oauth_dovecot_session
    if not d.running:
        d.start()
    d.reset_users()
    for user in ("contacto", "info"):
        d.clear(user)
    return d


@pytest.fixture
def smtp(oauth_sink_session: OAuthSmtpSink) -> OAuthSmtpSink:
    if not oauth_sink_session.running:
        oauth_sink_session.start()
    oauth_sink_session.clear()
    return oauth_sink_session


@pytest.fixture(autouse=True)
def fresh_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    # The process-wide token cache must not carry a token or a failure time between tests.
    monkeypatch.setattr(oauth, "_providers", {})


@pytest.fixture(autouse=True)
def logs_to_stderr() -> Iterator[None]:
    # A Cli run configures structlog to print to that test's capsys stream, closed once
    # the test ends: code called directly here would log to a closed file.
    configure("info", "json")
    yield
    structlog.reset_defaults()


# -- helpers ------------------------------------------------------------------------------


def token_command(tmp_path: Path, stdout: str, *, status: int = 0, stderr: str = "") -> str:
    """A token_command value: a tiny shell script printing ``stdout``, then ``stderr``."""
    script = tmp_path / f"token-{next(_scripts)}.sh"
    lines = ["#!/bin/sh", f"printf '%s\\n' '{stdout}'"]
    if stderr:
        lines.append(f"printf '%s\\n' '{stderr}' >&2")
    lines.append(f"exit {status}")
    script.write_text("\n".join(lines) + "\n")
    return f"/bin/sh {script}"


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} not once in the config"
    return text.replace(old, new)


def oauth_config(
    tmp_path: Path,
    imap: OAuthDovecot,
    smtp: OAuthSmtpSink,
    *,
    mailbox: str | None = None,
    smtp_keys: str | None = None,
) -> Path:
    """write_config's file with mailbox contacto and/or [smtp] switched to auth = "oauth2"."""
    path = write_config(tmp_path, imap, smtp)
    text = path.read_text()
    if mailbox is not None:
        text = _replace_once(text, f'password = "{imap.users["contacto"]}"\n', "")
        text = _replace_once(
            text, "[mailboxes.contacto]\n", f'[mailboxes.contacto]\nauth = "oauth2"\n{mailbox}\n'
        )
    if smtp_keys is not None:
        text = _replace_once(
            text, "[smtp]\n", f'[smtp]\nauth = "oauth2"\nusername = "{SMTP_USER}"\n{smtp_keys}\n'
        )
    path.write_text(text)
    return path


def mailbox_settings(imap: OAuthDovecot, **keys: Any) -> MailboxSettings:
    return MailboxSettings(
        address=CONTACTO,
        host=imap.host,
        port=imap.port,
        security="none",
        username="contacto",
        auth="oauth2",
        **keys,
    )


def refresh_keys(idp: OAuthServer) -> str:
    """Mailbox keys for a confidential client of contacto registered with the provider."""
    refresh_token = idp.add_client("contacto", "mailcase-test", "s3cret")
    return (
        f'client_id = "mailcase-test"\nclient_secret = "s3cret"\n'
        f'refresh_token = "{refresh_token}"\ntoken_url = "{idp.token_url}"'
    )


def plain_lines(err: str) -> list[str]:
    """What the CLI printed for people (the JSON log lines left out)."""
    return [line for line in err.splitlines() if line and not line.startswith("{")]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- IMAP ---------------------------------------------------------------------------------


def test_poll_with_token_command_logs_in_with_xoauth2(
    tmp_path: Path, imap: OAuthDovecot, smtp: OAuthSmtpSink, idp: OAuthServer, capsys: Any
) -> None:
    idp.grant("tok-contacto-1", "contacto")
    command = token_command(tmp_path, "tok-contacto-1")
    cli = Cli(oauth_config(tmp_path, imap, smtp, mailbox=f'token_command = "{command}"'), capsys)
    imap.append("contacto", mail())
    code, out, err = cli("poll")
    assert code == 0, err
    assert len(cli.json("cases", "list")) == 1
    assert len(smtp.wait_for(1)) == 1  # the acknowledgement
    assert idp.introspections == ["tok-contacto-1"]  # Dovecot asked the provider
    assert "user=<contacto>, method=XOAUTH2" in imap.log_text()
    # info still logs in with its password, on the same server
    assert "user=<info>, method=PLAIN" in imap.log_text()
    assert "tok-contacto-1" not in out + err + imap.log_text()


def test_refused_token_fails_the_mailbox_alone_and_is_never_shown(
    tmp_path: Path, imap: OAuthDovecot, smtp: OAuthSmtpSink, idp: OAuthServer, capsys: Any
) -> None:
    command = token_command(tmp_path, "tok-revoked-42")  # the provider does not know it
    cli = Cli(oauth_config(tmp_path, imap, smtp, mailbox=f'token_command = "{command}"'), capsys)
    imap.append("info", mail(to="info@internet-plarey.com.mx"))
    code, out, err = cli("poll")
    assert code == 1
    assert plain_lines(err) == [
        f"mailcase: mailbox contacto: OAuth2 login refused for contacto at 127.0.0.1:{imap.port}"
    ]
    assert len(cli.json("cases", "list")) == 1  # info was polled all the same
    assert idp.introspections == ["tok-revoked-42"]
    assert "tok-revoked-42" not in out + err + imap.log_text()
    assert "Provided token is not valid" in imap.log_text()


def test_refused_token_is_fetched_again_next_time(
    imap: OAuthDovecot, idp: OAuthServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-old\n")
    settings = mailbox_settings(imap, token_command=f"cat {token_file}")
    with pytest.raises(MailboxError, match="OAuth2 login refused"):
        ImapMailbox("contacto", settings).connect()
    # Within the five minutes a command's token is reused: the refusal dropped it.
    token_file.write_text("tok-new\n")
    idp.grant("tok-new", "contacto")
    with ImapMailbox("contacto", settings) as box:
        assert box.uidvalidity > 0


def test_token_command_failure_names_the_mailbox_and_hides_the_token(
    tmp_path: Path, imap: OAuthDovecot, smtp: OAuthSmtpSink, idp: OAuthServer, capsys: Any
) -> None:
    # The command prints a token, then fails and repeats it on stderr.
    command = token_command(
        tmp_path, "tok-leaky-secret-7", status=3, stderr="refresh failed for tok-leaky-secret-7"
    )
    cli = Cli(oauth_config(tmp_path, imap, smtp, mailbox=f'token_command = "{command}"'), capsys)
    code, out, err = cli("poll")
    assert code == 1
    assert plain_lines(err) == [
        "mailcase: mailbox contacto: no OAuth2 token for contacto "
        "(token_command exited with status 3: refresh failed for ***)"
    ]
    [event] = [e for e in json_events(err) if e["event"] == "oauth_token_failed"]
    assert event["mailbox"] == "contacto"
    assert "tok-leaky-secret-7" not in out + err
    assert idp.introspections == []  # never got as far as the server


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ({"stdout": ""}, "token_command printed no token"),
        ({"stdout": "", "status": 1, "stderr": "no account"}, "status 1: no account"),
        ({"stdout": "two words"}, "more than one word"),
    ],
)
def test_token_command_errors(
    tmp_path: Path, imap: OAuthDovecot, script: dict[str, Any], expected: str
) -> None:
    settings = mailbox_settings(imap, token_command=token_command(tmp_path, **script))
    with pytest.raises(MailboxError, match="mailbox contacto: no OAuth2 token") as info:
        ImapMailbox("contacto", settings).connect()
    assert expected in str(info.value)


def test_token_command_not_found(imap: OAuthDovecot) -> None:
    settings = mailbox_settings(imap, token_command="/nonexistent/get-token --user x")
    with pytest.raises(MailboxError, match=r"token_command: /nonexistent/get-token not found"):
        ImapMailbox("contacto", settings).connect()


def test_token_command_token_is_cached(tmp_path: Path, imap: OAuthDovecot) -> None:
    counter = tmp_path / "runs"
    script = tmp_path / "count.sh"
    script.write_text(f"#!/bin/sh\necho x >> {counter}\necho tok-cached\n")
    settings = mailbox_settings(imap, token_command=f"/bin/sh {script}")
    clock = FakeClock()
    provider = TokenProvider(settings, {"mailbox": "contacto"}, clock=clock)
    assert provider.token() == provider.token() == "tok-cached"
    assert len(counter.read_text().splitlines()) == 1
    clock.now += oauth.COMMAND_TOKEN_LIFETIME - 1
    provider.token()
    assert len(counter.read_text().splitlines()) == 1
    clock.now += 1  # five minutes: its lifetime is unknown, so it is run again
    provider.token()
    assert len(counter.read_text().splitlines()) == 2


def test_poll_with_refresh_token(
    tmp_path: Path, imap: OAuthDovecot, smtp: OAuthSmtpSink, idp: OAuthServer, capsys: Any
) -> None:
    cli = Cli(oauth_config(tmp_path, imap, smtp, mailbox=refresh_keys(idp)), capsys)
    imap.append("contacto", mail())
    code, out, err = cli("poll")
    assert code == 0, err
    assert len(cli.json("cases", "list")) == 1
    [request] = idp.token_requests
    assert request.form["grant_type"] == "refresh_token"
    assert request.form["client_id"] == "mailcase-test"
    assert request.form["client_secret"] == "s3cret"
    [issued] = idp.introspections  # the access token Dovecot was shown is the one issued
    assert issued.startswith("at-") and issued not in out + err
    assert "user=<contacto>, method=XOAUTH2" in imap.log_text()


# -- the refresh-token grant --------------------------------------------------------------


def test_refresh_token_is_cached_until_shortly_before_expiry(
    imap: OAuthDovecot, idp: OAuthServer
) -> None:
    idp.expires_in = 2  # the margin is then 1 s: the token is reused for one second
    refresh_token = idp.add_client("contacto", "public-client")  # a public client: no secret
    settings = mailbox_settings(
        imap, client_id="public-client", refresh_token=refresh_token, token_url=idp.token_url
    )
    provider = TokenProvider(settings, {"mailbox": "contacto"})
    first = provider.token()
    assert provider.token() == first
    assert idp.token_request_count == 1
    assert "client_secret" not in idp.token_requests[0].form
    time.sleep(1.2)
    second = provider.token()
    assert second != first
    assert idp.token_request_count == 2
    assert provider.token() == second
    assert idp.token_request_count == 2
    # A connection gets its token from the process-wide provider of the mailbox (one
    # more request), which the next connection reuses.
    for _ in range(2):
        with ImapMailbox("contacto", settings):
            pass
    assert idp.token_request_count == 3


def test_rotated_refresh_token_replaces_the_old_one(
    imap: OAuthDovecot, idp: OAuthServer, tmp_path: Path
) -> None:
    idp.rotate_refresh_token = True
    refresh_file = tmp_path / "refresh"
    refresh_file.write_text(idp.add_client("contacto", "c1", "sec") + "\n")
    settings = mailbox_settings(
        imap,
        client_id="c1",
        client_secret="sec",
        refresh_token_file=refresh_file,
        token_url=idp.token_url,
    )
    clock = FakeClock()
    provider = TokenProvider(settings, {"mailbox": "contacto"}, clock=clock)
    provider.token()
    clock.now += 3600
    provider.token()  # with the configured token this would be invalid_grant now
    first, second = idp.token_requests
    assert second.form["refresh_token"] != first.form["refresh_token"]
    assert second.form["refresh_token"].startswith("rt-")


def test_refresh_failure_is_logged_once_an_hour(imap: OAuthDovecot, idp: OAuthServer) -> None:
    idp.fail_token_endpoint = (
        400,
        {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
    )
    refresh_token = idp.add_client("contacto", "c1", "sec")
    settings = mailbox_settings(
        imap,
        client_id="c1",
        client_secret="sec",
        refresh_token=refresh_token,
        token_url=idp.token_url,
    )
    clock = FakeClock()
    provider = TokenProvider(settings, {"mailbox": "contacto"}, clock=clock)
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(TokenError) as info:
                provider.token()
            assert str(info.value) == (
                f"{idp.token_url} answered HTTP 400: invalid_grant "
                "(Token has been expired or revoked.)"
            )
        assert idp.token_request_count == 2  # every call tries; only the log is spared
        failed = [e for e in logs if e["event"] == "oauth_token_failed"]
        assert len(failed) == 1
        assert failed[0]["mailbox"] == "contacto" and failed[0]["log_level"] == "warning"
        clock.now += 3600
        with pytest.raises(TokenError):
            provider.token()
        assert len([e for e in logs if e["event"] == "oauth_token_failed"]) == 2
        idp.fail_token_endpoint = None
        provider.token()
        assert [e["event"] for e in logs][-1] == "oauth_token_recovered"
    assert refresh_token not in json.dumps(logs)


@pytest.mark.parametrize(
    ("status", "payload", "problem"),
    [
        (200, b"<html>Mantenimiento</html>", "did not answer JSON"),
        (200, ["at-1"], "did not answer a JSON object"),
        (200, {"token_type": "Bearer"}, "has no access_token"),
        (200, {"access_token": "at-1\r\nX-Inyectado: si"}, "is not a bearer token"),
        (502, b"Bad Gateway", "answered HTTP 502"),  # no RFC 6749 error in the body
    ],
)
def test_a_token_endpoint_answering_nonsense_is_one_clear_error(
    imap: OAuthDovecot, idp: OAuthServer, status: int, payload: Any, problem: str
) -> None:
    refresh_token = idp.add_client("contacto", "c1", "sec")
    idp.fail_token_endpoint = (status, payload)
    settings = mailbox_settings(
        imap, client_id="c1", client_secret="sec", refresh_token=refresh_token,
        token_url=idp.token_url,
    )  # fmt: skip
    with pytest.raises(TokenError) as info:
        TokenProvider(settings, {"mailbox": "contacto"}).token()
    message = str(info.value)
    assert problem in message and idp.token_url.split("?")[0] in message
    assert "\n" not in message and refresh_token not in message


@pytest.mark.parametrize(("expires_in", "cached_for"), [("3600", 3540.0), ("pronto", 240.0)])
def test_expires_in_as_a_string_is_read_or_defaulted(
    imap: OAuthDovecot, idp: OAuthServer, expires_in: str, cached_for: float
) -> None:
    # Older Microsoft endpoints send expires_in as a string; nonsense gets the default 300 s.
    refresh_token = idp.add_client("contacto", "c1", "sec")
    idp.fail_token_endpoint = (200, {"access_token": "at-fijo", "expires_in": expires_in})
    settings = mailbox_settings(
        imap, client_id="c1", client_secret="sec", refresh_token=refresh_token,
        token_url=idp.token_url,
    )  # fmt: skip
    clock = FakeClock()
    provider = TokenProvider(settings, {"mailbox": "contacto"}, clock=clock)
    assert provider.token() == "at-fijo"
    clock.now += cached_for - 1
    provider.token()
    assert idp.token_request_count == 1
    clock.now += 2
    provider.token()
    assert idp.token_request_count == 2


def test_token_endpoint_unreachable(imap: OAuthDovecot) -> None:
    settings = mailbox_settings(
        imap,
        client_id="c1",
        refresh_token="rt-x",
        token_url=f"http://127.0.0.1:{free_port()}/token",
    )
    with pytest.raises(MailboxError, match=r"no OAuth2 token for contacto \(cannot reach http"):
        ImapMailbox("contacto", settings).connect()


def test_unreadable_refresh_token_file_is_a_mailbox_error(
    imap: OAuthDovecot, idp: OAuthServer, tmp_path: Path
) -> None:
    settings = mailbox_settings(
        imap,
        client_id="c1",
        refresh_token_file=tmp_path / "missing",
        token_url=idp.token_url,
    )
    with pytest.raises(MailboxError, match="cannot read refresh_token_file"):
        ImapMailbox("contacto", settings).connect()


# -- a replaced refresh_token_file, a hanging token_command, a second outage ---------------


def provider_settings(**keys: Any) -> MailboxSettings:
    """An oauth2 mailbox on loopback, for tests of the TokenProvider alone (no login)."""
    return MailboxSettings(
        address=CONTACTO,
        host="127.0.0.1",
        security="none",
        username="contacto",
        auth="oauth2",
        **keys,
    )


def sent_refresh_tokens(idp: OAuthServer) -> list[str]:
    return [request.form["refresh_token"] for request in idp.token_requests]


def consent_again(idp: OAuthServer, refresh_file: Path) -> str:
    """The admin revokes the app's tokens, consents again and writes the new refresh
    token over ``refresh_file``; that token."""
    idp.revoke_refresh_tokens()
    token = idp.add_client("contacto", "c1", "sec")
    refresh_file.write_text(token + "\n")
    return token


def file_provider(
    idp: OAuthServer, refresh_file: Path, token: str
) -> tuple[TokenProvider, FakeClock]:
    """A provider reading its refresh token ``token`` from ``refresh_file``, after its
    first refresh (on a fake clock)."""
    refresh_file.write_text(token + "\n")
    settings = provider_settings(
        client_id="c1", client_secret="sec", refresh_token_file=refresh_file,
        token_url=idp.token_url,
    )  # fmt: skip
    clock = FakeClock()
    provider = TokenProvider(settings, {"mailbox": "contacto"}, clock=clock)
    provider.token()
    return provider, clock


def test_a_replaced_refresh_token_file_is_read_at_the_next_refresh(
    idp: OAuthServer, tmp_path: Path
) -> None:
    refresh_file = tmp_path / "refresh"
    old = idp.add_client("contacto", "c1", "sec")
    provider, clock = file_provider(idp, refresh_file, old)
    # The user changed the password at the provider (which revokes the refresh token);
    # the admin consents again and writes the new refresh token over the old file.
    new = consent_again(idp, refresh_file)
    clock.now += 3600
    assert provider.token().startswith("at-")
    assert sent_refresh_tokens(idp) == [old, new]


def test_a_changed_refresh_token_file_wins_over_a_rotated_token(
    idp: OAuthServer, tmp_path: Path
) -> None:
    idp.rotate_refresh_token = True
    refresh_file = tmp_path / "refresh"
    first = idp.add_client("contacto", "c1", "sec")
    provider, clock = file_provider(idp, refresh_file, first)
    [rotated] = idp.refresh_tokens  # the provider's answer replaced the file's token
    clock.now += 3600
    provider.token()  # the file is unchanged: the rotated token is the one sent
    [rotated_again] = idp.refresh_tokens
    # The admin revoked the app's sessions, consented again and wrote the new token.
    written = consent_again(idp, refresh_file)
    clock.now += 3600
    provider.token()
    assert sent_refresh_tokens(idp) == [first, rotated, written]
    assert rotated_again != written


def test_a_refused_rotated_token_falls_back_on_the_file_once_per_call(
    idp: OAuthServer, tmp_path: Path
) -> None:
    idp.rotate_refresh_token = True
    refresh_file = tmp_path / "refresh"
    configured = idp.add_client("contacto", "c1", "sec")
    provider, clock = file_provider(idp, refresh_file, configured)
    # The rotated token is revoked, the file's is still good (Microsoft's old refresh
    # tokens stay valid after a rotation): the file's is tried in the same call.
    [rotated] = idp.revoke_refresh_tokens()
    idp.add_client("contacto", "c1", "sec", refresh_token=configured)
    clock.now += 3600
    assert provider.token().startswith("at-")
    assert sent_refresh_tokens(idp) == [configured, rotated, configured]
    # Everything revoked: the rotated token, then the file's, once each; later calls
    # send only the file's, one request a call.
    [rotated] = idp.revoke_refresh_tokens()
    clock.now += 3600
    for expected in ([rotated, configured], [configured], [configured]):
        before = idp.token_request_count
        with pytest.raises(TokenError, match="invalid_grant"):
            provider.token()
        assert sent_refresh_tokens(idp)[before:] == expected


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_until_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait for each process to end (pidfd: no polling); return those still running."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    return [pid for pid in pids if _alive(pid)]


def test_a_hanging_token_command_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oauth, "COMMAND_TIMEOUT", 1.5)
    pid_file = tmp_path / "pids"
    script = tmp_path / "hang.sh"
    # A helper wrapped in a script: a background child, and a pipeline that never ends.
    script.write_text(
        "#!/bin/sh\n"
        f"sleep 300 & echo $! >> {pid_file}\n"
        f"sh -c 'echo $$ >> {pid_file}; exec sleep 300' "
        f"| sh -c 'echo $$ >> {pid_file}; exec cat'\n"
    )
    provider = TokenProvider(
        provider_settings(token_command=f"/bin/sh {script}"), {"mailbox": "contacto"}
    )
    started = time.monotonic()
    try:
        with pytest.raises(TokenError) as info:
            provider.token()
        assert str(info.value) == "token_command did not finish within 1.5 s"
        assert time.monotonic() - started < 30  # nothing held it to the children's 300 s
        pids = [int(line) for line in pid_file.read_text().split()]
        assert len(pids) == 3
        assert _wait_until_gone(pids, timeout=10) == []
    finally:
        # Without the fix they would run for five minutes: end those this test started.
        for line in pid_file.read_text().split() if pid_file.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)


def test_a_new_outage_after_recovery_is_logged_at_once(tmp_path: Path) -> None:
    token_file = tmp_path / "token"  # the command fails while it is missing
    settings = provider_settings(token_command=f"cat {token_file}")
    clock = FakeClock()
    provider = TokenProvider(settings, {"mailbox": "contacto"}, clock=clock)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(TokenError):
            provider.token()
        clock.now += 600
        token_file.write_text("tok-1\n")
        assert provider.token() == "tok-1"
        # The token's five minutes are over and the command fails again: a new outage,
        # 15 minutes after the first one was logged.
        clock.now += oauth.COMMAND_TOKEN_LIFETIME
        token_file.unlink()
        with pytest.raises(TokenError):
            provider.token()
        clock.now += 600  # the same outage goes on: not logged again within the hour
        with pytest.raises(TokenError):
            provider.token()
    assert [e["event"] for e in logs] == [
        "oauth_token_failed",
        "oauth_token_recovered",
        "oauth_token_failed",
    ]


# -- SMTP ---------------------------------------------------------------------------------


def test_xoauth2_string() -> None:
    raw = xoauth2_string("avisos@example.com", "ya29.tok")
    assert raw == "user=avisos@example.com\x01auth=Bearer ya29.tok\x01\x01"
    # What smtplib sends after "AUTH XOAUTH2 " (Google's documented example form).
    encoded = base64.b64encode(raw.encode()).decode()
    assert parse_xoauth2(base64.b64decode(encoded)) == ("avisos@example.com", "ya29.tok")


def test_notice_delivered_with_smtp_xoauth2(
    tmp_path: Path, imap: OAuthDovecot, smtp: OAuthSmtpSink, idp: OAuthServer, capsys: Any
) -> None:
    smtp.tokens["tok-smtp-1"] = SMTP_USER
    command = token_command(tmp_path, "tok-smtp-1")
    cli = Cli(oauth_config(tmp_path, imap, smtp, smtp_keys=f'token_command = "{command}"'), capsys)
    imap.append("contacto", mail())
    code, out, err = cli("poll")
    assert code == 0, err
    [received] = smtp.wait_for(1)
    assert received.auth_login == SMTP_USER
    assert smtp.xoauth2_attempts == [(SMTP_USER, True)]
    assert cli.json("outbox", "list")[0]["status"] == "sent"
    assert "tok-smtp-1" not in out + err


def test_smtp_refused_token_fails_permanently(
    tmp_path: Path, smtp: OAuthSmtpSink, capsys: Any
) -> None:
    settings = SmtpSettings(
        host=smtp.host,
        port=smtp.port,
        security="none",
        auth="oauth2",
        username=SMTP_USER,
        token_command=token_command(tmp_path, "tok-smtp-bad"),
    )
    with pytest.raises(PermanentDeliveryError) as info:
        SmtpConnection(settings).__enter__()
    message = str(info.value)
    assert message.startswith(
        f"SMTP server 127.0.0.1:{smtp.port} refused the OAuth2 login for {SMTP_USER} (535"
    )
    assert "tok-smtp-bad" not in message
    # The 334 error challenge was answered (with an empty line) and the sink then said 535.
    assert smtp.xoauth2_attempts == [(SMTP_USER, False)]


def test_smtp_token_failure_is_temporary(tmp_path: Path, smtp: OAuthSmtpSink) -> None:
    settings = SmtpSettings(
        host=smtp.host,
        port=smtp.port,
        security="none",
        auth="oauth2",
        username=SMTP_USER,
        token_command=token_command(tmp_path, "", status=2, stderr="offline"),
    )
    with pytest.raises(DeliveryError) as info:
        SmtpConnection(settings).__enter__()
    assert not isinstance(info.value, PermanentDeliveryError)
    assert str(info.value) == (
        f"no OAuth2 token for {SMTP_USER} at SMTP server 127.0.0.1:{smtp.port} "
        "(token_command exited with status 2: offline)"
    )
    assert smtp.xoauth2_attempts == []


@pytest.mark.parametrize("key", ["refresh_token_file", "client_secret_file"])
def test_an_unreadable_smtp_secret_file_leaves_the_notices_untouched(
    tmp_path: Path, imap: OAuthDovecot, smtp: OAuthSmtpSink, key: str
) -> None:
    # As a DeliveryError it recorded an attempt on every due notice and, after
    # smtp.retry_for_hours, failed them all, though no server had refused anything.
    secret = tmp_path / "smtp.secret"
    secret.write_text("s3cret-smtp\n")
    keys = (
        f'client_id = "mailcase-test"\n{key} = "{secret}"\n'
        f'token_url = "http://127.0.0.1:{free_port()}/token"'
    )
    if key != "refresh_token_file":
        keys += '\nrefresh_token = "rt-smtp"'
    rt = Runtime.open(load_settings(oauth_config(tmp_path, imap, smtp, smtp_keys=keys)))
    try:
        fetched = FetchedMessage(uid=1, raw=mail(), internal_date=datetime.now(UTC))
        assert service.ingest_message(rt, "contacto", 1, fetched) == "new_case"
        secret.unlink()  # rotated away after start-up
        with pytest.raises(SecretError, match=f"cannot read {key} {secret}"):
            SmtpConnection(rt.settings.smtp).__enter__()
        with pytest.raises(SecretError):
            deliver_outbox(rt.store, rt.settings)
        with rt.store.reading() as conn:
            notices = conn.execute(sa.select(Notice.status, Notice.attempts)).all()
    finally:
        rt.store.dispose()
    assert [tuple(n) for n in notices] == [("queued", 0)]
    assert smtp.xoauth2_attempts == []


def test_smtp_server_without_xoauth2(tmp_path: Path, sink: Any) -> None:
    settings = SmtpSettings(
        host=sink.host,
        port=sink.port,
        security="none",
        auth="oauth2",
        username=SMTP_USER,
        token_command=token_command(tmp_path, "tok-any"),
    )
    with pytest.raises(PermanentDeliveryError, match="does not offer AUTH XOAUTH2"):
        SmtpConnection(settings).__enter__()


# -- configuration ------------------------------------------------------------------------

_BASE = """
[mailboxes.contacto]
address = "contacto@example.com"
host = "imap.example.com"
{mailbox}
[smtp]
host = "smtp.example.com"
{smtp}
"""


@pytest.mark.parametrize(
    ("mailbox", "smtp", "message"),
    [
        (
            'token_command = "get-token"',
            "",
            'bad value for mailboxes.contacto: token_command needs auth = "oauth2"',
        ),
        (
            'auth = "oauth2"\npassword = "x"\ntoken_command = "t"',
            "",
            'bad value for mailboxes.contacto: password is not used with auth = "oauth2"',
        ),
        (
            'auth = "oauth2"',
            "",
            'bad value for mailboxes.contacto: auth = "oauth2" needs token_command, or '
            "client_id, refresh_token (or refresh_token_file) and token_url",
        ),
        (
            'auth = "oauth2"\ntoken_command = "t"\nclient_id = "c"',
            "",
            "bad value for mailboxes.contacto: token_command and client_id are two ways",
        ),
        (
            'auth = "oauth2"\nclient_id = "c"\nrefresh_token = "r"',
            "",
            'bad value for mailboxes.contacto: auth = "oauth2" with a refresh token needs '
            "token_url",
        ),
        (
            'auth = "oauth2"\nclient_id = "c"\nrefresh_token = "r"\n'
            'refresh_token_file = "/f"\ntoken_url = "https://t.example/token"',
            "",
            "bad value for mailboxes.contacto: give only one of refresh_token, refresh_token_file",
        ),
        (
            'auth = "oauth2"\nclient_id = "c"\nrefresh_token = "r"\ntoken_url = "ftp://t/x"',
            "",
            "bad value for mailboxes.contacto: token_url 'ftp://t/x' is not an http(s) URL",
        ),
        (
            'auth = "oauth2"\nclient_id = "c"\nrefresh_token = "r"\n'
            'token_url = "http://login.example.com/token"',
            "",
            "bad value for mailboxes.contacto: token_url http://login.example.com/token is "
            "plain http",
        ),
        (
            'auth = "oauth2"\ntoken_command = "get-token \'unclosed"',
            "",
            "bad value for mailboxes.contacto: token_command cannot be split into words",
        ),
        (
            'auth = "oauth2"\ntoken_command = "   "',
            "",
            "bad value for mailboxes.contacto: token_command is empty",
        ),
        (
            'auth = "oauth2"\ntoken_command = "t"',
            'auth = "oauth2"\ntoken_command = "t"',
            'bad value for smtp: auth = "oauth2" needs username',
        ),
        (
            'auth = "xoauth"',
            "",
            "bad value for mailboxes.contacto.auth: Input should be 'password' or 'oauth2'",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, mailbox: str, smtp: str, message: str) -> None:
    path = tmp_path / "mailcase.toml"
    path.write_text(_BASE.format(mailbox=mailbox, smtp=smtp))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(message), str(info.value)
    assert str(info.value).endswith(f"in {path}")


def test_config_accepts_both_token_sources(tmp_path: Path) -> None:
    path = tmp_path / "mailcase.toml"
    path.write_text(
        _BASE.format(
            mailbox='auth = "oauth2"\ntoken_command = "oauth2-helper --account contacto"',
            smtp='auth = "oauth2"\nusername = "avisos@example.com"\nclient_id = "c"\n'
            'client_secret_file = "/etc/mailcase/client.secret"\n'
            'refresh_token = "rt-only-in-config"\n'
            'token_url = "https://oauth2.example.com/token"\nscope = "https://mail.example/"',
        )
    )
    settings = load_settings(path)
    assert settings.mailboxes["contacto"].auth == "oauth2"
    assert settings.smtp.resolved_refresh_token() == "rt-only-in-config"
    assert "rt-only-in-config" not in repr(settings.smtp)


def test_the_commented_example_loads(tmp_path: Path) -> None:
    text = (REPO / "config" / "mailcase.example.toml").read_text(encoding="utf-8")
    marker = text.index("# -- OAuth2 logins")
    # Example keys are commented out as "#key"; explanations as "# text".
    enabled = text[:marker] + re.sub(r"(?m)^#(?=\S)", "", text[marker:])
    path = tmp_path / "example.toml"
    path.write_text(enabled, encoding="utf-8")
    settings = load_settings(path)  # reads no secret file
    ventas, soporte = settings.mailboxes["ventas"], settings.mailboxes["soporte"]
    assert ventas.auth == soporte.auth == "oauth2"
    assert ventas.token_command is not None
    assert soporte.refresh_token_file == Path("/etc/mailcase/soporte.refresh")
