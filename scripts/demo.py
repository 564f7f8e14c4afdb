"""The quick-start demo: mailcase on its embedded default (SQLite), end to end.

Starts a throw-away Dovecot and an SMTP sink on 127.0.0.1 (tests/servers.py),
loads the sample customer mails from examples/mail into the contacto@ and
info@ mailboxes, runs ``mailcase poll`` once as a real process, then prints the
cases, one case in full, and the acknowledgements the sink received. A second
message, a customer's reply carrying the folio, shows threading.
"""

from __future__ import annotations

import email.policy
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import mail, write_config  # noqa: E402
from servers import Dovecot, SmtpSink  # noqa: E402


def mailcase(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mailcase", "--config", str(config), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"mailcase {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mailcase-demo-"))
    with Dovecot() as imap, SmtpSink() as sink:
        config = write_config(work, imap, sink, extra="")
        config.write_text(config.read_text().replace('format = "json"', 'level = "warning"'))
        for path in sorted((ROOT / "examples" / "mail").glob("*.eml")):
            raw = path.read_bytes()
            to = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)["To"]
            for user in ("contacto", "info"):
                if f"{user}@" in str(to):
                    imap.append(user, raw)
        banner("mailcase poll (first pass)")
        mailcase(config, "poll")
        banner("mailcase cases list")
        print(mailcase(config, "cases", "list"), end="")
        banner("mailcase messages list  (every fetched message, one ledger row each)")
        print(mailcase(config, "messages", "list"), end="")

        first = sink.wait_for(1)[0].message
        folio = str(first["Subject"]).split("]")[0].removeprefix("[Folio ")
        imap.append(
            "contacto",
            mail(
                sender="Juan Pérez <juan.perez@example.com>",
                subject=f"RE: [Folio {folio}] Sin internet desde ayer",
                body="Hoy en la mañana sigue igual.\n\nEl lun, 23 nov 2026, Contacto escribió:\n"
                "> Recibimos su mensaje",
                headers={"In-Reply-To": str(first["Message-ID"])},
            ),
        )
        banner("mailcase poll (the customer replied with the folio)")
        mailcase(config, "poll")
        banner(f"mailcase cases show {folio}")
        print(mailcase(config, "cases", "show", folio), end="")

        banner(f"acknowledgements received by the SMTP sink ({len(sink.messages)})")
        for received in sink.messages:
            msg: EmailMessage = received.message
            print(f"To: {', '.join(received.rcpt_tos)}\nSubject: {msg['Subject']}")
        body = first.get_body(("plain",))
        if body is not None:
            banner("the first acknowledgement, as the customer reads it")
            print(body.get_content())
    print(f"(database and stored mail kept in {work})")


if __name__ == "__main__":
    main()
