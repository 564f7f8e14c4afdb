"""The IMAP adapter's decisions that need no server."""

from __future__ import annotations

import pytest
from imapclient.exceptions import LoginError

from mailcase.imap import _unavailable


@pytest.mark.parametrize(
    ("server_said", "unavailable"),
    [
        ("b'[UNAVAILABLE] Temporary authentication failure. [host:2026-11-26]'", True),
        ("b'Temporary authentication failure.'", True),  # Dovecot without the RFC 5530 code
        ("b'[AUTHENTICATIONFAILED] Authentication failed.'", False),
        ("b'Login failed.'", False),
    ],
)
def test_a_server_that_cannot_check_logins_is_not_a_refused_login(
    server_said: str, unavailable: bool
) -> None:
    assert _unavailable(LoginError(server_said)) is unavailable


def test_an_unreadable_password_file_is_named_before_any_connection(tmp_path: object) -> None:
    # Read after connecting, it left the socket open behind the ConfigError; with the
    # server down too, the admin was told "cannot connect" instead of the file.
    from mailcase.config import MailboxSettings
    from mailcase.errors import ConfigError
    from mailcase.imap import ImapMailbox

    settings = MailboxSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": 1,  # nothing listens
            "security": "none",
            "username": "contacto",
            "password_file": "/nonexistent/contacto.pw",
            "address": "contacto@example.com",
        }
    )
    with pytest.raises(ConfigError, match=r"/nonexistent/contacto\.pw"):
        ImapMailbox("contacto", settings).connect()
