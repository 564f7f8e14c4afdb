"""The one exception tree of mailcase, and the process exit codes.

::

    MailcaseError
    ├── ConfigError          bad or missing configuration: exit 2, never retried
    │   ├── TemplateError    a notice template cannot be compiled or rendered
    │   └── SecretError      the SMTP password file or credential (or OAuth2 secret
    │                        file) cannot be read when a delivery run needs it:
    │                        notices stay queued
    ├── DatabaseError        the database cannot be opened or is too old
    │   └── DatabaseRefusal  it failed on one message for now (a timeout, a lock):
    │                        the poll backs off and reads the message again
    ├── MailboxError         one mailbox cannot be read (connect, login, folder; or
    │   │                    a message of it cannot be ingested for a template or
    │   │                    storage.directory, its ``component``): that mailbox
    │   │                    backs off, the others go on
    │   └── RefusedForNow    the server refused one message for now (RFC 5530
    │                        [UNAVAILABLE]): the poll backs off and reads it again
    ├── DeliveryError        SMTP delivery of one notice failed
    │   └── PermanentDeliveryError   5xx: do not retry
    └── MessageError         one message cannot be processed: it is quarantined
                             and the poll goes on

Only ``cli`` turns these into exit codes and printed sentences.
"""

from __future__ import annotations

from typing import Any

from mailcase.reasons import QuarantineReason, Reason, ReasonParam

# Named exit codes, in one place, so systemd can use RestartPreventExitStatus=.
EXIT_OK = 0
EXIT_FAILURE = 1  # a mailbox could not be read, a command failed
EXIT_CONFIG = 2  # bad configuration or usage: restarting will not help
EXIT_DATABASE = 3  # the database cannot be opened or needs `db upgrade`
EXIT_NOT_FOUND = 4  # a folio or message named on the command line does not exist
EXIT_SCHEMA = 5  # the database's schema is newer than this mailcase: restarting will not help


class MailcaseError(Exception):
    """Root of every error mailcase raises on purpose; its text is one sentence."""


class ConfigError(MailcaseError):
    """The configuration file is missing, unreadable or invalid."""


class TemplateError(ConfigError):
    """A notice template (an admin's override, most often) cannot be compiled or rendered.

    The admin's to fix, not the message's: a message whose notice cannot be
    rendered is not quarantined; the poll of its mailbox fails and reads it
    again once the template is fixed.
    """


class SecretError(ConfigError):
    """The SMTP password file or credential, or its OAuth2 ``refresh_token_file`` or
    ``client_secret_file``, cannot be read when a delivery run logs in: removed or
    rotated away after start-up, or an admin's shell without systemd's
    ``$CREDENTIALS_DIRECTORY``. Its text names the file or credential, never a secret.

    The admin's to fix, and neither the server's nor the notices' fault: the run
    ends, and every notice stays queued as it was (no attempt recorded, no
    back-off), for a process that can read it.
    """


class DatabaseError(MailcaseError):
    """The database cannot be opened, or its schema is not the code's."""


class DatabaseRefusal(DatabaseError):
    """The database failed while message ``uid`` of folder ``uidvalidity`` was ingested,
    for a cause that is most often not the message's (a statement or lock timeout, a
    deadlock): the poll stops there, and the message is read again by the next one."""

    def __init__(self, message: str, *, uid: int, uidvalidity: int) -> None:
        super().__init__(message)
        self.uid = uid
        self.uidvalidity = uidvalidity


class SchemaTooNewError(DatabaseError):
    """The database's schema is at a revision this mailcase does not know (a newer one)."""


class StorageError(MailcaseError):
    """The blob store (``storage.directory``) cannot be written: full, read-only, denied."""


class MailboxError(MailcaseError):
    """One mailbox could not be read; carries the mailbox name, and its ``component``:
    what failed, as ``mailcase_errors_total`` labels it.

    ``imap`` (the default): the server, the login, the folder. ``template``: a
    notice template the admin broke. ``storage``: ``storage.directory`` cannot
    be written. Only the first is the IMAP server's doing.
    """

    def __init__(self, mailbox: str, message: str, *, component: str = "imap") -> None:
        super().__init__(f"mailbox {mailbox}: {message}")
        self.mailbox = mailbox
        self.component = component


class RefusedForNow(MailboxError):
    """The server refused to return message ``uid`` of folder ``uidvalidity`` for now
    (RFC 5530 [UNAVAILABLE], Yahoo's [TEMPFAIL]): the poll stops there and backs
    off; the message is read again by the next poll."""

    def __init__(self, mailbox: str, message: str, *, uid: int, uidvalidity: int) -> None:
        super().__init__(mailbox, message)
        self.uid = uid
        self.uidvalidity = uidvalidity


class DeliveryError(MailcaseError):
    """A notice could not be handed to the SMTP server; worth retrying."""


class PermanentDeliveryError(DeliveryError):
    """The SMTP server refused a notice for good (5xx); do not retry."""


class MessageError(MailcaseError):
    """One message could not be processed; it is quarantined with this reason.

    ``reason`` is its code and parameters (:class:`~mailcase.reasons.QuarantineReason`);
    the error's text is the reason in English, the ledger's words.
    """

    def __init__(self, code: Reason, /, **params: ReasonParam) -> None:
        self.reason = QuarantineReason(code, params)
        super().__init__(self.reason.text())

    def __reduce__(self) -> tuple[Any, ...]:
        # The parser process sends it pickled (mailcase.parsing); Exception's own
        # pickling would call MessageError(text) and lose the code.
        return (_message_error, (type(self), self.reason.code, dict(self.reason.params)))


def _message_error(
    cls: type[MessageError], code: Reason, params: dict[str, ReasonParam]
) -> MessageError:
    """``cls(code, **params)``, for unpickling."""
    return cls(code, **params)


class NotFoundError(MailcaseError):
    """A folio or message named by the user does not exist."""
