"""The parser process: same answers as parsing here, in order, and no mail lost when the
child dies; and a poll with a backlog parses there with the same outcome."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli, Env, json_events, mail, write_config
from servers import Dovecot, SmtpSink

from mailcase import parsing
from mailcase.blobs import BlobStore
from mailcase.errors import MessageError
from mailcase.inbound import InboundMail
from mailcase.parsing import ParseOptions, ParserProcess, parse_ahead

OPTIONS = ParseOptions(web_form_senders=("web@example.com",), max_parts=5)
CRASHING = (sys.executable, str(Path(__file__).parent / "crashing_parser.py"))


def _messages(count: int) -> list[bytes]:
    return [
        mail(
            sender=f"Cliente {i} <cliente{i}@example.com>",
            subject=f"Reporte {i} ñandú",
            attachments=[("foto.jpg", "image/jpeg", bytes(range(256)) * (i + 1))],
        )
        for i in range(count)
    ]


def _part_bomb() -> bytes:
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\n{i}\r\n" for i in range(10))
    return (
        b"From: a@example.com\r\nSubject: bomba\r\n"
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts.encode() + b"--b--\r\n"
    )


def _crashing(raw: bytes) -> bytes:
    return raw.replace(b"Subject:", b"X-Crash-Parser: yes\nSubject:", 1)


def test_the_child_answers_as_parsing_here_in_order() -> None:
    raws = _messages(5)
    with ParserProcess(OPTIONS) as parser:
        for raw in raws:
            parser.send(raw)
        answers = [parser.receive() for _ in raws]
    assert answers == [OPTIONS.parse(raw) for raw in raws]
    assert all(isinstance(a, InboundMail) for a in answers)
    last = answers[4]
    assert isinstance(last, InboundMail)
    assert last.header("subject") == "Reporte 4 ñandú"  # headers readable again


def test_the_child_stores_what_it_is_told_to_keep(tmp_path: Path) -> None:
    """Kept: the raw message (even when it cannot be parsed) and its attachments, where the
    poll process's BlobStore finds them; not kept (a spooled beginning): nothing."""
    kept, unreadable, spooled = _messages(1)[0], _part_bomb(), _messages(2)[1]
    with ParserProcess(OPTIONS, blobs=tmp_path) as parser:
        parser.send(kept)
        parser.send(unreadable)
        parser.send(spooled, keep=False)
        answers = [parser.receive() for _ in range(3)]
    blobs = BlobStore(tmp_path)
    first, third = answers[0], answers[2]
    assert isinstance(first, InboundMail) and isinstance(third, InboundMail)
    assert isinstance(answers[1], MessageError)
    stored = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    expected = {
        first.raw_sha256,
        first.attachments[0].sha256,
        hashlib.sha256(unreadable).hexdigest(),
    }
    assert stored == expected
    assert blobs.get(first.attachments[0].sha256) == first.attachments[0].payload
    assert third.attachments[0].sha256 not in stored


def test_a_parse_error_comes_back_as_the_same_error() -> None:
    with pytest.raises(MessageError) as here:
        OPTIONS.parse(_part_bomb())
    with ParserProcess(OPTIONS) as parser:
        parser.send(_part_bomb())
        parser.send(_messages(1)[0])
        error, good = parser.receive(), parser.receive()
    assert isinstance(error, MessageError)
    assert str(error) == str(here.value) == "message has 11 MIME parts, more than the limit of 5"
    assert isinstance(good, InboundMail)


def test_a_killed_child_is_replaced_and_nothing_is_lost() -> None:
    raws = _messages(9)
    with ParserProcess(OPTIONS) as parser:
        first = parser.pid
        for raw in raws[:6]:
            parser.send(raw)
        answers = [parser.receive()]
        os.kill(first, signal.SIGKILL)  # answers 2-6 may or may not have been written
        # Sent after the kill: only a new child can answer these (a fast child may
        # have answered all six before it died, and then none needed replacing).
        for raw in raws[6:]:
            parser.send(raw)
        answers += [parser.receive() for _ in raws[1:]]
        assert parser.pid != first
    assert answers == [OPTIONS.parse(raw) for raw in raws]


def test_a_message_that_kills_the_child_twice_is_an_error_and_its_neighbours_parse() -> None:
    raws = _messages(4)
    raws[1] = _crashing(raws[1])
    with ParserProcess(OPTIONS, command=CRASHING) as parser:
        for raw in raws:
            parser.send(raw)
        answers = [parser.receive() for _ in raws]
    assert isinstance(answers[1], MessageError)
    assert str(answers[1]) == "the parser process died reading this message (exit 3)"
    assert [answers[0], answers[2], answers[3]] == [OPTIONS.parse(raws[i]) for i in (0, 2, 3)]


def test_parse_ahead_keeps_a_bounded_window_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parsing, "WINDOW_MESSAGES", 3)
    raws = _messages(10)
    pulled: list[int] = []

    def source() -> Any:
        for i, raw in enumerate(raws):
            pulled.append(i)
            yield raw

    with ParserProcess(OPTIONS) as parser:
        outcomes = parse_ahead(source(), lambda raw: (raw, True), parser)
        item, parsed = next(outcomes)
        assert item == raws[0] and parsed == OPTIONS.parse(raws[0])
        assert pulled == [0, 1, 2]  # three sent ahead, no more
        next(outcomes)
        assert pulled == [0, 1, 2, 3]
        outcomes.close()  # a stopping poll: two parses still with the child
    assert parser._child.process.returncode is not None  # closed, not left behind


def test_without_a_parser_items_come_with_none() -> None:
    assert list(parse_ahead([b"a", b"b"], lambda raw: (raw, True), None)) == [
        (b"a", None),
        (b"b", None),
    ]


def test_an_exception_that_does_not_pickle_comes_back_in_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Local(Exception):  # a local class cannot be pickled
        pass

    def failing(self: ParseOptions, raw: bytes) -> InboundMail:
        raise Local("strange input")

    monkeypatch.setattr(ParseOptions, "parse", failing)
    stdin = io.BytesIO()
    for payload in (pickle.dumps((OPTIONS, None)), pickle.dumps((b"raw", True))):
        parsing._write_frame(stdin, payload)
    stdin.seek(0)
    stdout = io.BytesIO()
    parsing._serve(stdin, stdout)
    stdout.seek(0)
    kind, error = pickle.loads(parsing._read_frame(stdout) or b"")  # noqa: S301 - our own bytes
    assert (kind, type(error), str(error)) == ("error", MessageError, "Local: strange input")


@pytest.mark.integration
@pytest.mark.parametrize("parse_process", [True, False])
def test_a_backlog_is_parsed_in_the_child_with_the_same_outcome(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    parse_process: bool,
) -> None:
    """Five new customers, a part bomb and a message that kills the parser: with or without
    the child, five cases, five acknowledgements and the same two quarantined."""
    monkeypatch.setattr(parsing, "MIN_BACKLOG", 2)
    monkeypatch.setattr(parsing, "_COMMAND", CRASHING)
    started: list[int] = []
    real_init = ParserProcess.__init__

    def counting_init(self: ParserProcess, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        started.append(self.pid)

    monkeypatch.setattr(ParserProcess, "__init__", counting_init)
    config = write_config(tmp_path, mailboxes, sink, extra="[limits]\nmax_mime_parts = 5\n")
    if not parse_process:
        text = config.read_text()
        config.write_text(text.replace("[poll]\n", "[poll]\nparse_process = false\n", 1))
    env = Env(Cli(config, capsys), mailboxes, sink, config, tmp_path)
    raws = _messages(5)
    raws[2:2] = [_part_bomb().replace(b"Subject: bomba", b"Subject: bomba\r\nTo: contacto@x")]
    crash = _crashing(mail(sender="otro@example.com", subject="Cae el parser"))
    raws.insert(4, crash if parse_process else _part_bomb())
    env.imap.append_many("contacto", raws)

    env.poll()

    assert len(started) == (1 if parse_process else 0)
    ledger = env.ledger()
    assert Counter(r["disposition"] for r in ledger) == {"new_case": 5, "quarantined": 2}
    reasons = sorted(r["reason"] for r in ledger if r["disposition"] == "quarantined")
    assert reasons[0].startswith("message has 11 MIME parts")
    if parse_process:
        assert reasons[1] == "the parser process died reading this message (exit 3)"
    assert sorted(c["customer"] for c in env.cases()) == [
        f"cliente{i}@example.com" for i in range(5)
    ]
    assert len(sink.messages) == 5


BROKEN = (sys.executable, "-c", "raise SystemExit(1)")  # a child that cannot even start


def test_when_no_child_works_the_caller_parses_everything_and_nothing_is_quarantined() -> None:
    """A child that dies at once, every time: not the messages' fault. The first message is
    not quarantined (the canary fails too); every message comes back None: parse it here."""
    raws = _messages(3)
    with ParserProcess(OPTIONS, command=BROKEN) as parser:
        for raw in raws:
            parser.send(raw)
        answers = [parser.receive() for _ in raws]
        assert parser.broken
        parser.send(raws[0])  # later messages are not sent anywhere
        answers.append(parser.receive())
    assert answers == [None, None, None, None]


@pytest.mark.integration
def test_a_poll_whose_parser_process_cannot_start_parses_in_the_poll_process(
    tmp_path: Path,
    mailboxes: Dovecot,
    sink: SmtpSink,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(parsing, "MIN_BACKLOG", 2)
    monkeypatch.setattr(parsing, "_COMMAND", BROKEN)
    config = write_config(tmp_path, mailboxes, sink)
    env = Env(Cli(config, capsys), mailboxes, sink, config, tmp_path)
    env.imap.append_many("contacto", _messages(4))
    code, _, err = env.cli("poll")
    assert code == 0, err
    assert Counter(r["disposition"] for r in env.ledger()) == {"new_case": 4}
    assert len(sink.messages) == 4
    assert [e["event"] for e in json_events(err)].count("parser_process_unavailable") == 1
