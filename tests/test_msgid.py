"""msgid: Message-IDs that prove a reply answered our notice of a case."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailcase.inbound import parse_inbound
from mailcase.msgid import proofs_in, signed_message_id, verify_message_id

KEY = b"k" * 32
OTHER_KEY = b"j" * 32
DOMAIN = "internet-plarey.com.mx"


def parts(message_id: str) -> list[str]:
    match = re.fullmatch(r"<mc\.(\d+)\.(\w+)\.(\w+)@(.+)>", message_id)
    assert match is not None, message_id
    return list(match.groups())


def test_round_trip() -> None:
    message_id = signed_message_id(KEY, 123, DOMAIN)
    assert verify_message_id(KEY, message_id) == 123


def test_format_and_a_fixed_nonce_give_a_reproducible_mac() -> None:
    message_id = signed_message_id(KEY, 42, DOMAIN, nonce="00ff00ff00ff00ff")
    case_id, nonce, mac, domain = parts(message_id)
    assert (case_id, nonce, domain) == ("42", "00ff00ff00ff00ff", DOMAIN)
    assert re.fullmatch(r"[0-9a-f]{24}", mac)
    assert signed_message_id(KEY, 42, DOMAIN, nonce="00ff00ff00ff00ff") == message_id


def test_each_id_is_new_and_its_nonce_is_64_random_bits() -> None:
    ids = {signed_message_id(KEY, 7, DOMAIN) for _ in range(50)}
    assert len(ids) == 50
    for message_id in ids:
        assert re.fullmatch(r"[0-9a-f]{16}", parts(message_id)[1])
        assert verify_message_id(KEY, message_id) == 7


def test_case_zero_and_large_ids_round_trip() -> None:
    for case_id in (0, 1, 10**18 - 1):
        assert verify_message_id(KEY, signed_message_id(KEY, case_id, DOMAIN)) == case_id


def test_a_tampered_case_id_is_rejected() -> None:
    _, nonce, mac, domain = parts(signed_message_id(KEY, 123, DOMAIN))
    for forged in ("124", "0123", "1230", "23"):
        assert verify_message_id(KEY, f"<mc.{forged}.{nonce}.{mac}@{domain}>") is None


def test_a_tampered_nonce_is_rejected() -> None:
    case_id, _, mac, domain = parts(signed_message_id(KEY, 123, DOMAIN, nonce="abcdef0123456789"))
    for forged in ("abcdef0123456788", "abcdef012345678", "Abcdef0123456789"):
        assert verify_message_id(KEY, f"<mc.{case_id}.{forged}.{mac}@{domain}>") is None


def test_a_tampered_mac_is_rejected() -> None:
    case_id, nonce, mac, domain = parts(signed_message_id(KEY, 123, DOMAIN))
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    for forged in (flipped, mac[:-1], mac + "0", "0" * 24):
        assert verify_message_id(KEY, f"<mc.{case_id}.{nonce}.{forged}@{domain}>") is None


def test_another_key_is_rejected() -> None:
    message_id = signed_message_id(OTHER_KEY, 123, DOMAIN)
    assert verify_message_id(KEY, message_id) is None
    assert verify_message_id(OTHER_KEY, message_id) == 123


def test_an_empty_key_neither_signs_nor_verifies() -> None:
    with pytest.raises(ValueError, match="key"):
        signed_message_id(b"", 1, DOMAIN)
    # Even an id whose MAC is right for the empty key: anyone can compute that.
    mac = hmac.new(b"", b"1.aa", hashlib.sha256).hexdigest()[:24]
    assert verify_message_id(b"", f"<mc.1.aa.{mac}@{DOMAIN}>") is None


def test_the_domain_is_irrelevant_to_verification() -> None:
    case_id, nonce, mac, _ = parts(signed_message_id(KEY, 9, DOMAIN))
    for domain in ("info.internet-plarey.com.mx", "example.com", "localhost"):
        assert verify_message_id(KEY, f"<mc.{case_id}.{nonce}.{mac}@{domain}>") == 9
    assert verify_message_id(KEY, signed_message_id(KEY, 9, "example.org")) == 9


def test_surrounding_whitespace_and_upper_case_mac_are_tolerated() -> None:
    case_id, nonce, mac, domain = parts(signed_message_id(KEY, 5, DOMAIN))
    assert verify_message_id(KEY, f"  <mc.{case_id}.{nonce}.{mac.upper()}@{domain}>\r\n") == 5


@pytest.mark.parametrize(
    "other",
    [
        "",
        "<>",
        "<abc@example.com>",
        f"<mc.0123abcd@{DOMAIN}>",  # an unsigned id of ours (folio.new_message_id)
        "mc.1.aa.000000000000000000000000@x",  # no angle brackets
        "<mc.1.aa.000000000000000000000000@>",
        "<mc.-1.aa.000000000000000000000000@x>",
        "<mc.1.a.a.000000000000000000000000@x>",
        f"<mc.{'9' * 19}.aa.000000000000000000000000@x>",
    ],
)
def test_other_ids_are_not_ours(other: str) -> None:
    assert verify_message_id(KEY, other) is None


@pytest.mark.parametrize(
    ("case_id", "nonce", "domain"),
    [
        (-1, None, DOMAIN),
        (10**18, None, DOMAIN),
        (True, None, DOMAIN),
        (1, "", DOMAIN),
        (1, "a.b", DOMAIN),
        (1, "a@b", DOMAIN),
        (1, "a>b", DOMAIN),
        (1, None, ""),
        (1, None, "a b"),
        (1, None, "x>\r\nBcc: y"),
        (1, None, "-example.com"),
    ],
)
def test_signing_refuses_what_would_make_a_malformed_id(
    case_id: int, nonce: str | None, domain: str
) -> None:
    with pytest.raises(ValueError):
        signed_message_id(KEY, case_id, domain, nonce=nonce)


def test_the_id_survives_a_reply_chain_as_inbound_parses_it() -> None:
    notice = signed_message_id(KEY, 77, DOMAIN)
    other = signed_message_id(KEY, 78, DOMAIN)
    raw = (
        "From: ana.tecnica@internet-plarey.com.mx\r\n"
        "To: contacto@internet-plarey.com.mx\r\n"
        "Subject: Re: caso\r\n"
        f"In-Reply-To: {notice}\r\n"
        f"References: <first@example.com>\r\n {other}\r\n {notice}\r\n"
        "\r\n#cerrar\r\n"
    ).encode()
    reply = parse_inbound(raw)
    assert [case_id for case_id, _ in proofs_in(KEY, reply.thread_ids)] == [77, 78]


def test_proofs_in_keeps_order_drops_forgeries_and_names_an_id_whatever_its_domain() -> None:
    a = signed_message_id(KEY, 3, DOMAIN, nonce="aa")
    b = signed_message_id(KEY, 1, DOMAIN, nonce="bb")
    a_elsewhere = signed_message_id(KEY, 3, "example.com", nonce="aa")  # the same proof
    a_later = signed_message_id(KEY, 3, DOMAIN, nonce="cc")  # another notice of case 3
    forged = signed_message_id(OTHER_KEY, 2, DOMAIN)
    ids = ["<x@example.com>", a, forged, b, a_elsewhere, a_later, "garbage"]
    assert proofs_in(KEY, ids) == ((3, "3.aa"), (1, "1.bb"), (3, "3.cc"))
    assert proofs_in(KEY, []) == ()


@given(st.text())
@example("<mc.1.a.@x>")
@example("<mc." + "1" * 5000 + ".a.000000000000000000000000@x>")
def test_garbage_never_raises_and_never_verifies(text: str) -> None:
    assert verify_message_id(KEY, text) is None
    assert proofs_in(KEY, [text, text]) == ()


@given(st.integers(min_value=0, max_value=10**18 - 1), st.binary(min_size=1, max_size=64))
def test_every_case_id_and_key_round_trip(case_id: int, key: bytes) -> None:
    message_id = signed_message_id(key, case_id, DOMAIN)
    assert verify_message_id(key, message_id) == case_id
    assert [c for c, _ in proofs_in(key, [message_id])] == [case_id]
