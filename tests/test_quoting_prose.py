"""strip_quoted: prose that reads like an attribution stays; client attributions go."""

from __future__ import annotations

import pytest

from mailcase.quoting import strip_quoted

# The reviewer's report: a date, "el técnico me escribió:" and then the complaint.
TECHNICIAN_ES = (
    "Buenas tardes.\n"
    "El 20 de noviembre el técnico me escribió:\n"
    '"su módem está dañado…"\n'
    "Pero el módem lo instalaron hace 2 semanas, no acepto ese cobro.\n"
    "Contrato 55321."
)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(TECHNICIAN_ES, id="es-technician-wrote"),
        pytest.param(
            "Hola.\n"
            "El 3 de noviembre su asesora me escribió:\n"
            "que me bonificarían el mes, pero el recibo 2026-11 trae el cargo completo.\n"
            "Folio RN-2026-000123.",
            id="es-adviser-wrote",
        ),
        pytest.param(
            "Buenas noches.\n"
            "El día 5 mi vecino también les escribió:\n"
            "él tampoco tiene servicio desde el sábado.\n"
            "Somos 4 casas en la misma calle.",
            id="es-neighbour-wrote",
        ),
        pytest.param(
            "Buen día\n\nEl 2 de diciembre les escribí y nadie contestó. Mi hijo también les"
            "\nescribió:\nsigue sin internet la casa de Reforma 120.",
            id="es-wrapped-sentence",
        ),
        pytest.param(
            "Hi,\n"
            "On November 20 your technician wrote:\n"
            '"your modem is broken".\n'
            "The modem was installed 2 weeks ago, I will not pay that fee.\n"
            "Account 55321.",
            id="en-technician-wrote",
        ),
        pytest.param(
            "Hello,\n"
            "On 3 occasions your billing team wrote:\n"
            "we will credit the month. Nothing happened.\n"
            "Please call me.",
            id="en-billing-wrote",
        ),
    ],
)
def test_keeps_prose_that_reads_like_an_attribution(text: str) -> None:
    assert strip_quoted(text) == text


def test_keeps_the_text_after_a_quote_inside_prose() -> None:
    # The customer quotes with ">" and goes on writing: the quoted line goes,
    # the sentence that introduces it and what follows it stay. (Alpine writes
    # this shape too, but nothing proves a client wrote it while text follows.)
    text = "On Nov 20 your agent wrote:\n> we will credit you\nBut the credit never came, 2 months."
    assert strip_quoted(text) == "On Nov 20 your agent wrote:\nBut the credit never came, 2 months."


# (attribution as the client writes it, quoted history below it)
CLIENT_ATTRIBUTIONS = [
    pytest.param(
        "El mié, 25 nov 2026 a las 10:12, Juan Pérez (<juan@example.com>) escribió:",
        id="gmail-es",
    ),
    pytest.param(
        "On Wed, Nov 25, 2026 at 10:12\u202fAM Juan <juan@example.com> wrote:",
        id="gmail-en",
    ),
    pytest.param(
        "El mié, 25 nov 2026 a las 10:12, Soporte Técnico Red Norte Hermosillo <\n"
        "soporte.tecnico@rednorte.com.mx> escribió:",
        id="gmail-es-wrapped",
    ),
    pytest.param(
        "On Wed, Nov 25, 2026 at 10:12 AM Juan Pérez Hernández de la Torre y\n"
        "Asociados <\n"
        "juan@example.com> wrote:",
        id="gmail-en-wrapped-three-lines",
    ),
    pytest.param(
        "El 25 nov 2026, a las 10:12, Juan Pérez <juan@example.com> escribió:",
        id="apple-mail-es",
    ),
    pytest.param(
        "On Nov 25, 2026, at 10:12 AM, Juan Pérez <juan@example.com> wrote:",
        id="apple-mail-en",
    ),
    pytest.param("El 25/11/26 a las 10:12, Juan escribió:", id="thunderbird-es"),
    pytest.param("On 11/25/26 10:12 AM, Juan wrote:", id="thunderbird-en"),
    pytest.param(
        "On Wed, Nov 25, 2026 at 10:12 AM, Juan Pérez <juan@example.com> wrote:",
        id="outlook-mobile-en",
    ),
    pytest.param(
        "El mié, 25 nov 2026 a las 10:12, Juan Pérez <juan@example.com> escribió:",
        id="outlook-mobile-es",
    ),
    pytest.param(
        "On Wednesday, November 25, 2026, 10:12:33 AM CST, Juan Pérez <juan@example.com> wrote:",
        id="yahoo-en",
    ),
    # Neither address nor time: recognised because only ">" lines follow it.
    pytest.param("On Wed, 25 Nov 2026, Juan Perez wrote:", id="alpine-en"),
]


@pytest.mark.parametrize("attribution", CLIENT_ATTRIBUTIONS)
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_cuts_client_attributions(attribution: str, newline: str) -> None:
    text = newline.join(
        [
            "Sigue sin servicio, contrato 55321.",
            "",
            *attribution.split("\n"),
            "",
            "> Buenas tardes, ¿ya reinició el módem?",
            "> Saludos.",
            "",
        ]
    )
    assert strip_quoted(text) == "Sigue sin servicio, contrato 55321."


def test_cuts_outlook_mobile_header_block_in_spanish() -> None:
    text = (
        "Ok, los espero el martes.\n"
        "\n"
        "Obtener Outlook para Android<https://aka.ms/AAb9ysg>\n"
        "________________________________\n"
        "De: Soporte Red Norte <soporte@rednorte.mx>\n"
        "Enviado: miércoles, 25 de noviembre de 2026 10:12:00 a. m.\n"
        "Para: Juan Pérez <juan@example.com>\n"
        "Asunto: Visita técnica\n"
        "\n"
        "El técnico irá el martes.\n"
    )
    assert strip_quoted(text) == "Ok, los espero el martes."


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(TECHNICIAN_ES, id="prose"),
        pytest.param("Hola\nOn Wed, 25 Nov 2026, Juan wrote:\n-- \nJuan", id="before-signature"),
        pytest.param("Hola\nOn Wed, 25 Nov 2026, Juan wrote:\n> a\nb\n> c", id="quote-then-text"),
    ],
)
def test_kept_attribution_is_stable_when_stripped_again(text: str) -> None:
    once = strip_quoted(text)
    assert strip_quoted(once) == once
