"""A deterministic fuzz run: mutated corpus messages through the parse-and-classify path.

Every message file of the shared corpus (../shared/corpus) is mutated several
ways: random byte flips, truncation, a line deleted or duplicated, broken MIME
boundaries, a NUL byte, a huge header line. Each mutant goes through what the
service does with a fetched message before any database work:
``parse_inbound`` (an :class:`InboundMail` or :class:`MessageError`, nothing
else), ``classify``, ``triage``, ``strip_quoted``, ``find_folios``,
``parse_commands`` and ``parse_dsn``. No other exception may escape ("a bad
message costs one message"), and the values keep their documented contracts.

Every mutant is made by ``random.Random(seed)`` with ``seed`` the string
``"<SEED>/<file>/<mutation>/<n>"``, so a failure names the file, the mutation
and the seed, and ``mutate(path.read_bytes(), mutation, seed)`` rebuilds it.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from mailcase.classify import MailKind, classify
from mailcase.commands import parse_commands
from mailcase.dsn import parse_dsn
from mailcase.errors import MessageError
from mailcase.folio import find_folios
from mailcase.inbound import InboundMail, parse_inbound
from mailcase.quoting import strip_quoted
from mailcase.triage import Facts, triage

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
NOT_MAIL = {"SOURCE.md", "README.md"}
SEED = 20261126
# Mutants of each kind per file. The whole run (~570 files) must stay well under
# a minute on two cores: measured at about 30 s with these numbers.
ROUNDS = {
    "flip_bytes": 3,
    "truncate": 2,
    "delete_line": 1,
    "duplicate_line": 1,
    "break_boundary": 2,
    "insert_nul": 1,
    "huge_header": 1,
}
OWN = frozenset({"contacto@internet-plarey.com.mx", "info@internet-plarey.com.mx"})
# Bytes in a huge header line: under and over inbound's 64 KiB field limit (the
# longest field of real mail in the corpus has 2 KB).
HUGE = (8_000, 60_000, 100_000)

Mutation = Callable[[random.Random, bytes], bytes]


def _flip_bytes(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 16)):
        if data:
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
    return bytes(data)


def _truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randint(0, len(raw))]


def _lines(raw: bytes) -> list[bytes]:
    return raw.splitlines(keepends=True) or [b""]


def _delete_line(rng: random.Random, raw: bytes) -> bytes:
    lines = _lines(raw)
    del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def _duplicate_line(rng: random.Random, raw: bytes) -> bytes:
    lines = _lines(raw)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i] * rng.choice([1, 1, 2, 50]))
    return b"".join(lines)


_BOUNDARY = re.compile(rb"""boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;]+))""", re.IGNORECASE)


def _break_boundary(rng: random.Random, raw: bytes) -> bytes:
    found = [m.group(1) if m.group(1) is not None else m.group(2) for m in _BOUNDARY.finditer(raw)]
    if not found:
        # Not multipart: claim it is, with a boundary that never occurs.
        return b'Content-Type: multipart/mixed; boundary="fuzz-never"\r\n' + raw
    boundary = rng.choice(found)
    delimiter = b"--" + boundary
    how = rng.choice(["new_value", "empty_value", "drop_delimiters", "drop_close", "garble"])
    if how == "new_value":
        return raw.replace(b"=" + boundary, b"=" + rng.randbytes(rng.randint(1, 80)), 1)
    if how == "empty_value":
        return raw.replace(boundary, b"", 1)
    lines = _lines(raw)
    if how == "drop_delimiters":
        return b"".join(line for line in lines if not line.startswith(delimiter))
    if how == "drop_close":
        return b"".join(line for line in lines if not line.startswith(delimiter + b"--"))
    # garble: damage one delimiter line, or invent one in the middle of a part
    at = [i for i, line in enumerate(lines) if line.startswith(delimiter)]
    i = rng.choice(at) if at and rng.random() < 0.7 else rng.randrange(len(lines))
    lines[i] = (
        delimiter[: rng.randint(0, len(delimiter))]
        + rng.choice([b"--", b"", b"x", b"\x00", b" \t"])
        + b"\r\n"
    )
    return b"".join(lines)


def _insert_nul(rng: random.Random, raw: bytes) -> bytes:
    # Half the time in the header section, where a NUL does the most harm.
    head = raw.find(b"\n\n")
    end = head if head > 0 and rng.random() < 0.5 else len(raw)
    at = rng.randint(0, end)
    return raw[:at] + b"\x00" * rng.choice([1, 1, 8]) + raw[at:]


def _huge_header(rng: random.Random, raw: bytes) -> bytes:
    size = rng.choice(HUGE)
    line = rng.choice(
        [
            b"X-Fuzz: " + b"a" * size,
            b"Subject: " + b"=?utf-8?q?=C3=A1?= " * (size // 19),
            b"References: " + b" ".join(b"<%d@fuzz.example>" % n for n in range(size // 18)),
            b"To: " + b", ".join(b"u%d@fuzz.example" % n for n in range(size // 18)),
            b"Content-Type: multipart/mixed; " + b"x=y; " * (size // 5),
            b"Received: from x\r\n\t" + b"(" * size,
        ]
    )
    lines = _lines(raw)
    at = rng.randint(0, min(len(lines), 20))  # among the headers, usually
    lines.insert(at, line + b"\r\n")
    return b"".join(lines)


MUTATIONS: dict[str, Mutation] = {
    "flip_bytes": _flip_bytes,
    "truncate": _truncate,
    "delete_line": _delete_line,
    "duplicate_line": _duplicate_line,
    "break_boundary": _break_boundary,
    "insert_nul": _insert_nul,
    "huge_header": _huge_header,
}


def mutate(raw: bytes, mutation: str, seed: str) -> bytes:
    """The mutant a failure message names, rebuilt from its mutation and seed."""
    return MUTATIONS[mutation](random.Random(seed), raw)


def _utf8(value: str) -> None:
    # inbound's contract: every string is valid Unicode (it is stored and logged).
    value.encode("utf-8")


def exercise(raw: bytes) -> None:
    """The service's path for one fetched message, minus the database; raises on a bug."""
    parse_dsn(raw)
    try:
        mail = parse_inbound(raw)
    except MessageError:
        return  # quarantined, as designed
    assert isinstance(mail, InboundMail)
    for value in (mail.sender, mail.sender_name, mail.from_address, mail.subject, mail.text):
        _utf8(value)
    for values in mail.headers.values():
        for value in values:
            _utf8(value)
    assert "\n" not in mail.subject and "\r" not in mail.text
    classification = classify(mail, own_addresses=OWN)
    assert (classification.kind is MailKind.CUSTOMER) == (classification.reason == "")
    triage(mail, classification, Facts(), own_addresses=OWN)
    text = strip_quoted(mail.text)
    assert isinstance(text, str)
    for folio in find_folios(mail.subject, "PLR"):
        assert folio.startswith("PLR-")
    parse_commands(mail.text)
    parse_commands(text)


def corpus_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in NOT_MAIL
        and not p.name.startswith("LICENSE")
        and p.suffix != ".json"
    )


FOLDERS = sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not present")
@pytest.mark.parametrize("folder", FOLDERS or ["(no corpus)"])
def test_mutated_corpus_messages_never_raise_unexpectedly(folder: str) -> None:
    files = corpus_files(CORPUS / folder)
    assert files, f"no message files in {folder}"
    failures: list[str] = []
    for path in files:
        raw = path.read_bytes()
        name = path.relative_to(CORPUS).as_posix()
        for mutation, rounds in ROUNDS.items():
            for n in range(rounds):
                seed = f"{SEED}/{name}/{mutation}/{n}"
                try:
                    exercise(mutate(raw, mutation, seed))
                except Exception as exc:
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    failures.append(
                        f"{name} {mutation} seed={seed!r}: {type(exc).__name__}: "
                        f"{str(exc)[:200]} (at {Path(where.filename).name}:{where.lineno})"
                    )
    assert not failures, f"{len(failures)} mutants of {folder} failed:\n" + "\n".join(failures[:30])


@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is not present")
def test_the_unmutated_corpus_is_read_unless_hostile() -> None:
    # The mutants are only meaningful if the originals go through cleanly; and
    # real mail is refused only by inbound's guards (a part bomb, a 200 KB
    # header), never because the parser gave up (a SendGrid bounce cut short was).
    failures = []
    for folder in FOLDERS:
        for path in corpus_files(CORPUS / folder):
            raw = path.read_bytes()
            try:
                parse_inbound(raw)
            except MessageError as exc:
                if str(exc).startswith("cannot parse message"):
                    failures.append(f"{path.relative_to(CORPUS)}: {exc}")
            try:
                exercise(raw)
            except Exception as exc:
                failures.append(f"{path.relative_to(CORPUS)}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


HOSTILE_FIELDS = {
    "parameters": b"Content-Type: multipart/mixed; boundary=b; " + b"x=y; " * 200_000,
    "encoded_words": b"Subject: " + b"=?utf-8?q?=C3=A1?= " * 50_000,
    "addresses": b"To: " + b", ".join(b"u%d@fuzz.example" % n for n in range(50_000)),
    "part_parameters": b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Disposition: attachment; " + b"x=y; " * 200_000,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_FIELDS))
def test_a_megabyte_header_field_is_refused_before_parsing(shape: str) -> None:
    # The stdlib's parameter, encoded-word and address parsers are slow, some
    # quadratic, on one long field: these took from 2 s (addresses) to 47 s
    # (parameters) each before inbound refused them up front (the huge_header
    # mutants found it).
    raw = b"From: a@example.com\r\n" + HOSTILE_FIELDS[shape] + b"\r\n\r\nhola\r\n"
    started = time.perf_counter()
    with pytest.raises(MessageError, match="more than the limit"):
        parse_inbound(raw)
    assert time.perf_counter() - started < 2


def test_mutations_are_deterministic() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhola\r\n--b--\r\n"
    for mutation in MUTATIONS:
        assert mutate(raw, mutation, "s") == mutate(raw, mutation, "s")
