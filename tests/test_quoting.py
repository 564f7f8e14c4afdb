"""strip_quoted: handwritten es/en replies, the reply-parser corpora, speed, properties."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcase.inbound import parse_inbound
from mailcase.quoting import (
    customer_text,
    forwarded_sender,
    shared_signature,
    strip_quoted,
    without_known_signature,
)

CORPUS = Path(__file__).parents[2] / "shared" / "corpus"
REPLY_CORPORA = (
    "crisp-email-reply-parser",
    "alfonsrv-mail-parser-reply",
    "github-email_reply_parser",
    "talon",
)
LONG_QUOTE = CORPUS / "github-email_reply_parser" / "email_long_quote.txt"
# Generous (the worst input below takes about half a second on a slow CI box):
# this catches catastrophic regex backtracking, which takes minutes, not seconds.
TIME_BUDGET_SECONDS = 5.0


def _corpus_files() -> list[Path]:
    files: list[Path] = []
    for folder in REPLY_CORPORA:
        root = CORPUS / folder
        if root.is_dir():
            files.extend(
                p
                for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.startswith(("LICENSE", "SOURCE"))
            )
    return files


# --- handwritten replies: the shapes real clients write ----------------------

GMAIL_ES = """\
Hola, sigo sin internet desde ayer en la noche.

El lun, 3 nov 2026 a las 10:15, Soporte Red Norte <soporte@rednorte.mx> escribió:

> Buenos días, ¿ya reinició el módem?
> Saludos.
"""

GMAIL_ES_WRAPPED = """\
Ya lo reinicié dos veces y sigue igual.

El lun, 3 nov 2026 a las 10:15, Soporte Técnico Red Norte Hermosillo <
soporte.tecnico@rednorte.com.mx> escribió:

> ¿Ya reinició el módem?
"""

GMAIL_EN = (
    "The router is blinking red again.\n"
    "\n"
    # Gmail puts a narrow no-break space (U+202F) before AM/PM.
    "On Mon, Nov 3, 2026 at 10:15\u202fAM Juan <j@x.mx> wrote:\n"
    "\n"
    "> Did you restart the router?\n"
)

GMAIL_EN_WRAPPED = """\
Still down, thanks.

On Mon, Nov 3, 2026 at 10:15 AM Red Norte Technical Support Team <
soporte.tecnico@rednorte.com.mx> wrote:

> Did you restart the router?
"""

OUTLOOK_ORIGINAL_ES = """\
Adjunto el comprobante de pago.

-----Mensaje original-----
De: Cobranza <cobranza@rednorte.mx>
Enviado el: lunes, 3 de noviembre de 2026 10:15
Para: Juan Pérez
Asunto: Recordatorio de pago

Su pago vence el día 5.
"""

OUTLOOK_ORIGINAL_EN = """\
Payment receipt attached.

-----Original Message-----
From: Billing <billing@rednorte.mx>
Sent: Monday, November 3, 2026 10:15 AM
Subject: Payment reminder

Your payment is due on the 5th.
"""

OUTLOOK_BLOCK_ES = """\
Gracias, ya quedó el servicio.

De: Soporte Red Norte <soporte@rednorte.mx>
Enviado: lunes, 3 de noviembre de 2026 10:15
Para: Juan Pérez <juan@correo.mx>
Asunto: RE: [RN-2026-000123] Sin servicio

Estimado cliente, su folio es RN-2026-000123.
"""

OUTLOOK_BLOCK_EN_DATE = """\
Thanks, it works now.

From: Red Norte Support <soporte@rednorte.mx>
Date: Monday, November 3, 2026 at 10:15 AM
To: Juan <juan@correo.mx>
Subject: RE: No service
"""

OUTLOOK_BOLD_ES = """\
Confirmo la visita del técnico.

*De:* Soporte Red Norte <soporte@rednorte.mx>
*Fecha:* lunes, 3 de noviembre de 2026, 10:15
*Para:* Juan Pérez <juan@correo.mx>
*Asunto:* Visita técnica
"""

OUTLOOK_MOBILE_SEPARATOR = """\
Ok, los espero el martes.

Obtener Outlook para Android<https://aka.ms/AAb9ysg>
________________________________
From: Soporte Red Norte <soporte@rednorte.mx>
Sent: Monday, November 3, 2026 10:15:12 AM
To: Juan Pérez <juan@correo.mx>
Subject: Visita técnica

El técnico irá el martes.
"""

APPLE_MAIL_ES = """\
Ya pagué, adjunto foto.

Enviado desde mi iPhone

El 3 nov 2026, a las 10:15, Cobranza Red Norte <cobranza@rednorte.mx> escribió:

> Su pago vence el día 5.
"""

IPHONE_EN = """\
Thanks!

Sent from my iPhone
"""

SIGNATURE = """\
No tengo señal en la zona centro.

-- \r
Juan Pérez
Tel. 662 000 0000
"""

INTERLEAVED = """\
Respondo abajo:
> ¿Tiene luz el módem?
Sí, la luz verde.
> ¿Ya lo reinició?
Sí, dos veces.
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(GMAIL_ES, "Hola, sigo sin internet desde ayer en la noche.", id="gmail-es"),
        pytest.param(
            GMAIL_ES_WRAPPED, "Ya lo reinicié dos veces y sigue igual.", id="gmail-es-wrapped"
        ),
        pytest.param(GMAIL_EN, "The router is blinking red again.", id="gmail-en"),
        pytest.param(GMAIL_EN_WRAPPED, "Still down, thanks.", id="gmail-en-wrapped"),
        pytest.param(
            OUTLOOK_ORIGINAL_ES, "Adjunto el comprobante de pago.", id="outlook-mensaje-original"
        ),
        pytest.param(
            OUTLOOK_ORIGINAL_EN, "Payment receipt attached.", id="outlook-original-message"
        ),
        pytest.param(OUTLOOK_BLOCK_ES, "Gracias, ya quedó el servicio.", id="outlook-block-es"),
        pytest.param(OUTLOOK_BLOCK_EN_DATE, "Thanks, it works now.", id="outlook-block-en-date"),
        pytest.param(OUTLOOK_BOLD_ES, "Confirmo la visita del técnico.", id="outlook-bold-es"),
        pytest.param(
            OUTLOOK_MOBILE_SEPARATOR, "Ok, los espero el martes.", id="outlook-underscores"
        ),
        pytest.param(APPLE_MAIL_ES, "Ya pagué, adjunto foto.", id="apple-mail-es"),
        pytest.param(IPHONE_EN, "Thanks!", id="sent-from-iphone"),
        pytest.param(SIGNATURE, "No tengo señal en la zona centro.", id="rfc3676-signature"),
        pytest.param(
            INTERLEAVED, "Respondo abajo:\nSí, la luz verde.\nSí, dos veces.", id="quote-lines"
        ),
        pytest.param(
            "Gracias\r\n\r\nOn Mon, Nov 3, 2026 at 10:15 AM Juan <j@x.mx> wrote:\r\n> hola\r\n",
            "Gracias",
            id="crlf",
        ),
        pytest.param(
            "Gracias.\n\n---------- Forwarded message ---------\nFrom: A <a@x.mx>\n"
            "Date: Mon, Nov 3, 2026\nSubject: Factura\nTo: B <b@x.mx>\n\nFactura adjunta.\n",
            "Gracias.",
            id="gmail-forward",
        ),
    ],
)
def test_strips_history_and_signature(text: str, expected: str) -> None:
    assert strip_quoted(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "On the other hand, the modem works.\nOn average it drops twice a day.",
            id="on-prose",
        ),
        pytest.param(
            "El técnico dijo que vendría.\nEl martes nadie llegó, como mi hermano escribió:",
            id="escribio-without-date",
        ),
        pytest.param("Horario:\nDe: lunes a viernes\nPara: clientes con folio", id="de-para-prose"),
        pytest.param("Here is a fix -- this is not a signature.\n\nkthxbai", id="dashes-mid-line"),
        pytest.param(
            "Here is another email\n\nSent from my desk, is much easier than my phone.",
            id="sent-from-sentence",
        ),
        pytest.param("Resultados:\n----------\nvelocidad 20 Mbps", id="rule-without-header"),
    ],
)
def test_keeps_text_that_only_looks_like_a_header(text: str) -> None:
    assert strip_quoted(text) == text


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("> solo una cita\n> nada más\n", id="only-quote"),
        pytest.param(
            "El lun, 3 nov 2026 a las 10:15, Juan <j@x.mx> escribió:\n> hola\n",
            id="only-attribution-and-quote",
        ),
        pytest.param("-- \nJuan Pérez\n", id="only-signature"),
        pytest.param("Enviado desde mi iPhone", id="only-device-signature"),
    ],
)
def test_nothing_left_returns_original_stripped(text: str) -> None:
    assert strip_quoted(text) == text.strip()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "On 04/02/2012 06:26 PM, Megan One wrote:\n> Hi \nHello",
            "Hello",
            id="thunderbird-below-the-quote",
        ),
        pytest.param(
            "El 20/11/2026 10:00, Internet Plarey <contacto@internet-plarey.com.mx>"
            " escribió:\n> Recibimos su mensaje y lo registramos con el folio:\n"
            ">     PLR-2026-000001\n\nSigue sin funcionar el módem.\n\n-- \nJuan",
            "Sigue sin funcionar el módem.",
            id="spanish-below-the-quote-with-a-signature",
        ),
        pytest.param(
            "On Fri, Nov 20, 2026 at 10:00 AM Soporte <s@x.mx> wrote:\n"
            "> ¿Ya reinició el módem?\nSí, dos veces.\n> ¿Qué luces ve?\nSolo la roja.",
            "Sí, dos veces.\nSolo la roja.",
            id="answers-between-quoted-lines",
        ),
    ],
)
def test_text_written_below_the_quote_is_the_new_text(text: str, expected: str) -> None:
    # Agents and the case had shown the attribution and every quoted line.
    assert strip_quoted(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "\n\r\n\t"])
def test_blank_input_gives_empty_string(text: str) -> None:
    assert strip_quoted(text) == ""


def test_attribution_cut_keeps_earlier_signature_free_text() -> None:
    text = (
        "Línea uno.\n"
        "Línea dos.\n"
        "\n"
        "--\n"
        "Juan\n"
        "\n"
        "El mar, 4 nov 2026 a las 09:00, Soporte <s@x.mx> escribió:\n"
        "> Hola\n"
    )
    assert strip_quoted(text) == "Línea uno.\nLínea dos."


# --- the reply-parser corpora ------------------------------------------------


@pytest.mark.parametrize(
    "path", _corpus_files(), ids=lambda p: str(p.relative_to(CORPUS)) if CORPUS in p.parents else ""
)
def test_corpus_never_raises_and_never_empties(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", "replace")
    result = strip_quoted(text)
    assert isinstance(result, str)
    if text.strip():
        assert result != ""
    if path.suffix == ".eml":
        body = parse_inbound(path.read_bytes()).text
        if body.strip():
            assert strip_quoted(body) != ""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("github-email_reply_parser/email_2_1.txt", "Outlook with a reply"),
        ("github-email_reply_parser/email_iPhone.txt", "Here is another email"),
        ("github-email_reply_parser/email_BlackBerry.txt", "Here is another email"),
        (
            "github-email_reply_parser/correct_sig.txt",
            "this is an email with a correct -- signature.",
        ),
        ("alfonsrv-mail-parser-reply/email_headers_no_delimiter.txt", "And another reply!"),
        ("alfonsrv-mail-parser-reply/multi_header.txt", "No problem. I’ll just start a new order."),
        (
            "crisp-email-reply-parser/email_tricky_17_forward_header.txt",
            "See the forwarded message below.",
        ),
        (
            "crisp-email-reply-parser/email_tricky_9_nested_quotes.txt",
            "I agree with the points below.",
        ),
    ],
)
def test_corpus_exact(name: str, expected: str) -> None:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"corpus file {name} not present")
    assert strip_quoted(path.read_text(encoding="utf-8")) == expected


def test_corpus_split_attribution_and_outlook_headers() -> None:
    names = [
        "crisp-email-reply-parser/email_gmail_split_line_from.txt",
        "crisp-email-reply-parser/email_outlook_split_line_from.txt",
        "crisp-email-reply-parser/email_ios_outlook.txt",
        "crisp-email-reply-parser/email_original_message_2.txt",
    ]
    for name in names:
        path = CORPUS / name
        if not path.is_file():
            pytest.skip(f"corpus file {name} not present")
        result = strip_quoted(path.read_text(encoding="utf-8"))
        assert result.startswith("Fusce bibendum"), name
        assert result.endswith("aliquet nec nec nibh."), name


# --- speed -------------------------------------------------------------------


def _assert_fast(text: str) -> str:
    start = time.perf_counter()
    result = strip_quoted(text)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BUDGET_SECONDS, f"{elapsed:.2f}s for {len(text)} characters"
    return result


def test_long_quote_from_corpus_is_fast() -> None:
    if not LONG_QUOTE.is_file():
        pytest.skip("github-email_reply_parser corpus not present")
    text = LONG_QUOTE.read_text(encoding="utf-8")
    assert len(text) > 700_000
    result = _assert_fast(text)
    assert result.startswith("Hi folks")


MEGABYTE = 1_000_000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(">" * MEGABYTE, id="one-quote-line"),
        pytest.param("-" * MEGABYTE, id="one-dash-line"),
        pytest.param("_" * MEGABYTE + "\nFrom: x", id="one-underscore-line"),
        pytest.param(" " * MEGABYTE + "wrote:", id="spaces-then-wrote"),
        pytest.param("On " + "9" * MEGABYTE + " wrote:", id="huge-attribution"),
        pytest.param("On 3 nov\n" * (MEGABYTE // 9), id="attribution-starts"),
        pytest.param("x wrote:\n" * (MEGABYTE // 9), id="attribution-ends"),
        pytest.param("From: a\n" * (MEGABYTE // 8), id="from-lines"),
        pytest.param("*De:* a\n\n" * (MEGABYTE // 10), id="bold-de-lines"),
        pytest.param("a" * 12 + ":" + "b" * MEGABYTE, id="long-header-key"),
        pytest.param("Sent from " + "x" * MEGABYTE, id="long-device-line"),
        pytest.param("-- \n" * (MEGABYTE // 4), id="signature-lines"),
    ],
)
def test_megabyte_inputs_are_fast(text: str) -> None:
    result = _assert_fast(text)
    assert result != ""


# --- properties ---------------------------------------------------------------

REPLY_LINES = st.sampled_from(
    [
        "",
        "Hola, sigo sin servicio.",
        "> cita",
        ">",
        "-- ",
        "--",
        "________________________________",
        "------------------------------",
        "-----Mensaje original-----",
        "-----Original Message-----",
        "De: Soporte <s@x.mx>",
        "*From:* Support <s@x.mx>",
        "Enviado: lunes, 3 de noviembre de 2026 10:15",
        "Sent: Monday",
        "Para: Juan",
        "To: Juan",
        "Asunto: Re: folio",
        "Subject: hi",
        "El lun, 3 nov 2026 a las 10:15, Juan <j@x.mx> escribió:",
        "El lun, 3 nov 2026 a las 10:15, Juan <",
        "j@x.mx> escribió:",
        "On Mon, Nov 3, 2026 at 10:15 AM Juan <j@x.mx> wrote:",
        "wrote:",
        "Enviado desde mi iPhone",
        "Sent from my iPhone",
    ]
)


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    result = strip_quoted(text)
    assert isinstance(result, str)
    assert (result == "") == (text.strip() == "")


@settings(max_examples=300)
@given(st.lists(REPLY_LINES | st.text(max_size=40), max_size=40), st.sampled_from(["\n", "\r\n"]))
def test_reply_shaped_text_keeps_only_input_lines(lines: list[str], newline: str) -> None:
    text = newline.join(lines)
    result = strip_quoted(text)
    assert (result == "") == (text.strip() == "")
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    for line in result.split("\n"):
        assert line in normalized


SIGNATURE = "Ana Técnica\nSoporte técnico | Internet Plarey\nTel. 800 123 4567 ext. 214"


@pytest.mark.parametrize(
    ("text", "earlier", "expected"),
    [
        pytest.param(
            f"Se cambió el módem.\n\n{SIGNATURE}",
            f"Mañana pasamos.\n\n{SIGNATURE}\n",
            SIGNATURE,
            id="an-outlook-signature",
        ),
        pytest.param(
            f"#resolver procedente\n\n{SIGNATURE}",
            f"Mañana pasamos.\n\n{SIGNATURE}",
            SIGNATURE,
            id="all-the-words-but-a-command",
        ),
        pytest.param(
            "Se cambió el módem.\nQuedó funcionando.",
            "Hola.\nSe cambió el módem.\nQuedó funcionando.",
            "",
            id="an-answer-sent-again-is-no-signature",
        ),
        pytest.param("Revisado.\n\nSaludos.", "Listo.\n\nSaludos.", "", id="one-line-is-not-one"),
        pytest.param(f"Hola.\n\n{SIGNATURE}", SIGNATURE, "", id="earlier-has-no-words-of-its-own"),
        pytest.param(
            "Hola.\n\n#cerrar\nSaludos.", "Adiós.\n\n#cerrar\nSaludos.", "", id="no-command"
        ),
    ],
)
def test_a_signature_is_what_two_messages_of_one_writer_end_with(
    text: str, earlier: str, expected: str
) -> None:
    assert shared_signature(text, earlier) == expected


def test_without_known_signature_cuts_it_whole_or_not_at_all() -> None:
    assert without_known_signature(f"Listo.\n\n{SIGNATURE}\n", SIGNATURE) == "Listo."
    assert without_known_signature(f"  {SIGNATURE}  ", SIGNATURE) == ""
    assert without_known_signature("Listo.\nTel. 800 123 4567 ext. 214", SIGNATURE).startswith(
        "Listo."
    )
    assert without_known_signature("Listo.", "") == "Listo."


def test_customer_text_keeps_a_forward_whole_and_cuts_a_reply() -> None:
    forward = "Les reenvío esto.\n\n---------- Forwarded message ---------\nDe: a@b.mx\n\nSin luz."
    assert customer_text(forward, "Nadie contesta") == forward
    outlook = "Mírenlo.\n\nDe: Pedro <p@b.mx>\nEnviado: lunes\nPara: yo\nAsunto: x\n\nSin luz.\n"
    assert customer_text(outlook, "RV: x") == outlook.strip()
    assert customer_text(outlook, "ENC: x") == outlook.strip()
    # Not forwards: an answer to a forward quotes it; a reply's quote starts at its attribution.
    assert customer_text(outlook, "Re: Fwd: x") == "Mírenlo."
    reply = "Sigo igual.\n\nEl jue, 26 nov 2026 a las 10:00, Soporte escribió:\n> Recibimos"
    assert customer_text(reply, "Re: [Folio PLR-2026-000001] x") == "Sigo igual."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Ábranle caso.\n\n---------- Forwarded message ---------\n"
            "De: Rosa Díaz <Rosa.Diaz@hotmail.com>\nSubject: x\n\nSin internet.",
            ("Rosa Díaz", "rosa.diaz@hotmail.com"),
        ),
        (  # older Outlook
            "Mira\n\n________________________________\nFrom: Rosa Díaz [mailto:rosa@x.mx]\n"
            "Sent: lunes\nTo: a\nSubject: b\n\nhola",
            ("Rosa Díaz", "rosa@x.mx"),
        ),
        ("Begin forwarded message:\n\nFrom: rosa@x.mx\nDate: x\n\nhola", ("", "rosa@x.mx")),
        # Outlook within an organisation writes a name only; a reply is no forward.
        ("Mira\n\nDe: Rosa Díaz\nEnviado: lunes\nPara: a\nAsunto: b\n\nhola", None),
        ("hola\n\nEl jue, 26 nov 2026 a las 10:00, Rosa <r@x.mx> escribió:\n> x", None),
        ("Sin reenvío alguno.", None),
    ],
)
def test_forwarded_sender_is_the_from_line_of_the_forward(
    text: str, expected: tuple[str, str] | None
) -> None:
    assert forwarded_sender(text) == expected
