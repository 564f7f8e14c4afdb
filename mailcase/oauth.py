"""OAuth2 access tokens for the IMAP and SMTP logins (SASL XOAUTH2).

An account (a mailbox, or the SMTP server) with ``auth = "oauth2"`` gets its
access token from one of two sources:

* ``token_command``: a program printing an access token, as mbsync's
  ``PassCmd`` and aerc's ``source-cred-cmd`` users already have. It runs
  without a shell (``shlex.split``), in a process group of its own, for at
  most 30 s, after which the whole group is killed; its stdout, stripped, is
  the token. Its lifetime is unknown, so the token is reused for five minutes.
* a refresh token: the RFC 6749 section 6 ``refresh_token`` grant is POSTed to
  ``token_url`` and the answer's ``access_token`` is reused until shortly
  before its ``expires_in``. A new ``refresh_token`` in the answer (rotation)
  replaces the configured one in memory; ``refresh_token_file`` is read again
  at every refresh and, when its content changed, wins (see
  :class:`TokenProvider`).

:class:`TokenProvider` holds one account's token; :func:`mailbox_tokens` and
:func:`smtp_tokens` hand out the process-wide provider of an account, so the
daemon's poll and delivery threads share one cache (it is thread-safe). A
failure raises :class:`TokenError`, whose text never holds a token or secret;
the IMAP and SMTP adapters turn it into their own errors. Failures are logged
as ``oauth_token_failed`` at most once an hour per account, naming it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from mailcase.config import MailboxSettings, SmtpSettings, safe_url
from mailcase.errors import ConfigError, MailcaseError
from mailcase.logs import get_logger

COMMAND_TIMEOUT = 30.0  # seconds a token_command may run
COMMAND_TOKEN_LIFETIME = 300.0  # a token_command's token is reused this long
DEFAULT_LIFETIME = 300.0  # for a token answer without expires_in (RFC 6749 5.1: optional)
REFRESH_MARGIN = 60.0  # refresh this long before expiry (at most half the lifetime)
HTTP_TIMEOUT = 30.0
FAILURE_LOG_INTERVAL = 3600.0  # oauth_token_failed at most this often per account
_MAX_ANSWER_BYTES = 1_000_000
_DETAIL_CHARS = 200

# RFC 6750 2.1 b64token is narrower; anything printable without spaces is passed on, but
# a space or control character would corrupt the XOAUTH2 string (fields end at \x01).
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")

AccountSettings = MailboxSettings | SmtpSettings


class TokenError(MailcaseError):
    """No access token could be had; the text says why and never holds a secret."""


class _GrantRefused(TokenError):
    """The token endpoint answered ``invalid_grant`` (RFC 6749 5.2): the refresh token
    sent is expired, revoked or unknown."""


def xoauth2_string(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial client response (Google's and Microsoft's format).

    ``user=USER^Aauth=Bearer TOKEN^A^A``; the SASL layer base64-encodes it
    (``smtplib.SMTP.auth`` and imaplib do so themselves).
    """
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


class TokenProvider:
    """The access token of one account: cached, refreshed before it expires.

    ``log_context`` names the account in the ``oauth_token_failed`` event (e.g.
    ``{"mailbox": "contacto"}``); ``clock`` is a monotonic clock in seconds.

    The refresh token: ``refresh_token_file`` is read at every refresh, as
    ``client_secret_file`` and ``password_file`` are at every login, so an admin
    who replaces a revoked refresh token in the file needs no restart. A refresh
    token the provider rotated in (a ``refresh_token`` in its answer) is used
    from memory instead of the file's, until the file's content changes: then
    the file wins. When the endpoint answers ``invalid_grant`` to a rotated
    token, the one in memory is dropped and the file's (or the configured
    ``refresh_token``) is tried once, in the same call; a token that the file
    still holds is not retried until the next call.

    After a failure, the next success logs ``oauth_token_recovered``, and the
    next failure after that is logged as ``oauth_token_failed`` at once: the
    hourly limit spares only the repeats of one outage.
    """

    def __init__(
        self,
        settings: AccountSettings,
        log_context: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.auth != "oauth2":
            raise ValueError('TokenProvider needs settings with auth = "oauth2"')
        self.settings = settings
        self._log_context = dict(log_context)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._valid_until = 0.0
        # What refresh_token_file (or refresh_token) held when last read, and the refresh
        # token to send: that one, or the latest a provider rotated in.
        self._configured_refresh_token: str | None = None
        self._refresh_token: str | None = None
        self._last_failure_log: float | None = None
        self._failing = False

    def token(self) -> str:
        """A current access token; raise :class:`TokenError` when none can be had."""
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._valid_until:
                return self._token
            self._token = None
            try:
                token, reuse_for = self._fetch()
            except TokenError as exc:
                self._log_failure(exc, now)
                raise
            if self._failing:
                self._failing = False
                # A new outage is news even within the hour of the last one's log.
                self._last_failure_log = None
                get_logger(**self._log_context).info("oauth_token_recovered")
            self._token = token
            # Counted from the request, not the answer: fetching took time too.
            self._valid_until = now + reuse_for
            return token

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it); the next call fetches anew."""
        with self._lock:
            self._token = None

    def _log_failure(self, exc: TokenError, now: float) -> None:
        self._failing = True
        last = self._last_failure_log
        if last is not None and now - last < FAILURE_LOG_INTERVAL:
            return
        self._last_failure_log = now
        get_logger(**self._log_context).warning("oauth_token_failed", error=str(exc))

    def _fetch(self) -> tuple[str, float]:
        """A new token, and for how many seconds to reuse it."""
        if self.settings.token_command is not None:
            return _run_token_command(self.settings.token_command), COMMAND_TOKEN_LIFETIME
        return self._refresh()

    # -- RFC 6749 section 6: refreshing an access token ---------------------------------

    def _refresh(self) -> tuple[str, float]:
        s = self.settings
        try:
            configured = s.resolved_refresh_token()
            client_secret = s.resolved_client_secret()
        except ConfigError as exc:
            raise TokenError(str(exc)) from exc
        if configured != self._configured_refresh_token:
            # First read, or the admin wrote a new one: it beats a rotated one in memory.
            self._configured_refresh_token = self._refresh_token = configured
        sent = self._refresh_token
        if not sent:
            raise TokenError("the refresh token is empty")
        try:
            return self._grant(sent, client_secret)
        except _GrantRefused:
            if sent == configured or not configured:
                raise
            # A rotated token was refused (revoked, or lost to a rotation the answer of
            # which never arrived): fall back on the configured one, once.
            self._refresh_token = configured
            return self._grant(configured, client_secret)

    def _grant(self, refresh_token: str, client_secret: str | None) -> tuple[str, float]:
        """Exchange ``refresh_token`` for an access token; keep a rotated refresh token."""
        s = self.settings
        assert s.token_url is not None and s.client_id is not None  # config guarantees it
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": s.client_id,
        }
        # RFC 6749 2.3.1 allows the client credentials in the body; Google's and
        # Microsoft's endpoints both take them there (public clients send none).
        if client_secret:
            form["client_secret"] = client_secret
        if s.scope:
            form["scope"] = s.scope
        answer = _post_form(s.token_url, form)
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise TokenError(f"the answer of {_where(s.token_url)} has no access_token")
        if not _TOKEN_RE.fullmatch(token):
            raise TokenError(f"the access_token from {_where(s.token_url)} is not a bearer token")
        rotated = answer.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            self._refresh_token = rotated
        lifetime = _lifetime(answer.get("expires_in"))
        return token, lifetime - min(REFRESH_MARGIN, lifetime / 2)


def _lifetime(value: Any) -> float:
    # Some endpoints (older Microsoft ones) send expires_in as a string.
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return DEFAULT_LIFETIME
    return seconds if seconds > 0 else DEFAULT_LIFETIME


def _where(url: str) -> str:
    """The endpoint as it may be shown: no userinfo, no query (either could carry a credential)."""
    return safe_url(url)


def _trim(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _DETAIL_CHARS else line[: _DETAIL_CHARS - 1] + "…"


def _post_form(url: str, form: Mapping[str, str]) -> dict[str, Any]:
    """POST ``form`` urlencoded; the JSON object answered, or TokenError."""
    where = _where(url)
    request = urllib.request.Request(  # noqa: S310 (the config allows only http(s) URLs)
        url,
        data=urlencode(form).encode("ascii"),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "mailcase",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            body = response.read(_MAX_ANSWER_BYTES)
    except urllib.error.HTTPError as exc:
        try:
            error, detail = _oauth_error(exc.read(_MAX_ANSWER_BYTES))
        except (OSError, http.client.HTTPException):
            error, detail = None, ""
        finally:
            exc.close()
        refused = _GrantRefused if error == "invalid_grant" else TokenError
        raise refused(f"{where} answered HTTP {exc.code}{detail}") from None
    except urllib.error.URLError as exc:
        raise TokenError(f"cannot reach {where} ({exc.reason})") from None
    except http.client.InvalidURL:
        # Its text quotes the URL's host and port part, which may hold a credential.
        raise TokenError(f"cannot reach {where} (not a usable URL)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TokenError(f"cannot reach {where} ({exc or type(exc).__name__})") from None
    try:
        answer = json.loads(body)
    except ValueError:
        raise TokenError(f"{where} did not answer JSON") from None
    if not isinstance(answer, dict):
        raise TokenError(f"{where} did not answer a JSON object")
    return answer


def _oauth_error(body: bytes) -> tuple[str | None, str]:
    """The ``error`` code of an RFC 6749 5.2 error answer and its text for people,
    ``: invalid_grant (description)``; ``(None, "")`` for any other body."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None, ""
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), str):
        return None, ""
    error: str = answer["error"]
    text = f": {error}"
    description = answer.get("error_description")
    if isinstance(description, str) and description.strip():
        text += f" ({_trim(description)})"
    return error, text


# -- token_command ------------------------------------------------------------------------


def _run_token_command(command: str) -> str:
    """The token ``command`` printed; TokenError if it failed or ran out of time.

    When it returns or raises, the command has been reaped, and after a timeout
    nothing it started in its process group is left running.
    """
    argv = shlex.split(command)  # the config checked that it splits into words
    try:
        # A session of its own: at the timeout the whole group is killed, not only the
        # command; a wrapper script's children (a "helper | jq" pipeline) would otherwise
        # outlive it, one more set every poll while the helper hangs.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise TokenError(f"token_command: {argv[0]} not found") from None
    except OSError as exc:
        raise TokenError(f"cannot run token_command {argv[0]} ({exc.strerror})") from None
    with process:  # closes the pipes and reaps the command on the way out
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise TokenError(f"token_command did not finish within {COMMAND_TIMEOUT:g} s") from None
        except BaseException:
            _kill_group(process)
            raise
    out = stdout.decode("utf-8", "replace").strip()
    if process.returncode != 0:
        message = f"token_command exited with status {process.returncode}"
        err = _stderr_line(stderr, out)
        raise TokenError(f"{message}: {err}" if err else message)
    if not out:
        err = _stderr_line(stderr, out)
        message = "token_command printed no token"
        raise TokenError(f"{message}: {err}" if err else message)
    if not _TOKEN_RE.fullmatch(out):
        raise TokenError("token_command printed more than one word (expected only the token)")
    return out


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``process`` leads (its pid is the group's id)."""
    # The command is not reaped yet, so its pid, the group's id, cannot have been reused.
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(process.pid, signal.SIGKILL)


def _stderr_line(stderr: bytes, stdout: str) -> str:
    """The last non-empty line of a command's stderr, trimmed, with its stdout blanked out.

    A command that printed a token and then failed might repeat it on stderr.
    """
    text = stderr.decode("utf-8", "replace")
    for word in stdout.split():
        if len(word) >= 8:  # a token; short words would blank out ordinary text
            text = text.replace(word, "***")
    lines = [line for line in text.splitlines() if line.strip()]
    return _trim(lines[-1]) if lines else ""


# -- one provider per account, for the whole process --------------------------------------

_providers: dict[tuple[str, str], TokenProvider] = {}
_providers_lock = threading.Lock()


def _provider(
    key: tuple[str, str], settings: AccountSettings, context: dict[str, str]
) -> TokenProvider:
    with _providers_lock:
        provider = _providers.get(key)
        # Settings are frozen and compare by value: a reloaded, unchanged config keeps
        # its cached token; a changed one starts afresh.
        if provider is None or provider.settings != settings:
            provider = _providers[key] = TokenProvider(settings, context)
        return provider


def mailbox_tokens(name: str, settings: MailboxSettings) -> TokenProvider:
    """The process-wide token provider of mailbox ``name``."""
    return _provider(("mailbox", name), settings, {"mailbox": name})


def smtp_tokens(settings: SmtpSettings) -> TokenProvider:
    """The process-wide token provider of the SMTP login."""
    where = f"{settings.host}:{settings.effective_port}"
    return _provider(("smtp", ""), settings, {"smtp": where})
