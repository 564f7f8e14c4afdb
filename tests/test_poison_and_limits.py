"""Poison messages from every step, MIME and attachment limits, a dropped IMAP connection.

Against the real Dovecot and SMTP sink (and SQLite and PostgreSQL through ``db_url``), except
the pure tests of :func:`mailcase.inbound.parse_inbound`. Each test states the counts it
expects: what the ledger, the cases and the sink hold after each step.

Every poison test delivers three messages in one poll: a customer's, the poison, another
customer's. The poison costs that one message (quarantined with its error, its raw bytes kept);
the other two open their cases and are acknowledged in the same poll; once the fault is removed,
``mailcase messages retry`` reprocesses the poison into a case of its own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import re
import socket
import threading
import tracemalloc
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, Env, mail, write_config
from servers import HOST, Dovecot, SmtpSink

from mailcase import casework, render, service
from mailcase.config import LimitsSettings
from mailcase.errors import MessageError
from mailcase.inbound import parse_inbound
from mailcase.models import Case
from mailcase.store import insert_row

integration = pytest.mark.integration

# The poison's sender has no display name: an admin's template that assumes a name breaks on
# it. The two good customers have one.
GOOD_1 = "Juan Pérez <juan.perez@example.com>"
GOOD_2 = "Ana López <ana.lopez@example.com>"
POISON = "cliente.sin.nombre@example.com"
BLOB_PATH = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}$")


def acks_per_folio(env: Env) -> Counter[str]:
    """How many acknowledgements the sink received for each folio."""
    found = Counter[str]()
    for received in env.sink.messages:
        match = re.search(r"\[Folio (\S+)\]", str(received.message["Subject"]))
        assert match, received.message["Subject"]
        found[match.group(1)] += 1
    return found


def blob(env: Env, data: bytes) -> Path:
    """Where the store keeps ``data`` (content-addressed by sha256)."""
    digest = hashlib.sha256(data).hexdigest()
    return env.store / digest[:2] / digest[2:4] / digest


def retry(env: Env, uid: int) -> None:
    """``messages retry`` of contacto's ``uid``: it must now open a case."""
    code, out, err = env.cli("messages", "retry", str(uid), "--mailbox", "contacto")
    assert code == 0, err
    assert out.strip() == f"message {uid} of mailbox contacto: new_case"
    # Its acknowledgement went out with the retry, not at the next poll.
    assert acks_per_folio(env) == Counter({c["folio"]: 1 for c in env.cases()})


MakeEnv = Callable[..., Env]


@pytest.fixture
def make_env(
    tmp_path: Path, mailboxes: Dovecot, sink: SmtpSink, capsys: Any, db_url: str
) -> MakeEnv:
    def make(extra: str = "") -> Env:
        config = write_config(tmp_path, mailboxes, sink, extra=extra, db_url=db_url)
        return Env(Cli(config, capsys), mailboxes, sink, config, tmp_path)

    return make


# --------------------------------------------------------------------------------------------
# 1. Poison messages from every step
# --------------------------------------------------------------------------------------------


def _deliver_good_poison_good(env: Env) -> list[int]:
    """Append a good message, the poison, another good message; return their UIDs."""
    return env.imap.append_many(
        "contacto",
        [
            mail(sender=GOOD_1, subject="Sin internet"),
            mail(sender=POISON, subject="Cobro duplicado"),
            mail(sender=GOOD_2, subject="Módem apagado"),
        ],
    )


def _assert_poison_alone_quarantined(env: Env, uids: list[int], *reason_parts: str) -> None:
    """After one poll: 3 ledger rows (2 new_case, the poison quarantined with its error and its
    raw bytes), 2 cases, 2 acknowledgements (one per good case), nothing for the poison."""
    good_1, poison, good_2 = uids
    ledger = env.ledger()
    assert [(r["uid"], r["disposition"]) for r in ledger] == [
        (good_1, "new_case"),
        (poison, "quarantined"),
        (good_2, "new_case"),
    ]
    [quarantined] = env.ledger("--disposition", "quarantined")
    assert (quarantined["mailbox"], quarantined["uid"]) == ("contacto", poison)
    assert quarantined["folio"] is None
    for part in reason_parts:
        assert part in quarantined["reason"], quarantined["reason"]
    raw = env.imap.fetch_raw("contacto")[poison]
    assert blob(env, raw).read_bytes() == raw  # kept byte for byte, for the retry

    cases = env.cases()
    assert sorted(c["customer"] for c in cases) == [
        "ana.lopez@example.com",
        "juan.perez@example.com",
    ]
    assert acks_per_folio(env) == Counter({c["folio"]: 1 for c in cases})
    assert sorted(m.rcpt_tos[0] for m in env.sink.messages) == [
        "ana.lopez@example.com",
        "juan.perez@example.com",
    ]


def _assert_retried(env: Env, uids: list[int]) -> dict[str, Any]:
    """After the retry and a poll that delivers: 3 ledger rows, all new_case, one per UID;
    3 cases; exactly 1 acknowledgement per case. Return the poison's case."""
    ledger = env.ledger()
    assert sorted(r["uid"] for r in ledger) == sorted(uids)
    assert {r["disposition"] for r in ledger} == {"new_case"}
    assert env.ledger("--disposition", "quarantined") == []
    cases = env.cases()
    assert len(cases) == 3 and len({c["folio"] for c in cases}) == 3
    assert acks_per_folio(env) == Counter({c["folio"]: 1 for c in cases})
    [poison_case] = [c for c in cases if c["customer"] == POISON]
    assert [r["folio"] for r in ledger if r["uid"] == uids[1]] == [poison_case["folio"]]
    return poison_case


# An admin's acknowledgement (es) that fails at render for a customer without a display name;
# the shipped HTML part still applies. StrictUndefined makes the missing list element an error.
BROKEN_ACKNOWLEDGEMENTS = {
    "undefined": (
        "Estimado(a) {{ customer_name.split()[1] }}:\nFolio {{ folio }}\n",
        "UndefinedError",
    ),
    "zero_division": (
        "Folio {{ folio }} (prioridad {{ 100 // (customer_name | length) }})\n",
        "ZeroDivisionError",
    ),
}
FIXED_ACKNOWLEDGEMENT = "Hola, {{ customer_name or 'cliente' }}:\nFolio {{ folio }}\n"


@integration
@pytest.mark.parametrize("broken", sorted(BROKEN_ACKNOWLEDGEMENTS))
def test_failing_admin_template_quarantines_one_message_until_fixed(
    make_env: MakeEnv, tmp_path: Path, broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poll 1: 2 cases and 2 acknowledgements, the poison quarantined with the template's error.
    The admin fixes the template; retry: 3 cases; next poll: the 3rd acknowledgement, so 1 per
    case, and the poison's is rendered from the fixed template.

    The Cli runs in this process, which has looked the templates up already; the admin's
    `mailcase messages retry` is a process of its own. Templates are looked up every time here.
    """
    monkeypatch.setattr(render, "TEMPLATE_RECHECK_SECONDS", 0.0)
    source, error = BROKEN_ACKNOWLEDGEMENTS[broken]
    override = tmp_path / "templates"
    template = override / "es" / "acknowledgement.txt.j2"
    template.parent.mkdir(parents=True)
    template.write_text(source, encoding="utf-8")
    env = make_env(f'[templates]\ndirectory = "{override}"\n')
    uids = _deliver_good_poison_good(env)

    env.cli.poll()
    _assert_poison_alone_quarantined(env, uids, error)
    # The good customers got the admin's template (it works when there is a name).
    assert all(
        "Folio PLR-" in m.message.get_body(("plain",)).get_content() for m in env.sink.messages
    )

    template.write_text(FIXED_ACKNOWLEDGEMENT, encoding="utf-8")
    retry(env, uids[1])  # opens the case and sends its acknowledgement
    assert [n for n in env.cli.json("outbox", "list") if n["status"] == "queued"] == []
    env.cli.poll()
    case = _assert_retried(env, uids)
    [ack] = [m.message for m in env.sink.messages if m.rcpt_tos == [POISON]]
    assert ack.get_body(("plain",)).get_content() == f"Hola, cliente:\nFolio {case['folio']}\n"


@integration
def test_classifier_that_raises_quarantines_one_message_until_fixed(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poll 1 with a classifier that raises on the poison: 2 cases, 2 acknowledgements, the
    poison quarantined with the error. Fault removed, retry and poll: 3 cases, 1 ack each.

    monkeypatch: the real classifier is pure and total over any mail (tests/test_properties.py
    and tests/test_fuzz.py check that it never raises), so no mail content can make it raise;
    the fault is injected on the ``classify`` that mailcase.service calls, in this process
    (the Cli runs mailcase in-process), and undone before the retry.
    """
    env = make_env()
    real_classify = service.classify

    def classify_failing_on_poison(inbound: Any, **kwargs: Any) -> Any:
        if inbound.sender == POISON:
            raise RuntimeError("classifier bug: cannot decide")
        return real_classify(inbound, **kwargs)

    uids = _deliver_good_poison_good(env)
    with monkeypatch.context() as patch:
        patch.setattr(service, "classify", classify_failing_on_poison)
        env.cli.poll()
    _assert_poison_alone_quarantined(env, uids, "RuntimeError: classifier bug: cannot decide")

    retry(env, uids[1])
    env.cli.poll()
    _assert_retried(env, uids)


@integration
def test_database_constraint_failure_quarantines_one_message_until_fixed(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Poll 1 with a real unique-constraint violation inside the poison's case transaction:
    2 cases with folios 1 and 2 (the poison's half-made case and its folio number rolled
    back), 2 acknowledgements, the poison quarantined with the IntegrityError. Fault removed,
    retry and poll: 3 cases (folio 3 for the poison), 1 acknowledgement each.

    monkeypatch: mailcase's own writes satisfy the schema's constraints whatever the mail
    says (folios come from a counter, every key is checked first), so no mail content can
    make the database refuse one; the fault is injected on ``casework.open_case``, which
    mailcase.service calls inside the case transaction, in this process (the Cli runs
    mailcase in-process), and undone before the retry. The wrapper makes the database itself
    raise: it inserts a second case with the folio just handed out.
    """
    env = make_env()
    real_open_case = casework.open_case

    def open_case_violating_folio(settings: Any, session: Any, **kwargs: Any) -> Case:
        case = real_open_case(settings, session, **kwargs)
        if kwargs["customer"] == POISON:
            insert_row(session, Case, **case.model_dump(exclude={"id"}))  # UNIQUE (folio)
        return case

    uids = _deliver_good_poison_good(env)
    with monkeypatch.context() as patch:
        patch.setattr(casework, "open_case", open_case_violating_folio)
        env.cli.poll()
    _assert_poison_alone_quarantined(env, uids, "IntegrityError", "folio")
    [quarantined] = env.ledger("--disposition", "quarantined")
    # The database's words in one line: not SQLAlchemy's statement, parameters and link.
    assert "INSERT" not in quarantined["reason"] and "sqlalche.me" not in quarantined["reason"]
    assert sorted(_folio_number(c["folio"]) for c in env.cases()) == [1, 2]

    retry(env, uids[1])
    env.cli.poll()
    case = _assert_retried(env, uids)
    assert _folio_number(case["folio"]) == 3


def _folio_number(folio: str) -> int:
    return int(folio.rsplit("-", 1)[1])


# --------------------------------------------------------------------------------------------
# 2. MIME depth cap
# --------------------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A message whose MIME tree is ``depth`` deep: ``depth - 1`` multiparts, each holding
    the next, around one text/plain part. It has ``depth`` parts (Content-Type fields)."""
    head = (
        b"From: Juan Perez <juan.perez@example.com>\r\nTo: contacto@internet-plarey.com.mx\r\n"
        b"Subject: Anidado\r\nMessage-ID: <anidado-%d@example.com>\r\nMIME-Version: 1.0\r\n" % depth
    )
    body = b"Content-Type: text/plain; charset=utf-8\r\n\r\nhola\r\n"
    for level in range(depth - 1, 0, -1):
        boundary = b"nivel-%d" % level
        body = b'Content-Type: multipart/mixed; boundary="%s"\r\n\r\n--%s\r\n%s--%s--\r\n' % (
            boundary,
            boundary,
            body,
            boundary,
        )
    return head + body


def _parts(raw: bytes) -> int:
    return len(re.findall(rb"(?im)^content-type:", raw))


def test_nesting_deeper_than_the_default_limit_is_refused_by_the_depth_check() -> None:
    """Defaults (config.LimitsSettings): 5 levels over max_mime_depth, with a part count
    far under max_mime_parts: refused, and the reason names the depth, not the parts."""
    limits = LimitsSettings()
    raw = nested(limits.max_mime_depth + 5)
    assert _parts(raw) == limits.max_mime_depth + 5 < limits.max_mime_parts
    with pytest.raises(MessageError) as refused:
        parse_inbound(raw, max_parts=limits.max_mime_parts, max_depth=limits.max_mime_depth)
    reason = str(refused.value)
    assert reason == (
        f"MIME structure nested {limits.max_mime_depth + 5} deep, "
        f"more than the limit of {limits.max_mime_depth}"
    )
    assert "part" not in reason


def test_nesting_at_the_default_limit_is_read() -> None:
    """Exactly max_mime_depth deep: parsed, its one text part is the text."""
    limits = LimitsSettings()
    parsed = parse_inbound(
        nested(limits.max_mime_depth),
        max_parts=limits.max_mime_parts,
        max_depth=limits.max_mime_depth,
    )
    assert parsed.text == "hola"
    assert parsed.attachments == ()


@integration
def test_deep_nesting_is_quarantined_by_configured_depth_and_the_poll_goes_on(
    make_env: MakeEnv,
) -> None:
    """limits.max_mime_depth = 5 (max_mime_parts stays 500): a message 8 deep with 8 parts is
    quarantined naming the depth; the next message opens its case: 2 ledger rows, 1 case,
    1 acknowledgement. With the limit raised, retry opens the second case."""
    env = make_env("[limits]\nmax_mime_depth = 5\n")
    deep = nested(8)
    assert _parts(deep) == 8
    uids = env.imap.append_many("contacto", [deep, mail(sender=GOOD_2)])
    env.cli.poll()

    ledger = env.ledger()
    assert [(r["uid"], r["disposition"]) for r in ledger] == [
        (uids[0], "quarantined"),
        (uids[1], "new_case"),
    ]
    assert ledger[0]["reason"] == "MIME structure nested 8 deep, more than the limit of 5"
    assert len(env.cases()) == 1 and len(env.sink.messages) == 1

    env.config.write_text(env.config.read_text().replace("max_mime_depth = 5", ""))
    retry(env, uids[0])
    assert [r["disposition"] for r in env.ledger()] == ["new_case", "new_case"]
    assert len(env.cases()) == 2


# --------------------------------------------------------------------------------------------
# 3. Hostile attachment names
# --------------------------------------------------------------------------------------------

# (the Content-Disposition parameter as sent, the name it means, the name shown as data)
HOSTILE_NAMES = [
    (b'filename="../../etc/passwd"', "../../etc/passwd", "../../etc/passwd"),
    (b'filename="/abs/path"', "/abs/path", "/abs/path"),
    (b'filename="..\\\\x.exe"', "..\\x.exe", "..\\x.exe"),  # a quoted-pair: one backslash
    # RFC 2231 percent-encoding carries what a quoted string cannot: a NUL and a line break.
    # A NUL cannot be stored in PostgreSQL text: it is shown as U+FFFD, like any byte that is
    # not text; a line break folds to a space (a name is one line).
    (b"filename*=utf-8''nul%00name.txt", "nul\x00name.txt", "nul\ufffdname.txt"),
    (b"filename*=utf-8''new%0Aline.txt", "new\nline.txt", "new line.txt"),
]


def _with_attachments(parts: list[tuple[bytes, bytes]]) -> bytes:
    """A customer's message with one base64 attachment per (disposition parameter, content)."""
    body = b"".join(
        b"--adjuntos\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; %s\r\n\r\n%s\r\n"
        % (param, base64.encodebytes(content).replace(b"\n", b"\r\n"))
        for param, content in parts
    )
    return (
        b"From: Juan Perez <juan.perez@example.com>\r\nTo: contacto@internet-plarey.com.mx\r\n"
        b"Subject: Adjuntos\r\nMessage-ID: <adjuntos@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="adjuntos"\r\n\r\n'
        b"--adjuntos\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nVan los archivos.\r\n"
        + body
        + b"--adjuntos--\r\n"
    )


def test_hostile_attachment_names_are_parsed_as_data() -> None:
    """5 attachments, 5 names: kept as the one-line text they mean, nothing resolved."""
    contents = [b"contenido %d" % i for i in range(len(HOSTILE_NAMES))]
    parsed = parse_inbound(
        _with_attachments([(p, c) for (p, _, _), c in zip(HOSTILE_NAMES, contents, strict=True)])
    )
    assert [(a.filename, a.payload) for a in parsed.attachments] == [
        (shown, content) for (_, _, shown), content in zip(HOSTILE_NAMES, contents, strict=True)
    ]


@integration
def test_hostile_attachment_names_never_reach_the_file_system(
    make_env: MakeEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 message with 5 hostile names: 1 new case, 1 acknowledgement; 5 attachments shown with
    their names as data, each stored content-addressed under the storage directory; no file
    anywhere under those names, nothing outside the storage directory."""
    work = tmp_path / "cwd"  # relative names would land here if they were used as paths
    work.mkdir()
    monkeypatch.chdir(work)
    env = make_env()
    contents = [b"contenido del archivo %d" % i for i in range(len(HOSTILE_NAMES))]
    raw = _with_attachments(
        [(param, content) for (param, _, _), content in zip(HOSTILE_NAMES, contents, strict=True)]
    )
    env.imap.append("contacto", raw)
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(env.store)}
    env.cli.poll()

    assert [r["disposition"] for r in env.ledger()] == ["new_case"]
    [case] = env.cases()
    assert len(env.sink.messages) == 1
    [inbound] = [m for m in env.case(case["folio"])["messages"] if m["direction"] == "in"]
    assert inbound["attachments"] == [
        {
            "filename": shown,
            "content_type": "application/octet-stream",
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        for (_, _, shown), content in zip(HOSTILE_NAMES, contents, strict=True)
    ]
    for content in contents:
        assert blob(env, content).read_bytes() == content

    # Inside the store: only blobs at their hash (and the spool directory), 5 + the message.
    stored = [p for p in env.store.rglob("*") if p.is_file()]
    assert all(BLOB_PATH.match(p.relative_to(env.store).as_posix()) for p in stored), stored
    assert len(stored) == len(contents) + 1
    # Outside it: no new file at all (the database's files existed before the poll, as
    # write_config/Store made them), and none of the names resolved anywhere.
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(env.store)}
    assert {p for p in after - before if not p.name.startswith("mailcase.db")} == set()
    for base in (env.store, work):
        for _, meant, _ in HOSTILE_NAMES:
            for name in (meant, meant.replace("\\", "/")):
                if "\x00" not in name:
                    assert not (base / name).exists(), base / name
    assert not Path("/abs/path").exists()
    names = {"passwd", "path", "x.exe", "..\\x.exe", "new", "line.txt", "new\nline.txt"}
    assert [p for p in tmp_path.rglob("*") if p.name in names or "name.txt" in p.name] == []


# A NUL in every place a sender can put one: an encoded word in the From name and the
# Subject, a raw byte in the body, the attachment's type and its name. PostgreSQL text cannot
# hold a NUL: before the parser replaced them, such a message was quarantined there (and no
# retry could help), while SQLite took it.
NUL_EVERYWHERE = (
    b"From: =?utf-8?q?Juan=00P=C3=A9rez?= <juan.perez@example.com>\r\n"
    b"To: contacto@internet-plarey.com.mx\r\nSubject: =?utf-8?q?Sin=00se=C3=B1al?=\r\n"
    b"Message-ID: <nul@example.com>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nNo tengo\x00 internet.\r\n"
    b"--b\r\nContent-Type: application/x\x00y\r\n"
    b'Content-Disposition: attachment; filename="a\x00b.bin"\r\n'
    b"\r\ndatos\r\n--b--\r\n"
)


def test_nul_never_leaves_the_parser() -> None:
    """Every NUL of the message becomes U+FFFD; a type with one is no type."""
    parsed = parse_inbound(NUL_EVERYWHERE)
    assert parsed.sender_name == "Juan\ufffdPérez"
    assert parsed.subject == "Sin\ufffdseñal"
    assert parsed.text == "No tengo\ufffd internet."
    [attachment] = parsed.attachments
    assert (attachment.filename, attachment.content_type) == (
        "a\ufffdb.bin",
        "application/octet-stream",
    )
    assert all("\x00" not in v for values in parsed.headers.values() for v in values)


@integration
def test_nul_everywhere_opens_a_case_on_both_databases(make_env: MakeEnv) -> None:
    """1 message with NULs in name, subject, body and attachment: 1 new case (not
    quarantined), 1 acknowledgement, the names shown with U+FFFD."""
    env = make_env()
    env.imap.append("contacto", NUL_EVERYWHERE)
    env.cli.poll()
    assert [(r["disposition"], r["reason"]) for r in env.ledger()] == [("new_case", "")]
    [case] = env.cases()
    assert case["subject"] == "Sin\ufffdseñal"
    assert len(env.sink.messages) == 1
    detail = env.case(case["folio"])
    assert detail["customer_name"] == "Juan\ufffdPérez"
    [inbound] = [m for m in detail["messages"] if m["direction"] == "in"]
    # Dovecot stores a NUL of a body or a MIME field as the byte 0x80: read, as
    # every byte that is not UTF-8 under a UTF-8 label or raw in a field is, as
    # windows-1252 ("€").
    assert inbound["text"] == "No tengo€ internet."
    assert [(a["filename"], a["size"]) for a in inbound["attachments"]] == [("a€b.bin", 5)]


# --------------------------------------------------------------------------------------------
# 4. A zip bomb attachment
# --------------------------------------------------------------------------------------------

BOMB_EXPANDED = 50 * 1024 * 1024


def zip_bomb() -> bytes:
    """50 MB of zeros in one deflated member: about 50 KB, built a megabyte at a time."""
    buffer = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("ceros.bin", "w") as member,
    ):
        for _ in range(BOMB_EXPANDED // len(chunk)):
            member.write(chunk)
    return buffer.getvalue()


@integration
def test_zip_bomb_is_stored_compressed_and_never_expanded(make_env: MakeEnv) -> None:
    """1 message with a 50 KB zip that expands to 50 MB: 1 new case, 1 acknowledgement, the
    attachment stored at its compressed size; the store holds 2 blobs (message and zip) far
    under 1 MB, and the poll's Python memory peak stays far under the expanded size."""
    bomb = zip_bomb()
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:
        assert archive.getinfo("ceros.bin").file_size == BOMB_EXPANDED
    assert len(bomb) < 100_000
    env = make_env()
    env.imap.append(
        "contacto",
        mail(
            sender=GOOD_1,
            subject="Respaldo de mi configuración",
            attachments=[("respaldo.zip", "application/zip", bomb)],
        ),
    )
    tracemalloc.start()
    try:
        env.cli.poll()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [r["disposition"] for r in env.ledger()] == ["new_case"]
    [case] = env.cases()
    assert len(env.sink.messages) == 1
    [inbound] = [m for m in env.case(case["folio"])["messages"] if m["direction"] == "in"]
    assert inbound["attachments"] == [
        {
            "filename": "respaldo.zip",
            "content_type": "application/zip",
            "size": len(bomb),
            "sha256": hashlib.sha256(bomb).hexdigest(),
        }
    ]
    assert blob(env, bomb).stat().st_size == len(bomb)
    stored = [p for p in env.store.rglob("*") if p.is_file()]
    assert len(stored) == 2
    assert sum(p.stat().st_size for p in stored) < 1024 * 1024
    assert peak < BOMB_EXPANDED // 2, f"peak of {peak} bytes while polling"


# --------------------------------------------------------------------------------------------
# 5. A dropped IMAP connection while the server stays up
# --------------------------------------------------------------------------------------------


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of Dovecot that can drop a connection mid-answer.

    While ``cut_after`` is set, a connection in which the client has sent its
    ``cut_in_fetch``-th body FETCH (``BODY.PEEK[]``) is closed both ways once ``cut_after``
    bytes of the server's answer to it went through: the client sees its connection end in
    the middle of the FETCH response, and Dovecot stays up.
    """

    def __init__(self, upstream_port: int, cut_in_fetch: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_in_fetch = cut_in_fetch
        self.cut_after: int | None = cut_after
        self.cuts = 0  # connections dropped so far
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.05)  # accept() wakes up to see _closing
        self._closing = threading.Event()
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CuttingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._closing.set()
        self._threads[0].join(timeout=10)  # the accepting thread: no new connection after it
        with self._lock:
            sockets, relays = list(self._sockets), self._threads[1:]
        for sock in sockets:
            _drop(sock)
        for thread in relays:
            thread.join(timeout=10)
            assert exc_type is not None or not thread.is_alive(), "a proxy thread did not end"

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        with self._listener:
            while not self._closing.is_set():
                try:
                    client, _ = self._listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        """Connect ``client`` to Dovecot, one thread each way."""
        upstream = socket.create_connection((HOST, self.upstream_port), timeout=10)
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        state = {"fetches": 0, "answered": 0}
        self._spawn(self._to_server, client, upstream, state)
        self._spawn(self._to_client, upstream, client, state)

    @staticmethod
    def _to_server(client: socket.socket, upstream: socket.socket, state: dict[str, int]) -> None:
        for data in _chunks(client):
            state["fetches"] += data.count(b"BODY.PEEK[]")  # counted before the server answers
            try:
                upstream.sendall(data)
            except OSError:
                break
        _drop(upstream)

    def _to_client(
        self, upstream: socket.socket, client: socket.socket, state: dict[str, int]
    ) -> None:
        for data in _chunks(upstream):
            limit = self.cut_after
            if limit is not None and state["fetches"] >= self.cut_in_fetch:
                data = data[: limit - state["answered"]]
                state["answered"] += len(data)
            try:
                client.sendall(data)
            except OSError:
                break
            if limit is not None and state["answered"] >= limit:
                self.cuts += 1
                break
        _drop(client)
        _drop(upstream)


def _chunks(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield data


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _point_contacto_at(config: Path, port: int) -> None:
    text = config.read_text(encoding="utf-8")
    new, count = re.subn(
        r"(\[mailboxes\.contacto\][^\[]*?\nport = )\d+", rf"\g<1>{port}", text, count=1
    )
    assert count == 1, text
    config.write_text(new, encoding="utf-8")


@integration
def test_connection_dropped_mid_fetch_fails_the_mailbox_then_everything_arrives_once(
    make_env: MakeEnv, mailboxes: Dovecot
) -> None:
    """30 messages fetched 10 per FETCH through a proxy that drops the connection in the middle
    of the 2nd FETCH answer (Dovecot stays up). Poll 1: exit 1, one line naming contacto;
    batch 1 is in: 10 ledger rows, 10 cases, 10 acknowledgements. Poll 2 (no cut): 30 ledger
    rows, one per UID; 30 cases; exactly 1 acknowledgement per case; every message flagged."""
    env = make_env()
    text = env.config.read_text(encoding="utf-8")
    assert text.count("[poll]\n") == 1
    env.config.write_text(text.replace("[poll]\n", "[poll]\nbatch_size = 10\n"), encoding="utf-8")
    # One customer per message: the cap on acknowledgements per sender never hides one.
    raws = [mail(sender=f"cliente{i}@example.com", subject=f"Reporte {i}") for i in range(30)]
    uids = mailboxes.append_many("contacto", raws)
    on_server = mailboxes.fetch_raw("contacto")
    second_answer = sum(len(on_server[uid]) for uid in uids[10:20])
    cut_after = second_answer // 2  # in the 5th or 6th message of the 2nd batch
    assert len(on_server[uids[10]]) * 2 < cut_after < second_answer - len(on_server[uids[19]]) * 2

    with CuttingProxy(mailboxes.port, cut_in_fetch=2, cut_after=cut_after) as proxy:
        _point_contacto_at(env.config, proxy.port)
        code, _, err = env.cli("poll")
        assert proxy.cuts == 1
        assert code == 1, err
        lines = [line for line in err.splitlines() if line.startswith("mailcase:")]
        assert len(lines) == 1, err
        assert lines[0].startswith("mailcase: mailbox contacto: fetch failed"), lines
        assert "Traceback" not in err
        ledger = env.ledger()
        assert sorted(r["uid"] for r in ledger) == uids[:10]
        assert len(env.cases()) == 10
        assert acks_per_folio(env) == Counter({c["folio"]: 1 for c in env.cases()})

        proxy.cut_after = None
        env.cli.poll()
        assert proxy.cuts == 1

    ledger = env.ledger()
    keys = [(r["mailbox"], r["uidvalidity"], r["uid"]) for r in ledger]
    assert len(keys) == len(set(keys)) == 30
    assert sorted(r["uid"] for r in ledger) == uids
    assert {r["disposition"] for r in ledger} == {"new_case"}
    cases = env.cases()
    assert len(cases) == 30
    assert Counter(c["subject"] for c in cases) == Counter(f"Reporte {i}" for i in range(30))
    assert acks_per_folio(env) == Counter({c["folio"]: 1 for c in cases})
    assert len(env.sink.messages) == 30
    flags = mailboxes.fetch_flags("contacto")
    assert sorted(uid for uid, f in flags.items() if b"$MailcaseDone" in f) == uids


def _untyped_parts(count: int, line_end: bytes = b"\r\n") -> bytes:
    """A multipart message whose ``count`` parts carry only a Content-Disposition: each is
    text/plain by default (RFC 2045 5.2), and none has a Content-Type line to count."""
    parts = b"".join(
        b"--sep%sContent-Disposition: attachment; filename=f%d.txt%s%sx%s"
        % (line_end, i, line_end, line_end, line_end)
        for i in range(count)
    )
    head = (
        b"From: juan.perez@example.com%(n)sSubject: Partes%(n)sMIME-Version: 1.0%(n)s"
        b'Content-Type: multipart/mixed; boundary="sep"%(n)s%(n)s'
    ) % {b"n": line_end}
    return head + parts + b"--sep--" + line_end


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"], ids=["crlf", "lone-cr"])
def test_parts_without_a_content_type_count_towards_the_limit(line_end: bytes) -> None:
    # Counted by Content-Type lines only, 2,000 such parts (stored as 2,000 files and rows)
    # passed a limit of 500; so did typed parts whose lines end in a lone CR.
    with pytest.raises(MessageError, match=r"message has 2\d\d\d MIME parts"):
        parse_inbound(_untyped_parts(2000, line_end), max_parts=500)
    typed = _untyped_parts(600, line_end).replace(
        b"Content-Disposition", b"Content-Type: text/plain" + line_end + b"Content-Disposition"
    )
    with pytest.raises(MessageError, match="MIME parts"):
        parse_inbound(typed, max_parts=500)
    # Under the limit: read, every part an attachment.
    assert len(parse_inbound(_untyped_parts(20, line_end), max_parts=500).attachments) == 20


def test_lines_that_only_look_like_delimiters_are_not_parts() -> None:
    """A text with many lines starting "--" (a pasted log's rulers, signatures) is one part."""
    body = "\r\n".join(["-- ", "----------", "--sep", "--otra cosa"] * 300)
    raw = mail(body=body)
    assert parse_inbound(raw, max_parts=500).text.count("----------") == 300
