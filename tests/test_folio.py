"""Folios: format, finding them in mangled subjects, reply prefixes, subject tags."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from mailcase.config import FolioSettings, Settings
from mailcase.folio import (
    find_folios,
    format_folio,
    new_message_id,
    remove_folio_tags,
    strip_reply_prefixes,
    tagged_subject,
)

# --- format_folio -------------------------------------------------------------


def test_format_folio_pads_the_sequence_to_six_digits() -> None:
    assert format_folio("PLR", 2026, 1) == "PLR-2026-000001"
    assert format_folio("PLR", 2026, 123) == "PLR-2026-000123"
    assert format_folio("PLR", 2026, 999_999) == "PLR-2026-999999"


def test_format_folio_grows_past_six_digits_instead_of_wrapping() -> None:
    assert format_folio("PLR", 2026, 1_000_000) == "PLR-2026-1000000"
    assert format_folio("PLR", 2026, 12_345_678) == "PLR-2026-12345678"


def test_a_seven_digit_folio_is_found_again() -> None:
    assert find_folios("Re: PLR-2026-1000000", "PLR") == ["PLR-2026-1000000"]


# --- find_folios --------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Re: [Folio PLR-2026-000123] Sin internet",
        "RE: [Folio PLR-2026-000123] Sin internet",
        "RV: [Folio PLR-2026-000123] Sin internet",
        "Fwd: [Folio PLR-2026-000123] Sin internet",
        "Fw: [Folio PLR-2026-000123] Sin internet",
        "RE: RV: Fwd: [Folio PLR-2026-000123]",
        "re: [folio plr-2026-000123]",
        "Re: [FOLIO Plr-2026-000123]",
        "re: [folio plr - 2026 - 123]",
        "PLR -2026- 000123",
        "PLR_-_2026_-_000123",
        "PLR‐2026‐000123",  # U+2010 hyphen
        "PLR‑2026‑000123",  # U+2011 non-breaking hyphen
        "PLR–2026–000123",  # U+2013 en dash (Word and Outlook autocorrect)
        "PLR—2026—000123",  # U+2014 em dash
        "Mi folio es PLR-2026-123, gracias",
        "(PLR-2026-000123)",
        # Read out on the phone and typed back: spaces, or nothing at all.
        "Re: folio PLR 2026 000123",
        "folio plr 2026 123",
        "Re: PLR2026000123",
    ],
)
def test_find_folios_tolerates_what_clients_do_to_subjects(subject: str) -> None:
    assert find_folios(subject, "PLR") == ["PLR-2026-000123"]


def test_find_folios_returns_every_folio_canonical_in_order_without_repeats() -> None:
    subject = "Re: PLR-2026-7 y plr – 2025 – 000042, otra vez PLR-2026-000007"
    assert find_folios(subject, "PLR") == ["PLR-2026-000007", "PLR-2025-000042"]


@pytest.mark.parametrize(
    "subject",
    [
        "XPLR-2026-000001",  # another prefix that ends in ours
        "ABC-2026-000001",  # another prefix
        "1PLR-2026-000001",  # glued to a digit
        "PLRX-2026-000001",
        "PLR-26-000001",  # the year is four digits
        "PLR-2026-000000",  # sequences start at 1
        "PLR2026001",  # no separator at all needs the six digits of the number
        "PLR 2026",
        "Sin internet desde 2026",
        "",
    ],
)
def test_find_folios_ignores_what_is_not_one_of_our_folios(subject: str) -> None:
    assert find_folios(subject, "PLR") == []


def test_find_folios_uses_the_prefix_it_is_given() -> None:
    subject = "[Folio PLR-2026-000001] [Folio ABC-2026-000002]"
    assert find_folios(subject, "ABC") == ["ABC-2026-000002"]


def test_a_prefix_with_regex_metacharacters_is_matched_literally() -> None:
    # Config allows only [A-Z][A-Z0-9]*, but folio.py must not rely on that.
    assert find_folios("AXB-2026-000001", "A.B") == []
    assert find_folios("A.B-2026-000001", "A.B") == ["A.B-2026-000001"]
    assert find_folios("AAB-2026-000001", "A+B") == []
    assert find_folios("A+B-2026-000001", "A+B") == ["A+B-2026-000001"]
    assert find_folios("A-2026-000001", "A|X") == []
    assert find_folios("X-2026-000001", "A|X") == []
    assert find_folios("[Folio (P)-2026-000001]", "(P)") == ["(P)-2026-000001"]


# --- strip_reply_prefixes -----------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("RE: RV: Fwd: ENC: Sin internet", "Sin internet"),  # Outlook es + Gmail en
        ("Re: Sin internet", "Sin internet"),
        ("re:re:Sin internet", "Sin internet"),
        ("RV: Sin internet", "Sin internet"),  # Outlook in Spanish: "reenviar"
        ("ENC: Sin internet", "Sin internet"),  # Outlook in Portuguese: "encaminhar"
        ("Fw: Fwd: Sin internet", "Sin internet"),
        ("Re[2]: Sin internet", "Sin internet"),  # Outlook's counter
        ("  RE :  Sin internet  ", "Sin internet"),
        ("Re：Sin internet", "Sin internet"),  # full-width colon (CJK clients)
        ("Sin internet", "Sin internet"),
        ("Reporte: sin internet", "Reporte: sin internet"),  # a word, not a prefix
        ("Revisión de mi módem", "Revisión de mi módem"),
        ("Sin internet Re: otra cosa", "Sin internet Re: otra cosa"),  # only leading ones
    ],
)
def test_strip_reply_prefixes(subject: str, expected: str) -> None:
    assert strip_reply_prefixes(subject) == expected


# --- tagged_subject and remove_folio_tags -------------------------------------

FOLIO = "PLR-2026-000123"
TAG = f"[Folio {FOLIO}]"


@pytest.mark.parametrize(
    "subject",
    [
        "Sin internet",
        "RE: Sin internet",
        f"{TAG} Sin internet",
        f"RE: {TAG} Sin internet",
        "RE: RV: [folio plr-2026-123] Sin internet",
        f"Sin internet {TAG}",
        f"{TAG} {TAG} Sin internet",
    ],
)
def test_tagged_subject_never_doubles_the_tag(subject: str) -> None:
    tagged = tagged_subject(FOLIO, subject)
    assert tagged == f"{TAG} Sin internet"
    # Tagging a tagged subject again (the next notice) changes nothing.
    assert tagged_subject(FOLIO, tagged) == tagged


def test_tagged_subject_of_an_empty_subject_is_just_the_tag() -> None:
    assert tagged_subject(FOLIO, "") == TAG
    assert tagged_subject(FOLIO, f"Re: {TAG}") == TAG


def test_remove_folio_tags_keeps_the_rest_of_the_subject() -> None:
    subject = "Re: [Folio PLR-2026-000001] hola [ folio plr – 2026 – 2 ] adiós PLR-2026-000003"
    # Only bracketed tags go; a bare folio in the text is the customer's words.
    assert remove_folio_tags(subject, "PLR") == "Re: hola adiós PLR-2026-000003"


def test_remove_folio_tags_leaves_other_prefixes_alone() -> None:
    assert remove_folio_tags("[Folio ABC-2026-000001] hola", "PLR") == (
        "[Folio ABC-2026-000001] hola"
    )


def test_new_message_id_is_fresh_and_ours() -> None:
    first, second = new_message_id("x.mx"), new_message_id("x.mx")
    assert first != second
    assert first.startswith("<mc.")
    assert first.endswith("@x.mx>")


# --- properties ---------------------------------------------------------------

# Prefixes as config allows them, plus regex metacharacters folio.py must escape.
# They start with a letter: a prefix starting with a digit could be the tail of
# a sequence number in the text before it.
prefixes = st.from_regex(r"[A-Z][A-Z0-9.+*?()|^$\\]{0,6}", fullmatch=True)


@given(
    prefix=prefixes,
    year=st.integers(min_value=1000, max_value=9999),
    number=st.integers(min_value=1, max_value=999_999_999),
    before=st.text(),
    after=st.text(),
)
def test_a_folio_embedded_in_any_text_is_found(
    prefix: str, year: int, number: int, before: str, after: str
) -> None:
    # Text glued to the folio makes it another word ("XPLR-...", "...0001234").
    assume(not before[-1:].isalnum() and not after[:1].isalnum())
    folio = format_folio(prefix, year, number)
    assert folio in find_folios(before + folio + after, prefix)
    assert folio in find_folios((before + folio + after).lower(), prefix)


@given(subject=st.text(), prefix=prefixes)
def test_find_folios_never_raises_and_returns_canonical_folios(subject: str, prefix: str) -> None:
    for folio in find_folios(subject, prefix):
        assert folio.startswith(f"{prefix}-")
        year, number = folio.removeprefix(f"{prefix}-").split("-")
        assert len(year) == 4
        assert year.isascii() and number.isascii()
        assert format_folio(prefix, int(year), int(number)) == folio


@given(subject=st.text())
def test_tagged_subject_has_exactly_one_tag(subject: str) -> None:
    tagged = tagged_subject(FOLIO, subject)
    assert tagged.startswith(TAG)
    # The rest carries no tag of ours, and tagging again changes nothing.
    rest = tagged.removeprefix(TAG).strip()
    assert remove_folio_tags(rest, "PLR") == rest
    assert tagged_subject(FOLIO, tagged) == tagged


# --- the folio's year --------------------------------------------------------------------


def test_the_folio_year_is_the_business_calendar_year(tmp_path: Path) -> None:
    from mailcase.casework import open_case
    from mailcase.store import Store

    settings = Settings.model_validate(
        {
            "mailboxes": {"contacto": {"address": "contacto@x.mx", "host": "127.0.0.1"}},
            "smtp": {"host": "127.0.0.1"},
            "database": {"url": f"sqlite:///{tmp_path}/mailcase.db"},
        }
    )
    assert settings.folio.timezone == "America/Mexico_City"
    # 19:30 on 31 December in Mexico City is already 2027 in UTC.
    new_years_eve = datetime(2027, 1, 1, 1, 30, tzinfo=UTC)
    assert settings.folio.year(new_years_eve) == 2026
    assert settings.folio.year(datetime(2027, 1, 1, 6, 30, tzinfo=UTC)) == 2027
    with Store.open(settings.database.url, auto_upgrade=True) as store, store.transaction() as s:
        kw = {"customer": "a@b.mx", "customer_name": "", "subject": "x", "mailbox": "contacto"}
        case = open_case(settings, s, now=new_years_eve, **kw)
        assert case.folio == "PLR-2026-000001"
        case = open_case(settings, s, now=datetime(2027, 1, 1, 6, 30, tzinfo=UTC), **kw)
        assert case.folio == "PLR-2027-000001"
    utc = settings.model_copy(update={"folio": FolioSettings(timezone="UTC")})
    assert utc.folio.year(new_years_eve) == 2027


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown time zone"):
        FolioSettings(timezone="America/Ciudad_Gotica")
