"""The SMTP adapter: one connection per delivery run, errors sorted into retry or not.

TLS is verified (``smtp.ca_file`` to trust a private CA); a failed STARTTLS is
an error, never a fall-back to plain text. When the server hangs up during a
run (a 421, a reset, a time-out), the next message connects again, once.
"""

from __future__ import annotations

import base64
import contextlib
import re
import smtplib
import ssl
from types import TracebackType

from mailcase.config import SmtpSettings, tls_context
from mailcase.errors import ConfigError, DeliveryError, PermanentDeliveryError, SecretError
from mailcase.oauth import TokenError, TokenProvider, smtp_tokens, xoauth2_string

_SESSION_REFUSALS = frozenset({503, 530})
DATA_DONE_TIMEOUT = 600.0  # seconds for the reply to the end of a message (RFC 5321)


def _classify(exc: BaseException, what: str) -> DeliveryError:
    """``what`` failed with ``exc``: permanent for a 5xx reply, else worth retrying.

    The text is the server's reply as it wrote it ("550 5.1.1 <juan@…>: User
    unknown"), never a Python tuple or bytes literal: it is shown to agents.
    """
    code, answer = _reply_of(exc)
    if code is None:
        return DeliveryError(f"{what}: {exc or type(exc).__name__}")
    text = f"{code} {answer}".strip()
    if code in _SESSION_REFUSALS:
        # Refused for the session, not for this notice (RFC 5321 503 "bad sequence of
        # commands", RFC 4954 530 "authentication required"): every notice would fail
        # the same way, so they wait, and back off, until the admin or server is fixed.
        return DeliveryError(f"{what}: {text}")
    if 500 <= code < 600:
        return PermanentDeliveryError(f"{what}: {text}")
    return DeliveryError(f"{what}: {text}")


def _reply_of(exc: BaseException) -> tuple[int | None, str]:
    """The SMTP reply code and text an smtplib exception carries, or (None, "")."""
    code: object
    answer: object
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = list(exc.recipients.values())
        if not replies:
            return None, ""
        code, answer = replies[0]
    else:
        code, answer = getattr(exc, "smtp_code", None), getattr(exc, "smtp_error", b"")
    if not isinstance(code, int):
        return None, ""
    text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)
    return code, " ".join(text.split())


class SmtpConnection:
    """A logged-in SMTP session; use as a context manager around a delivery run."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.client: smtplib.SMTP | None = None
        self._lost = False  # the server hung up: the next send connects again
        self._unreachable: DeliveryError | None = None  # that reconnection failed

    def __enter__(self) -> SmtpConnection:
        """Connect and log in; raise DeliveryError (retry) or PermanentDeliveryError,
        or SecretError when the password file or credential, or the OAuth2
        refresh_token_file or client_secret_file, cannot be read (also when
        connecting again during a run: it ends the run)."""
        s = self.settings
        where = f"SMTP server {s.host}:{s.effective_port}"
        context = None
        if s.security != "none":
            try:
                context = tls_context(s.ca_file, "smtp.ca_file")
            except ConfigError as exc:
                # Named as the admin's mistake ("smtp.ca_file /x: No such file or
                # directory"); a DeliveryError so that notices stay queued until it is
                # fixed. `run` and `poll` refuse to start with it (config.check_ca_files).
                raise DeliveryError(str(exc)) from exc
        tokens: TokenProvider | None = None
        token = ""
        if s.auth == "oauth2":
            tokens = smtp_tokens(s)
            try:
                token = tokens.token()
            except TokenError as exc:
                if isinstance(exc.__cause__, ConfigError):
                    # refresh_token_file or client_secret_file unreadable: this process's
                    # fault, as a password file's (below), not the server's; as a
                    # DeliveryError it used up every due notice's attempts until FAILED.
                    raise SecretError(f"{where}: {exc}") from exc
                raise DeliveryError(f"no OAuth2 token for {s.username} at {where} ({exc})") from exc
        # Read before connecting: a password file or credential that cannot be read
        # then leaves no connection open behind it.
        try:
            password = None if tokens is not None else s.resolved_password()
        except ConfigError as exc:
            # Unreadable after start-up (a file rotated away), or in an admin's shell
            # (no $CREDENTIALS_DIRECTORY): not a DeliveryError, which would back off
            # every due notice for a fault of this process's. The sentence names the
            # file or credential, never its content.
            raise SecretError(f"{where}: {exc}") from exc
        try:
            if s.security == "tls":
                self.client = smtplib.SMTP_SSL(
                    s.host, s.effective_port, timeout=s.timeout_seconds, context=context
                )
            else:
                self.client = smtplib.SMTP(s.host, s.effective_port, timeout=s.timeout_seconds)
            _greet(self.client)
            if s.security == "starttls":
                self.client.starttls(context=context)
                _greet(self.client)
            if tokens is not None:
                self._xoauth2(s.username or "", token, where)
            else:
                if s.username and password is not None:
                    if not self.client.has_extn("auth"):
                        # smtplib's SMTPNotSupportedError read as "cannot connect". Postfix
                        # on 587 offers AUTH only after STARTTLS (smtpd_tls_auth_only):
                        # security = "none" never logs in. Said as what to change; the
                        # notices stay queued (the connection, not they, failed) and go
                        # out once the setting is fixed.
                        raise PermanentDeliveryError(
                            f'{where} offers no AUTH on this connection (set security = "starttls" '
                            'or "tls")'
                        )
                    if (s.username + password).isascii():
                        self.client.login(s.username, password)
                    else:
                        self._utf8_login(s.username, password, where)
        except smtplib.SMTPAuthenticationError as exc:
            self.close()
            if tokens is not None:
                tokens.invalidate()  # revoked or expired early: fetch a new one next time
                answer = exc.smtp_error
                if isinstance(answer, bytes):
                    answer = answer.decode("utf-8", "replace")
                raise PermanentDeliveryError(
                    f"{where} refused the OAuth2 login for {s.username} ({exc.smtp_code} {answer})"
                ) from exc
            raise PermanentDeliveryError(f"{where} refused the login for {s.username}") from exc
        except PermanentDeliveryError:
            self.close()
            raise
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            self.close()
            # Connection-level trouble is temporary, even a 5xx greeting: the
            # notice itself was not refused.
            raise DeliveryError(f"cannot connect to {where} ({exc or type(exc).__name__})") from exc
        except ValueError as exc:
            # smtplib decodes the server's AUTH challenge (CRAM-MD5's base64) without
            # a guard: binascii.Error, a ValueError, crashed every delivery run with
            # a traceback and left the notices with no error to show.
            self.close()
            raise DeliveryError(
                f"cannot log in to {where}: its answer to AUTH could not be read ({exc})"
            ) from exc
        except BaseException:
            self.close()
            raise
        return self

    def _utf8_login(self, user: str, password: str, where: str) -> None:
        """AUTH PLAIN (or LOGIN) with a user name or password that is not ASCII, as UTF-8.

        smtplib encodes what it base64-encodes as ASCII (a UnicodeEncodeError); RFC 4616
        defines PLAIN's fields as UTF-8, and LOGIN's base64 carries bytes as well.
        Raises SMTPAuthenticationError when refused, as ``smtplib.SMTP.login`` does.
        """
        assert self.client is not None
        offered = self.client.esmtp_features.get("auth", "").upper().split()

        def b64(text: str) -> str:
            return base64.b64encode(text.encode("utf-8")).decode("ascii")

        if "PLAIN" in offered:
            code, answer = self.client.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{password}"))
        elif "LOGIN" in offered:
            code, answer = self.client.docmd("AUTH", "LOGIN")
            for step in (user, password):
                if code != 334:
                    break
                code, answer = self.client.docmd(b64(step))
        else:
            raise PermanentDeliveryError(
                f"{where} offers neither AUTH PLAIN nor AUTH LOGIN, which a password that is "
                "not ASCII needs"
            )
        if code not in (235, 503):  # 503: already authenticated (as smtplib accepts)
            raise smtplib.SMTPAuthenticationError(code, answer)

    def _xoauth2(self, user: str, token: str, where: str) -> None:
        assert self.client is not None
        offered = self.client.esmtp_features.get("auth", "").upper().split()
        if "XOAUTH2" not in offered:
            raise PermanentDeliveryError(f"{where} does not offer AUTH XOAUTH2")

        def respond(challenge: bytes | None = None) -> str:
            # smtplib base64-encodes what this returns. The first call (no challenge)
            # gives the RFC 4954 initial response. A refused token comes back as a 334
            # challenge holding a JSON error (Gmail, Outlook): the client must answer
            # with an empty line, and the server then sends its 535.
            return xoauth2_string(user, token) if challenge is None else ""

        self.client.auth("XOAUTH2", respond)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.client is None:
            return
        try:
            self.client.quit()
        except (OSError, smtplib.SMTPException):
            self.client.close()
        self.client = None

    @property
    def unreachable(self) -> DeliveryError | None:
        """Why connecting again failed after the server hung up during this run, or None."""
        return self._unreachable

    def _drop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self._lost = True

    def _reconnect(self) -> None:
        if self._unreachable is not None:
            # Once per run: a server that hung up and then refused a new connection
            # is not asked again for every notice left in the run.
            raise DeliveryError(str(self._unreachable))
        try:
            self.__enter__()
        except DeliveryError as exc:
            self._unreachable = exc
            # Even a refused login is the server's problem, not this notice's:
            # temporary, as when the connection at the start of a run fails.
            raise DeliveryError(str(exc)) from exc
        self._lost = False

    def send(self, mail_from: str, rcpt_to: str, raw: bytes) -> None:
        """Hand one message over; raise DeliveryError (retry) or PermanentDeliveryError.

        After the server hung up on an earlier message (a 421, a reset, a time-out)
        this connects again first. If that fails, this and every later send on this
        connection raise DeliveryError without trying; nothing is sent twice.
        """
        if self.client is None:
            if not self._lost:
                raise DeliveryError("SMTP connection is closed")
            self._reconnect()
            assert self.client is not None
        options: list[str] = []
        if not (mail_from + rcpt_to).isascii():
            # RFC 6531: a non-ASCII address needs the server's SMTPUTF8 extension.
            if not self.client.has_extn("smtputf8"):
                raise PermanentDeliveryError(
                    f"the SMTP server cannot deliver to the non-ASCII address {rcpt_to}"
                )
            options.append("SMTPUTF8")
        if _NOT_AN_ADDRESS.search(mail_from + rcpt_to):
            raise PermanentDeliveryError(f"cannot send to {rcpt_to!r}: not a mail address")
        try:
            _transaction(self.client, mail_from, rcpt_to, raw, options)
        except smtplib.SMTPServerDisconnected as exc:
            self._drop()
            raise DeliveryError(f"connection lost while sending ({exc})") from exc
        # SMTPException is an OSError: it must be looked at before plain OSError.
        except smtplib.SMTPException as exc:
            if self.client.sock is None:
                # smtplib closed its socket: the server answered 421, "closing
                # transmission channel" (RFC 5321 3.8), at MAIL, RCPT or DATA.
                self._drop()
            raise _classify(exc, f"server refused the message to {rcpt_to}") from exc
        except OSError as exc:  # time-out, reset
            self._drop()
            raise DeliveryError(f"connection lost while sending ({exc})") from exc
        except (UnicodeError, ValueError) as exc:
            raise PermanentDeliveryError(f"cannot send to {rcpt_to}: {exc}") from exc


# What no address may hold: it would end or break the SMTP command line.
_NOT_AN_ADDRESS = re.compile(r"[\r\n\x00<>]")


def _transaction(
    client: smtplib.SMTP, mail_from: str, rcpt_to: str, raw: bytes, options: list[str]
) -> None:
    """One message to one recipient: smtplib's ``sendmail`` without its ``quoteaddr``.

    ``quoteaddr`` runs ``email.utils.parseaddr`` on both addresses, a fifth of
    delivery's CPU (bench/ingest.py), to strip display names the outbox never
    has: its addresses are bare, and ``send`` refuses any that could break the
    command line. Raises what ``sendmail`` raises, after the same RSET, or the
    same close on a 421 (RFC 5321 3.8).
    """
    client.ehlo_or_helo_if_needed()
    esmtp = [f"SIZE={len(raw)}"] if client.has_extn("size") else []  # RFC 1870
    # RFC 6531: the command line itself may then carry UTF-8.
    client.command_encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    client.putcmd("mail", f"FROM:<{mail_from}>" + "".join(f" {o}" for o in esmtp + options))
    code, answer = client.getreply()
    if code != 250:
        _abandon(client, code)
        raise smtplib.SMTPSenderRefused(code, answer, mail_from)
    client.putcmd("rcpt", f"TO:<{rcpt_to}>")
    code, answer = client.getreply()
    if code not in (250, 251):
        _abandon(client, code)
        raise smtplib.SMTPRecipientsRefused({rcpt_to: (code, answer)})
    # RFC 5321 4.5.3.2.6: wait up to 10 minutes for the reply to the final dot. A
    # server that already took the message but answers late (a content scanner on a
    # relayed attachment) was timed out after smtp.timeout_seconds, and the notice
    # sent again on every retry; Postfix's smtp_data_done_timeout is 600 s too.
    sock = client.sock
    if sock is not None:
        sock.settimeout(max(sock.gettimeout() or 0.0, DATA_DONE_TIMEOUT))
    try:
        code, answer = client.data(raw)
    except smtplib.SMTPDataError as exc:
        # Refused at the DATA command itself (a policy service's 451): smtplib raises
        # without the RSET, and the server still holds MAIL and RCPT, so the next
        # notice's MAIL would get "503 nested MAIL command", a permanent failure.
        _abandon(client, exc.smtp_code)
        raise
    finally:
        if client.sock is not None and sock is client.sock:
            client.sock.settimeout(client.timeout)
    if code != 250:
        _abandon(client, code)
        raise smtplib.SMTPDataError(code, answer)


def _greet(client: smtplib.SMTP) -> None:
    """EHLO, or HELO when the server does not know EHLO (RFC 5321 4.1.4, 3.2).

    smtplib's ``ehlo`` returns a refusal instead of raising, and records it, so
    its later ``ehlo_or_helo_if_needed`` believes the greeting done and no HELO
    is ever sent: every MAIL would get "503 send HELO first", permanently.
    Raises SMTPHeloError when HELO is refused too.
    """
    code, _ = client.ehlo()
    if 200 <= code < 300:
        return
    code, answer = client.helo()
    if not 200 <= code < 300:
        raise smtplib.SMTPHeloError(code, answer)


def _abandon(client: smtplib.SMTP, code: int) -> None:
    """End a refused transaction: close on 421 (the server is closing), else RSET."""
    if code == 421:
        client.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        client.rset()
