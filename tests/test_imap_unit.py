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
