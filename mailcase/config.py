"""The settings model: one TOML file, validated once at start-up.

Where the file comes from: ``--config PATH``, else ``$MAILCASE_CONFIG``, else
``/etc/mailcase/mailcase.toml``. Every key is documented next to its default in
``config/mailcase.example.toml`` (a test loads that file).

Environment variables override the file, pydantic-settings style:
``MAILCASE_DATABASE__URL=... mailcase poll``. Relative paths are relative to the
config file's directory (:func:`load_settings`). Secrets come from ``password``,
``password_file`` or, under systemd, ``password_credential`` (a name under
``$CREDENTIALS_DIRECTORY``, see ``LoadCredential=``); they are held as
:class:`~pydantic.SecretStr` so they never print. With ``auth = "oauth2"`` a
mailbox or the SMTP server logs in with an OAuth2 access token instead (XOAUTH2):
from a ``token_command``, or refreshed with ``client_id``/``refresh_token``/
``token_url`` (see :mod:`mailcase.oauth`).

:func:`load_settings` raises :class:`~mailcase.errors.ConfigError` with one
sentence naming the key and the file; nothing else in this module exits.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import ssl
import tomllib
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from mailcase.businesshours import (
    DEFAULT_HOURS,
    WEEKDAYS,
    BusinessCalendar,
    parse_date,
    parse_range,
)
from mailcase.errors import ConfigError
from mailcase.wire import ascii_domain

DEFAULT_CONFIG_PATH = Path("/etc/mailcase/mailcase.toml")

Security = Literal["tls", "starttls", "none"]
_ADDRESS_RE = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def _check_address(value: str) -> str:
    """``value`` as a mail address spelt as a message's sender is spelt
    (:func:`mailcase.inbound.canonical_address`: lower-cased, no root dot, a non-ASCII
    domain in IDNA form), so that an agent's own mail is known as theirs."""
    value = value.strip().lower()
    if not _ADDRESS_RE.match(value):
        raise ValueError(f"{value!r} is not a mail address")
    local, _, domain = value.rpartition("@")
    return ascii_domain(f"{local}@{domain.rstrip('.')}")


def _own_address(value: str) -> str:
    """An address mailcase sends from or to on its own behalf, ASCII only.

    It becomes the notices' envelope sender, From, loop header and Message-ID
    domain: with a non-ASCII domain (``contacto@telefonía.mx``) every message
    to the mailbox was quarantined (no Message-ID domain could be made), and
    every notice needed SMTPUTF8, which many relays lack. The admin is told
    the ASCII (IDNA) form to write instead.
    """
    if value.isascii():
        return _check_address(value)
    value = value.strip().lower()
    local, _, domain = value.rpartition("@")
    try:
        suggestion = f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        suggestion = ""
    if not local.isascii() or not suggestion:
        raise ValueError(f"{value!r} must be an ASCII address: mailcase sends from it")
    raise ValueError(
        f"{value!r} must be written with its domain in ASCII form: {suggestion!r} "
        "(mailcase sends from it, and many relays take ASCII only)"
    )


# Upper bounds of the durations. TOML and the environment accept inf, nan and 1e300
# for a float, and any integer: each of them overflowed timedelta (or a socket's
# timeout) at the first use, which quarantined every message of a first poll
# (max_age_hours = inf) or crashed every delivery run (retry_for_hours = inf).
# Far above any real setting, far below an overflow.
MAX_HOURS = 87_600  # ten years
MAX_DAYS = 3_650  # ten years
MAX_INTERVAL_SECONDS = 86_400  # a day between polls
MAX_TIMEOUT_SECONDS = 3_600  # an hour for one network operation


class _Section(BaseModel):
    # hide_input_in_errors: a ValidationError's text (shown by --debug) would
    # otherwise quote the offending table, password and all.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


AuthMethod = Literal["password", "oauth2"]
_PASSWORD_KEYS = ("password", "password_file", "password_credential")
_CLIENT_SECRET_KEYS = ("client_secret", "client_secret_file")
_REFRESH_TOKEN_KEYS = ("refresh_token", "refresh_token_file")
_REFRESH_KEYS = ("client_id", "client_secret", "client_secret_file", "refresh_token",
                 "refresh_token_file", "token_url", "scope")  # fmt: skip
_OAUTH_KEYS = ("token_command", *_REFRESH_KEYS)


class _Secret(_Section):
    """A server login: a password given inline, in a file, or as a systemd credential;
    or, with ``auth = "oauth2"``, an OAuth2 access token (XOAUTH2)."""

    username: str | None = None
    auth: AuthMethod = "password"
    password: SecretStr | None = None
    password_file: Path | None = None
    password_credential: str | None = None
    # auth = "oauth2": either a command printing an access token (as mbsync's and aerc's
    # users already have), or an RFC 6749 refresh token exchanged at token_url.
    token_command: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None  # none for a public client
    client_secret_file: Path | None = None
    refresh_token: SecretStr | None = None
    refresh_token_file: Path | None = None
    token_url: str | None = None
    scope: str | None = None  # sent with the refresh request when given

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        for group in (_PASSWORD_KEYS, _CLIENT_SECRET_KEYS, _REFRESH_TOKEN_KEYS):
            given = [n for n in group if getattr(self, n) is not None]
            if len(given) > 1:
                raise ValueError(f"give only one of {', '.join(given)}")
        return self

    @model_validator(mode="after")
    def _auth_keys(self) -> Self:
        given = {n for n in (*_PASSWORD_KEYS, *_OAUTH_KEYS) if getattr(self, n) is not None}
        if self.auth == "password":
            for key in _OAUTH_KEYS:
                if key in given:
                    raise ValueError(f'{key} needs auth = "oauth2"')
            return self
        for key in _PASSWORD_KEYS:
            if key in given:
                raise ValueError(f'{key} is not used with auth = "oauth2" (a token replaces it)')
        refresh = given & set(_REFRESH_KEYS)
        if self.token_command is not None:
            if refresh:
                raise ValueError(
                    f"token_command and {', '.join(sorted(refresh))} are two ways to get a token: "
                    "give only one"
                )
            try:
                argv = shlex.split(self.token_command)
            except ValueError as exc:
                raise ValueError(f"token_command cannot be split into words: {exc}") from None
            if not argv:
                raise ValueError("token_command is empty")
            return self
        if not refresh:
            raise ValueError(
                'auth = "oauth2" needs token_command, or client_id, refresh_token '
                "(or refresh_token_file) and token_url"
            )
        missing = [
            key
            for key, present in (
                ("client_id", self.client_id is not None),
                ("refresh_token", bool({"refresh_token", "refresh_token_file"} & given)),
                ("token_url", self.token_url is not None),
            )
            if not present
        ]
        if missing:
            raise ValueError(f'auth = "oauth2" with a refresh token needs {", ".join(missing)}')
        url = urlsplit(self.token_url or "")
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError(f"token_url {safe_url(self.token_url or '')!r} is not an http(s) URL")
        if url.username is not None or url.password is not None:
            # urllib would take "user:pass@host" for the host and quote it in its errors;
            # the client's credentials belong in client_id and client_secret.
            raise ValueError(
                f"token_url {safe_url(self.token_url or '')} must not carry a user name or "
                "password (use client_id and client_secret)"
            )
        try:
            url.port  # noqa: B018 (urlsplit checks the port only when asked for it)
        except ValueError:
            raise ValueError(
                f"token_url {safe_url(self.token_url or '')} has a port that is not a number "
                "from 1 to 65535"
            ) from None
        return self

    def resolved_password(self) -> str | None:
        """The password from whichever source was configured (files read now)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return _read_secret(self.password_file)
        if self.password_credential is not None:
            return _read_secret(_credential("password_credential", self.password_credential))
        return None

    def resolved_client_secret(self) -> str | None:
        """The OAuth2 client secret, if any (its file read now)."""
        if self.client_secret is not None:
            return self.client_secret.get_secret_value()
        if self.client_secret_file is not None:
            return _read_secret(self.client_secret_file, "client_secret_file")
        return None

    def resolved_refresh_token(self) -> str | None:
        """The configured OAuth2 refresh token (its file read now)."""
        if self.refresh_token is not None:
            return self.refresh_token.get_secret_value()
        if self.refresh_token_file is not None:
            return _read_secret(self.refresh_token_file, "refresh_token_file")
        return None


def safe_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host, port and path only.

    A token_url can carry a credential in its userinfo (``https://user:pass@host/``)
    or its query (``?client_secret=...``); neither may reach an error message or a log.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range: not shown (it could be a secret)
        port = None
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"


def _credential(key: str, name: str) -> Path:
    """The file of systemd credential ``name`` (``LoadCredential=``), named by ``key`` on error."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(f"{key} {name!r} needs $CREDENTIALS_DIRECTORY (systemd LoadCredential=)")
    return Path(directory) / name


def _read_secret(path: Path, what: str = "password file") -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        # Not the bytes: they are (part of) the secret.
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start + 1})") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(_Secret):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security = "tls"
    ca_file: Path | None = None  # trust this CA (PEM) instead of the system store
    allow_insecure: bool = False  # permit security = "none" to a non-loopback host
    timeout_seconds: float = Field(default=60.0, gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        """A name the resolver can be asked for (or an IP address), unchanged.

        Python encodes a host name with the "idna" codec before resolving it, and a
        mistyped one (``imap..example.net``, a label over 63 characters) raised
        UnicodeError out of every poll and command instead of a sentence naming the key.
        """
        if any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not a host name: it contains a space")
        try:
            value.encode("idna")
        except UnicodeError:
            raise ValueError(
                f"{value!r} is not a host name (an empty label, as in 'imap..example.net', "
                "or one longer than 63 characters)"
            ) from None
        return value

    @model_validator(mode="after")
    def _refuse_cleartext(self) -> Self:
        # Passwords in clear over a network are refused unless the admin says
        # so explicitly; loopback (a local relay) is the usual exception.
        if self.security == "none" and not _is_loopback(self.host) and not self.allow_insecure:
            raise ValueError(
                f'security = "none" to non-loopback host {self.host} needs allow_insecure = true'
            )
        # The refresh token and client secret travel to token_url: the same rule.
        url = urlsplit(self.token_url or "")
        cleartext = url.scheme == "http" and not _is_loopback(url.hostname or "")
        if cleartext and not self.allow_insecure:
            raise ValueError(
                f"token_url {safe_url(self.token_url or '')} is plain http to a non-loopback "
                "host: use https, or allow_insecure = true"
            )
        return self


class MailboxSettings(_Server):
    """One support mailbox read over IMAP; the table key is its name."""

    address: str
    folder: str = "INBOX"
    # The language of the cases opened from this mailbox, and of the notices to agents
    # about its mail that belongs to no case; None: notices.language.
    language: Literal["es", "en"] | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _own_address(value)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    @property
    def login(self) -> str:
        return self.username or self.address


class SmtpSettings(_Server):
    retry_for_hours: float = Field(default=72.0, gt=0, le=MAX_HOURS, allow_inf_nan=False)

    @model_validator(mode="after")
    def _oauth_user(self) -> Self:
        if self.auth == "oauth2" and not self.username:
            raise ValueError('auth = "oauth2" needs username (the account the token is for)')
        return self

    @model_validator(mode="after")
    def _password_user(self) -> Self:
        # SMTP AUTH is attempted only with a user name (mailcase.smtp): a password
        # without one was never sent, and every notice then failed "530 Authentication
        # required" with nothing pointing at the missing key.
        given = next((k for k in _PASSWORD_KEYS if getattr(self, k) is not None), None)
        if given is not None and not self.username:
            raise ValueError(
                f"{given} is used only with a user name: set smtp.username "
                "(the account to log in as)"
            )
        return self

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587, "none": 25}[self.security]


class DatabaseSettings(_Section):
    url: str = "sqlite:////var/lib/mailcase/mailcase.db"
    auto_upgrade: bool | None = None  # None: yes for SQLite, no for other databases

    @field_validator("url")
    @classmethod
    def _no_sqlite_uri(cls, url: str) -> str:
        """An SQLite URI (``sqlite:///file:/path?uri=true``) is refused: the files mailcase
        keeps beside the database (the sent log, the delivery lock) are named from its
        path, and a URI read as a relative path put them, and an empty decoy database,
        under whatever directory a command ran in (two commands, two locks); SQLite
        created the real file readable by all."""
        head, _, rest = url.partition("://")
        if head.split("+")[0] == "sqlite" and (
            rest.lstrip("/").startswith("file:") or "uri=true" in rest.lower()
        ):
            raise ValueError(
                "an SQLite URI is not supported: give the file's path, "
                "e.g. sqlite:////var/lib/mailcase/mailcase.db"
            )
        return url

    @property
    def upgrades_itself(self) -> bool:
        if self.auto_upgrade is not None:
            return self.auto_upgrade
        return self.url.startswith("sqlite")


class StorageSettings(_Section):
    directory: Path = Path("/var/lib/mailcase/store")


_SIGNING_KEYS = ("signing_secret", "signing_secret_file", "signing_secret_credential")


class AgentsSettings(_Section):
    addresses: list[str] = Field(default_factory=list)
    notify: str | None = None
    # Authentication-Results headers written by these receiving servers (the
    # authserv-id, RFC 8601) are trusted; empty: none, unless
    # trust_topmost_authentication_results (for servers that write no
    # authserv-id, such as Microsoft 365).
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    trust_topmost_authentication_results: bool = False
    # The HMAC secret of the Message-IDs of notices to agents (mailcase.msgid).
    # Unset: a random one generated once and kept in the database.
    signing_secret: SecretStr | None = Field(default=None, min_length=16)
    signing_secret_file: Path | None = None
    signing_secret_credential: str | None = None

    @model_validator(mode="after")
    def _one_signing_source(self) -> Self:
        given = [n for n in _SIGNING_KEYS if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(given)}")
        return self

    def resolved_signing_secret(self) -> bytes | None:
        """The configured Message-ID secret (its file read now), or None when unset.

        Raises ConfigError for an unreadable file or one with fewer than 16 characters.
        """
        if self.signing_secret is not None:
            return self.signing_secret.get_secret_value().encode()
        if self.signing_secret_file is not None:
            path = self.signing_secret_file
        elif self.signing_secret_credential is not None:
            path = _credential("agents.signing_secret_credential", self.signing_secret_credential)
        else:
            return None
        secret = _read_secret(path, "agents.signing_secret file")
        if len(secret) < 16:
            raise ConfigError(f"agents.signing_secret file {path} holds fewer than 16 characters")
        return secret.encode()

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [_check_address(a) for a in value]

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: str | None) -> str | None:
        return None if value is None else _own_address(value)


class AreaSettings(_Section):
    """An area a case can be routed to (``#area NAME``); it is notified there."""

    notify: str
    name: str = ""  # shown to people; defaults to the table key

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: str) -> str:
        return _own_address(value)


class CasesSettings(_Section):
    # A customer reply within this reopens a resolved case.
    reopen_days: int = Field(default=30, ge=0, le=MAX_DAYS)
    # A reply of only thanks ("¡Muchas gracias!") to a resolved case reopens it too;
    # false: it is kept on the case, which stays resolved, and nobody is told.
    reopen_on_thanks: bool = False
    # Resolved cases close after this without a reply.
    close_after_days: int = Field(default=7, ge=1, le=MAX_DAYS)
    # An unowned case's owner becomes the agent whose reply by mail first answers its
    # customer (a relayed reply, #resolver, #visita), as FreeScout and Zammad do.
    auto_assign: bool = True
    # How long #pendiente (without a number) and `cases pending` wait for the customer's
    # answer before closing the case unresolved; at most commands.PENDING_MAX_DAYS (90).
    pending_days: int = Field(default=7, ge=1, le=90)


# Every environment variable that overrides a key starts so (MAILCASE_DATABASE__URL).
ENV_PREFIX = "MAILCASE_"


class EscalationSettings(_Section):
    # A case whose customer wrote and got no answer for this many hours earns one
    # reminder to the agents; 0: no reminders.
    unanswered_hours: int = Field(default=24, ge=0, le=MAX_HOURS)
    # "wall": every hour counts, nights and weekends included; "business": only the
    # open hours of [calendar], and no reminder goes out while the desk is closed.
    clock: Literal["wall", "business"] = "wall"


class HoursSettings(_Section):
    """One opening range "HH:MM-HH:MM" a weekday; a day left out (None) is closed."""

    mon: str | None = None
    tue: str | None = None
    wed: str | None = None
    thu: str | None = None
    fri: str | None = None
    sat: str | None = None
    sun: str | None = None

    @field_validator(*WEEKDAYS)
    @classmethod
    def _range(cls, value: str | None) -> str | None:
        if value is not None:
            parse_range(value)  # its ValueError names the value; pydantic adds the key
        return value

    @model_validator(mode="after")
    def _some_day_open(self) -> Self:
        if not self.ranges():
            raise ValueError("no day of the week is open (give at least one, e.g. mon)")
        return self

    def ranges(self) -> dict[str, str]:
        """The open weekdays and their ranges, Monday first."""
        return {day: r for day in WEEKDAYS if (r := getattr(self, day)) is not None}


class CalendarSettings(_Section):
    # The desk's hours in folio.timezone; used when escalation.clock = "business".
    hours: HoursSettings = HoursSettings(**DEFAULT_HOURS)
    holidays: list[date] = Field(default_factory=list)
    # The rest days of the Ley Federal del Trabajo, art. 74, are closed too.
    mexican_holidays: bool = True

    @field_validator("holidays", mode="before")
    @classmethod
    def _holidays(cls, value: Any) -> Any:
        # "YYYY-MM-DD" or a TOML date, nothing else: pydantic alone would take a
        # number of seconds since 1970 for a date.
        if not isinstance(value, list):
            return value  # pydantic says it is not a list
        days = []
        for item in value:
            if not isinstance(item, (str, date)):
                raise ValueError(f"{item!r} is not a date YYYY-MM-DD")
            days.append(parse_date(item))
        return days


class RetentionSettings(_Section):
    # Erase the personal data of a customer with no open case and no activity for this
    # many days (mailcase.retention), once a day in the daemon; 0: never (the default:
    # deleting data is never a default).
    inactive_days: int = Field(default=0, ge=0, le=MAX_DAYS)


class WebFormSettings(_Section):
    senders: list[str] = Field(default_factory=list)

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: list[str]) -> list[str]:
        return [_check_address(a) for a in value]


class SpamSettings(_Section):
    # Mail the receiving server's spam filter marked (X-Spam-Flag: YES and its
    # kin, mailcase.spam) opens no case and gets no answer, unless it follows a
    # case; false: the headers are not read.
    enabled: bool = True


class FolioSettings(_Section):
    prefix: str = Field(default="PLR", pattern=r"^[A-Z][A-Z0-9]{0,9}$")
    # The folio's year is the business's calendar year: mail written at 19:00
    # on 31 December in Mexico City is a report of that year, not of the next.
    timezone: str = "America/Mexico_City"

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        # OSError: a name that is a directory of the tz database ("America") or a
        # file zoneinfo cannot open; ValueError: a file that is not a TZif zone.
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as America/Mexico_City)"
            ) from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        """The business's time zone: its calendar (folio years) and its clock (what people read)."""
        return ZoneInfo(self.timezone)  # zoneinfo caches it: cheap to ask again

    def year(self, moment: datetime) -> int:
        """The calendar year of ``moment`` (aware) in the business's time zone."""
        return moment.astimezone(self.zone).year


class PollSettings(_Section):
    interval_seconds: int = Field(default=60, ge=5, le=MAX_INTERVAL_SECONDS)
    batch_size: int = Field(default=50, ge=1, le=1000)
    # IMAP IDLE: None (default) uses it where the server advertises it.
    idle: bool | None = None
    # A backlog is parsed in a second process alongside the database work
    # (mailcase.parsing); false keeps all work in the one process.
    parse_process: bool = True


class NoticesSettings(_Section):
    language: Literal["es", "en"] = "es"
    # Until a first poll of a mailbox completes, only mail that reached the
    # server (IMAP INTERNALDATE) this recently is answered: a mailbox holding
    # years of mail opens those cases silently instead of mailing old customers.
    max_age_hours: float = Field(default=72.0, gt=0, le=MAX_HOURS, allow_inf_nan=False)
    # What an agent attaches to a reply goes on to the customer with the words,
    # up to this many bytes in all per reply (0: attachments stay on the case).
    # Base64 makes them a third larger: 5 MB is a message under 7 MB, within
    # the 10 MB that Postfix and many providers accept by default.
    max_relayed_attachment_bytes: int = Field(default=5_000_000, ge=0)
    # And what a customer attaches (the photos the acknowledgement asks for) goes
    # to agents.notify and the area with the notice, up to this many bytes in all
    # (0: the notice names the files; they stay on the case), as RT's do.
    max_agent_attachment_bytes: int = Field(default=5_000_000, ge=0)


class TemplatesSettings(_Section):
    directory: Path | None = None  # admin overrides; missing files fall back to the shipped ones


class CompanySettings(_Section):
    """Who the customer is dealing with; shown in every notice."""

    name: str = "Soporte"
    phone: str = ""
    email: str = ""
    website: str = ""
    address: str = ""
    hours: str = ""


class LimitsSettings(_Section):
    """Guards against floods, loops and hostile input."""

    max_acks_per_sender_per_hour: int = Field(default=5, ge=0)
    # Loop breakers (RFC 3834 section 2): a responder with no automatic-mail header
    # answering the agents' list, or an agent's and a customer's responders answering
    # each other through the case, are cut off per case and hour.
    max_agent_notices_per_case_per_hour: int = Field(default=10, ge=1)
    max_relays_per_case_per_hour: int = Field(default=20, ge=1)
    max_notices_per_hour: int | None = Field(default=None, ge=0)  # None: no cap
    max_message_bytes: int = Field(default=50_000_000, ge=10_000)
    max_mime_parts: int = Field(default=500, ge=1)
    max_mime_depth: int = Field(default=20, ge=1)


class MetricsSettings(_Section):
    # "host:port" for Prometheus' /metrics, e.g. "127.0.0.1:9464"; unset: not served.
    listen: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$")

    @field_validator("listen")
    @classmethod
    def _port(cls, value: str | None) -> str | None:
        # The pattern allows five digits; a port above 65535 made the daemon crash
        # with OverflowError when it bound the socket.
        if value is not None and not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValueError(f"the port of {value!r} is not from 1 to 65535")
        return value


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(BaseSettings):
    """The whole configuration. Unknown keys are errors, at every level."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # see _Section
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    mailboxes: dict[str, MailboxSettings]
    smtp: SmtpSettings
    agents: AgentsSettings = AgentsSettings()
    web_form: WebFormSettings = WebFormSettings()
    spam: SpamSettings = SpamSettings()
    folio: FolioSettings = FolioSettings()
    poll: PollSettings = PollSettings()
    notices: NoticesSettings = NoticesSettings()
    templates: TemplatesSettings = TemplatesSettings()
    company: CompanySettings = CompanySettings()
    limits: LimitsSettings = LimitsSettings()
    cases: CasesSettings = CasesSettings()
    escalation: EscalationSettings = EscalationSettings()
    calendar: CalendarSettings = CalendarSettings()
    retention: RetentionSettings = RetentionSettings()
    metrics: MetricsSettings = MetricsSettings()
    areas: dict[str, AreaSettings] = Field(default_factory=dict)
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file arrives as init kwargs).
        return (env_settings, init_settings)

    @field_validator("mailboxes", mode="before")
    @classmethod
    def _mailbox_names(cls, value: Any) -> Any:
        # Names are lower case because pydantic-settings reads the NAME of
        # MAILCASE_MAILBOXES__NAME__KEY in lower case: an override of [mailboxes.Soporte]
        # made a second, incomplete mailbox "soporte". load_settings checks the file's
        # names first (naming the file); what is left here is a name from the
        # environment, checked before the tables so that its error comes first.
        for name in value if isinstance(value, dict) else ():
            problem = _mailbox_name_problem(str(name))
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("mailboxes")
    @classmethod
    def _mailboxes(cls, value: dict[str, MailboxSettings]) -> dict[str, MailboxSettings]:
        if not value:
            raise ValueError("at least one [mailboxes.NAME] table is required")
        return value

    @field_validator("areas")
    @classmethod
    def _areas(cls, value: dict[str, AreaSettings]) -> dict[str, AreaSettings]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9_-]{1,64}", name):
                raise ValueError(f"area name {name!r} may use only a-z, 0-9, _ and -")
        return value

    def language_of(self, mailbox: str) -> Literal["es", "en"]:
        """The notice language of ``mailbox``: its ``language``, else ``notices.language``
        (also for a name that is not configured)."""
        box = self.mailboxes.get(mailbox)
        return (box.language if box is not None else None) or self.notices.language

    def business_calendar(self) -> BusinessCalendar:
        """The desk's open hours (``[calendar]``) in the business's time zone."""
        return BusinessCalendar.from_text(
            self.folio.zone,
            self.calendar.hours.ranges(),
            self.calendar.holidays,
            mexican_holidays=self.calendar.mexican_holidays,
        )

    @property
    def own_addresses(self) -> frozenset[str]:
        """Addresses that are mailcase itself: never answered with an acknowledgement.

        Notices to agents.notify and to areas go out on purpose; these
        addresses are never treated as customers.
        """
        own = {m.address for m in self.mailboxes.values()}
        if self.agents.notify:
            own.add(self.agents.notify)
        own.update(area.notify for area in self.areas.values())
        return frozenset(own)


def _mailbox_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a mailbox, or None."""
    if re.fullmatch(r"[a-z0-9_.-]{1,64}", name):
        return None
    return (
        f"mailbox name {name!r} may use only lower-case a-z, 0-9, _ . and - "
        "(environment variables name mailboxes in lower case)"
    )


def check_secrets(settings: Settings) -> None:
    """Read every secret file and credential now; raise ConfigError naming the key if one fails.

    Secrets are read again at each login (a rotated password is picked up),
    but ``run`` and ``poll`` check them at start-up so that a missing file
    stops the program with exit 2 instead of failing every poll.
    """
    servers: list[tuple[str, _Secret]] = [
        (f"mailboxes.{n}", m) for n, m in settings.mailboxes.items()
    ]
    servers.append(("smtp", settings.smtp))
    for prefix, server in servers:
        for keys, read in (
            (_PASSWORD_KEYS, server.resolved_password),
            (_CLIENT_SECRET_KEYS, server.resolved_client_secret),
            (_REFRESH_TOKEN_KEYS, server.resolved_refresh_token),
        ):
            _check_secret(prefix, server, keys, read)
    _check_secret("agents", settings.agents, _SIGNING_KEYS, settings.agents.resolved_signing_secret)


def _check_secret(
    prefix: str, section: BaseModel, keys: tuple[str, ...], read: Callable[[], object]
) -> None:
    """Call ``read`` when one of ``keys`` is set; its ConfigError is re-raised naming the key."""
    given = next((k for k in keys if getattr(section, k, None) is not None), None)
    if given is None:
        return
    try:
        read()
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{given}: {exc}") from None


def tls_context(ca_file: Path | None, key: str) -> ssl.SSLContext:
    """A verifying TLS context; ``ca_file`` (config key ``key``) replaces the system store.

    Raises ConfigError naming the key and the file when it cannot be read or holds no
    certificate: that is the admin's to fix, not an outage to retry with back-off.
    """
    try:
        return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except ssl.SSLError as exc:  # before OSError: it is one
        raise ConfigError(
            f"{key} {ca_file}: not a PEM file of CA certificates ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{key} {ca_file}: {exc.strerror or exc}") from exc


def check_ca_files(settings: Settings) -> None:
    """Load every ``ca_file`` that TLS will use; raise ConfigError naming the first bad one.

    ``run`` and ``poll`` call it at start-up, so that a mistyped path exits 2 instead
    of failing every poll as if the server were down.
    """
    servers: list[tuple[str, _Server]] = [
        (f"mailboxes.{n}", m) for n, m in settings.mailboxes.items()
    ]
    servers.append(("smtp", settings.smtp))
    for prefix, server in servers:
        if server.ca_file is not None and server.security != "none":
            tls_context(server.ca_file, f"{prefix}.ca_file")


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The file to read: the explicit path, else $MAILCASE_CONFIG, else the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MAILCASE_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _seed_default_week(data: dict[str, Any]) -> None:
    """Put the default week in ``data`` when the file gives no ``[calendar.hours]`` and
    the environment sets a day of it: ``MAILCASE_CALENDAR__HOURS__SAT=09:00-13:00``
    changes Saturday (the environment is merged onto the file's table), instead of
    making a week of Saturday alone, with every weekday closed and its reminders late
    by a week. A whole week from the environment is ``MAILCASE_CALENDAR__HOURS`` (JSON).
    """
    calendar = data.get("calendar", {})
    if not isinstance(calendar, dict) or "hours" in calendar:
        return  # the file's table is the week (or the file's error is reported)
    prefix = f"{ENV_PREFIX}CALENDAR__HOURS__"
    if any(name.upper().startswith(prefix) for name in os.environ):
        data["calendar"] = {**calendar, "hours": dict(DEFAULT_HOURS)}


def load_settings(path: Path) -> Settings:
    """Read and validate ``path``; raise :class:`ConfigError` naming the key on any problem.

    Every relative path in the settings (the file of a ``sqlite:///`` ``database.url``,
    ``storage.directory``, ``templates.directory``, ``password_file``, ``ca_file`` and
    the other ``*_file`` keys), whether written in the file or set from the environment,
    is taken relative to the directory of the config file, as nginx and Dovecot read
    theirs, never to the current directory: the service (started in ``/``) and an
    operator running ``mailcase cases ...`` from their home directory then use the same
    database. Absolute paths, and the defaults (all absolute), are kept as they are.
    """
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # TOML is UTF-8 (a Latin-1 file from an old editor)
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start + 1}): save it as UTF-8"
        ) from None
    mailboxes = data.get("mailboxes")
    for name in mailboxes if isinstance(mailboxes, dict) else ():
        problem = _mailbox_name_problem(name)
        if problem:
            # Before the environment is merged in: a MAILCASE_MAILBOXES__... variable
            # meant for this table would be read as another mailbox, and its error
            # would hide this one.
            raise ConfigError(f"bad value for mailboxes.{name}: {problem} in {path}")
    _seed_default_week(data)
    try:
        settings = Settings(**data)
    except SettingsError as exc:
        # pydantic-settings reads a list or a table from the environment as JSON and
        # says only which field failed; the value is not shown (it may be a secret).
        raise ConfigError(
            f"environment variable {_variable_of(str(exc))} is not valid JSON "
            '(a list or table from the environment is written as JSON: ["a@example.com"])'
        ) from exc
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        variable = _variable_at(first["loc"])
        if (
            variable is None
            and first["type"] == "missing"
            and not _in_file(data, first["loc"][:-1])
        ):
            # A table that only the environment gives (MAILCASE_MAILBOXES__SOPORT__PASSWORD,
            # a mistyped mailbox name): the keys it lacks are not the file's to fix.
            variable = _variable_at(first["loc"][:-1])
        # The variable is named first: it is what to fix; the file is what it overrides.
        plural = "s" if variable and "," in variable else ""
        where = (
            f"environment variable{plural} {variable} (overriding {path})"
            if variable
            else str(path)
        )
        raise ConfigError(f"{describe_validation_error(exc)} in {where}") from exc
    # absolute(), not resolve(): a config file reached through a symbolic link
    # reads its neighbours where the link is, as the admin sees the directory.
    return _anchored(settings, path.absolute().parent)


def _in_file(data: dict[str, Any], loc: tuple[int | str, ...]) -> bool:
    """Whether the file's ``data`` has a value at ``loc`` (a table, a key)."""
    value: Any = data
    for part in loc:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


M = TypeVar("M", bound=BaseModel)


def _anchored(model: M, base: Path) -> M:
    """``model`` with every relative :class:`~pathlib.Path` in it (nested tables and
    tables of tables included) and a relative SQLite ``database.url`` made absolute
    under ``base``; the same object when nothing is relative."""
    update: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            update[name] = base / value
        elif isinstance(value, BaseModel):
            anchored = _anchored(value, base)
            if anchored is not value:
                update[name] = anchored
        elif isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
            tables = {k: _anchored(v, base) for k, v in value.items()}
            if any(tables[k] is not value[k] for k in value):
                update[name] = tables
    if isinstance(model, DatabaseSettings):
        url = _anchored_sqlite_url(model.url, base)
        if url != model.url:
            update["url"] = url
    # model_copy does not validate again: the values were validated, and only made absolute.
    return model.model_copy(update=update) if update else model


def _anchored_sqlite_url(url: str, base: Path) -> str:
    """``url`` with a relative SQLite file (``sqlite:///mailcase.db``) under ``base``.

    Any other URL is returned as it is: in-memory SQLite, another database, and one
    SQLAlchemy cannot read (:func:`mailcase.store.make_engine` reports that one,
    naming the key).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if database.startswith("file:") or Path(database).is_absolute():
        return url
    return parsed.set(database=str(base / database)).render_as_string(hide_password=False)


_PREFIX = "MAILCASE_"
_DELIMITER = "__"


def _variable_at(loc: tuple[int | str, ...]) -> str | None:
    """The MAILCASE_* variables that set the value at ``loc``, if any did (they override
    the file), comma-separated.

    ``("poll", "idle")`` comes from ``MAILCASE_POLL__IDLE``, or from ``MAILCASE_POLL`` given
    as a JSON table; names are matched without regard to case, as pydantic-settings does.
    When a rule of a whole table fails (``("mailboxes", "info")``: security = "none" to a
    host that is not loopback), every variable setting a key under that table is named
    (``MAILCASE_MAILBOXES__INFO__HOST``): one of them is likely what broke the rule.
    """
    names = {name.upper(): name for name in os.environ}
    for depth in range(len(loc), 0, -1):
        wanted = _PREFIX + _DELIMITER.join(str(p) for p in loc[:depth]).upper()
        if wanted in names:
            return names[wanted]
    table = _PREFIX + _DELIMITER.join(str(p) for p in loc).upper() + _DELIMITER
    under = sorted(names[upper] for upper in names if loc and upper.startswith(table))
    return ", ".join(under) or None


def _variable_of(message: str) -> str:
    """The MAILCASE_* variables behind a SettingsError, which names only the field."""
    field = re.search(r'field "([^"]+)"', message)
    if field is None:
        return f"{_PREFIX}*"
    top = (_PREFIX + field.group(1)).upper()
    found = sorted(
        name
        for name in os.environ
        if name.upper() == top or name.upper().startswith(top + _DELIMITER)
    )
    return ", ".join(found) or top


def describe_validation_error(exc: ValidationError) -> str:
    """One sentence for the first problem pydantic found, naming the dotted key."""
    err = exc.errors(include_url=False)[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key}"
    if kind == "missing":
        return f"missing required key {key}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"bad value for {key}: {message}"
