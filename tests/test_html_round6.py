"""HTML turned into the text of a case, as a mail client shows it (sixth review round)."""

from __future__ import annotations

from email.message import EmailMessage

from mailcase.inbound import html_to_text, parse_inbound


def _html_only(html: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Rosa Díaz <rosa@example.com>"
    message["To"] = "contacto@internet-plarey.com.mx"
    message["Subject"] = "Sin servicio"
    message.set_content(html, subtype="html")
    return message.as_bytes()


def test_a_head_never_closed_loses_nothing_of_the_body() -> None:
    # Every word after <head> was dropped: the case had no text at all.
    html = (
        "<html><head><meta charset='utf-8'><title>Formulario</title><body>"
        "<p>Sin servicio desde el lunes, contrato 55321.</p></body></html>"
    )
    assert parse_inbound(_html_only(html)).text == "Sin servicio desde el lunes, contrato 55321."


def test_a_plain_text_beside_an_html_without_words_is_kept() -> None:
    # An HTML alternative holding only the photo took the customer's words' place.
    message = EmailMessage()
    message["From"] = "rosa@example.com"
    message["To"] = "contacto@internet-plarey.com.mx"
    message["Subject"] = "Foto"
    words = "Les envío la foto del módem. Sigo sin servicio."
    message.set_content(words)
    message.add_alternative("<html><body><img src='cid:foto1'></body></html>", subtype="html")
    assert parse_inbound(message.as_bytes()).text == words


def test_a_line_break_in_the_source_is_a_space() -> None:
    # Outlook wraps its HTML at a space: "&gt; 300 ms" began a line of the text,
    # read as quoted and cut, and a wrapped "#visita" refused an agent's note.
    html = (
        "<p class=MsoNormal>Se corta cada rato y el ping sube a\n&gt; 300 ms en las noches."
        "\nContrato 55321.</p><p>Gracias</p>"
    )
    assert html_to_text(html) == (
        "Se corta cada rato y el ping sube a > 300 ms en las noches. Contrato 55321.\n\nGracias"
    )


def test_preformatted_text_keeps_its_lines() -> None:
    assert html_to_text("<pre>linea 1\nlinea 2</pre>") == "linea 1\nlinea 2"


def test_table_cells_are_apart() -> None:
    html = (
        "<table><tr><th>Contrato</th><th>Teléfono</th></tr>"
        "<tr><td>55321</td><td>5512345678</td></tr></table>"
    )
    assert html_to_text(html).split("\n") == ["Contrato Teléfono", "", "55321 5512345678"]


def test_a_links_address_follows_its_words() -> None:
    url = "https://drive.google.com/file/d/1AbCdEf/view"
    html = (
        f'<p>Comprobante: <a href="{url}">aquí</a>; sitio: '
        '<a href="https://www.plarey.mx/">www.plarey.mx</a>; '
        '<a href="mailto:rosa@example.com">escríbame</a>; '
        '<a href="https://tracker.example/x"><img src="cid:logo"></a></p>'
    )
    assert html_to_text(html) == (f"Comprobante: aquí ({url}); sitio: www.plarey.mx; escríbame;")


def test_a_hidden_preheader_is_not_the_customers_text() -> None:
    # A form template's preheader (display:none; mso-hide:all) led the case text.
    html = (
        '<div style="display:none;mso-hide:all">Tienes un nuevo mensaje de tu sitio web'
        "<div>anidado</div></div><p><b>Nombre:</b> Rosa Díaz</p>"
        "<p hidden>oculto</p><p>Sin servicio desde el lunes.</p>"
    )
    assert html_to_text(html) == "Nombre: Rosa Díaz\n\nSin servicio desde el lunes."


def test_a_hidden_element_never_closed_hides_nothing() -> None:
    # Dropped only at its end tag: unclosed, it would have hidden the rest of the mail.
    html = '<div style="display:none">vista previa<p>Sin servicio desde el lunes.</p>'
    assert "Sin servicio desde el lunes." in html_to_text(html)


def test_links_left_open_cost_linear_time() -> None:
    # Each </a> joined the words of every link still open: 1.3 MB of links closed only
    # at the end took 16 s, 2.5 MB almost two minutes (past the watchdog, a restart
    # loop on the same message). Links do not nest: a new <a> ends the one open.
    import time

    count = 32_000
    html = "".join(f'<a href="https://x.example/{i}">w ' for i in range(count)) + "</a>" * count
    started = time.perf_counter()
    text = html_to_text(html)
    assert time.perf_counter() - started < 5
    assert text.startswith("w (https://x.example/0) w (https://x.example/1)")


def test_a_short_answer_in_html_beats_a_placeholder() -> None:
    message = EmailMessage()
    message["From"] = "rosa@example.com"
    message["To"] = "contacto@internet-plarey.com.mx"
    message["Subject"] = "Re: visita"
    message.set_content("This is an HTML message. Please use an HTML capable mail program.")
    message.add_alternative("<p>Sí</p>", subtype="html")
    assert parse_inbound(message.as_bytes()).text == "Sí"


def test_plain_text_labelled_html_keeps_its_lines() -> None:
    # A hand-made PHP form sends its fields as text/html without a tag.
    form = "Nombre: Rosa Díaz\nContrato: 55321\nMensaje: Sin internet &amp; sin tele."
    assert (
        html_to_text(form)
        == "Nombre: Rosa Díaz\nContrato: 55321\nMensaje: Sin internet & sin tele."
    )


def test_words_xml_block_is_not_text() -> None:
    html = "<html><head><xml><o:PixelsPerInch>96</o:PixelsPerInch></xml></head><p>Hola</p>"
    assert html_to_text(html) == "Hola"
