"""mailcase: turn support mail into tracked cases with folios.

The pipeline (see README.md): IMAP → parse → classify → triage → one
transaction (ledger + case + outbox) → render → SMTP.
"""

__version__ = "0.1.0"
