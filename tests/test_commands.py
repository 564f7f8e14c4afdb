"""commands: the ``#`` block at the top of an agent's reply, in Spanish and English."""

from __future__ import annotations

from datetime import date, time
from typing import Literal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailcase.commands import (
    COMMAND_FORMS,
    PROBLEM_CODES,
    Command,
    CommandKind,
    CommandProblem,
    ParsedCommands,
    command_kind,
    line_start,
    parse_commands,
)


def only_command(text: str) -> Command:
    parsed = parse_commands(text)
    assert parsed.problems == ()
    assert len(parsed.commands) == 1
    return parsed.commands[0]


def only_problem(text: str) -> str:
    parsed = parse_commands(text)
    assert parsed.commands == ()
    assert len(parsed.problems) == 1
    assert parsed.problems[0].line == text.strip()
    return parsed.problems[0].problem


# --- each form, both languages ---------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("#nota", CommandKind.NOTE),
        ("#note", CommandKind.NOTE),
        ("#cerrar", CommandKind.CLOSE),
        ("#close", CommandKind.CLOSE),
        ("#reabrir", CommandKind.REOPEN),
        ("#reopen", CommandKind.REOPEN),
    ],
)
def test_commands_without_arguments(line: str, kind: CommandKind) -> None:
    assert only_command(line) == Command(kind, line=line)


@pytest.mark.parametrize(
    ("line", "outcome"),
    [
        ("#resolver procedente", "valid"),
        ("#resolver improcedente", "invalid"),
        ("#resolve valid", "valid"),
        ("#resolve invalid", "invalid"),
        # Either vocabulary is accepted after either name.
        ("#resolve procedente", "valid"),
        ("#resolve improcedente", "invalid"),
        ("#resolver valid", "valid"),
        ("#resolver invalid", "invalid"),
    ],
)
def test_resolve_in_both_languages(line: str, outcome: Literal["valid", "invalid"]) -> None:
    assert only_command(line) == Command(CommandKind.RESOLVE, outcome=outcome, line=line)


@pytest.mark.parametrize("name", ["#visita", "#visit"])
def test_visit_with_and_without_time(name: str) -> None:
    with_time = only_command(f"{name} 2026-12-03 10:30")
    assert with_time.kind is CommandKind.VISIT
    assert with_time.visit_date == date(2026, 12, 3)
    assert with_time.visit_time == time(10, 30)
    without = only_command(f"{name} 2026-12-03")
    assert without.visit_date == date(2026, 12, 3)
    assert without.visit_time is None


def test_visit_accepts_single_digit_month_day_and_hour() -> None:
    command = only_command("#visita 2026-1-5 9:05")
    assert command.visit_date == date(2026, 1, 5)
    assert command.visit_time == time(9, 5)


def test_visit_in_the_last_minute_of_a_leap_day() -> None:
    command = only_command("#visit 2028-02-29 23:59")
    assert command.visit_date == date(2028, 2, 29)
    assert command.visit_time == time(23, 59)


@pytest.mark.parametrize("name", ["#area", "#route"])
def test_route_in_both_languages(name: str) -> None:
    command = only_command(f"{name} soporte-tecnico")
    assert command == Command(
        CommandKind.ROUTE, area="soporte-tecnico", line=f"{name} soporte-tecnico"
    )


def test_area_names_are_lower_cased_and_unaccented() -> None:
    assert only_command("#area Soporte_Técnico2").area == "soporte_tecnico2"


# --- case and accents ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("#Resolver Procedente", CommandKind.RESOLVE),
        ("#RESOLVE VALID", CommandKind.RESOLVE),
        ("#resolver IMPROCEDENTE", CommandKind.RESOLVE),
        ("#área soporte-tecnico", CommandKind.ROUTE),
        ("#ÁREA soporte-tecnico", CommandKind.ROUTE),
        ("#Nota", CommandKind.NOTE),
        ("#NOTE", CommandKind.NOTE),
        ("#Cerrar", CommandKind.CLOSE),
        ("#REABRIR", CommandKind.REOPEN),
        ("#Visita 2026-12-03", CommandKind.VISIT),
        ("#VISIT 2026-12-03", CommandKind.VISIT),
        ("#nóta", CommandKind.NOTE),
        ("#resolver procedénte", CommandKind.RESOLVE),
    ],
)
def test_names_and_arguments_ignore_case_and_accents(line: str, kind: CommandKind) -> None:
    command = only_command(line)
    assert command.kind is kind
    assert command.line == line


def test_area_with_accent_in_a_decomposed_form_is_the_same_command() -> None:
    # macOS and some Android keyboards send "a" + COMBINING ACUTE ACCENT.
    assert only_command("#a\u0301rea redes").area == "redes"


def test_a_colon_after_the_name_is_accepted() -> None:
    assert only_command("#nota:").kind is CommandKind.NOTE
    assert only_command("#visita: 2026-12-03").visit_date == date(2026, 12, 3)


def test_outcome_keeps_its_meaning_whatever_the_case() -> None:
    assert only_command("#Resolver Procedente").outcome == "valid"
    assert only_command("#RESOLVE INVALID").outcome == "invalid"


# --- problems --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("#ntoa", "unknown"),
        ("#1 en mi lista", "unknown"),
        ("#", "unknown"),
        ("# nota", "unknown"),  # the name must follow the "#"
        ("#ruta soporte", "unknown"),
        ("#resolver", "missing_outcome"),
        ("#resolve", "missing_outcome"),
        ("#resolver quizá", "bad_outcome"),
        ("#resolve upheld", "bad_outcome"),
        ("#resolver no procedente", "bad_outcome"),
        ("#resolver procedente ya quedó", "unexpected_argument"),
        ("#visita", "bad_date"),
        ("#visit", "bad_date"),
        ("#visita mañana", "bad_date"),
        ("#visita 03/12/2026", "bad_date"),
        ("#visita 2026-02-30", "bad_date"),
        ("#visita 2026-13-01", "bad_date"),
        ("#visita 2027-02-29", "bad_date"),  # not a leap year
        ("#visita 26-12-03", "bad_date"),
        ("#visita ２０２６-12-03", "bad_date"),  # full-width digits
        ("#visita 2026-12-03 25:00", "bad_time"),
        ("#visita 2026-12-03 24:00", "bad_time"),
        ("#visita 2026-12-03 10:60", "bad_time"),
        ("#visita 2026-12-03 10", "bad_time"),
        ("#visita 2026-12-03 10.30", "bad_time"),
        ("#visita 2026-12-03 10:30am", "bad_time"),
        ("#visita 2026-12-03 10:30 am", "bad_time"),  # the time is not 24-hour
        ("#visita 2026-12-03 10:30 en punto", "unexpected_argument"),
        ("#area", "missing_area"),
        ("#route", "missing_area"),
        ("#area soporte tecnico", "bad_area"),  # a space in the name
        ("#area soporte/redes", "bad_area"),
        ("#route <script>", "bad_area"),
        ("#nota llamé al cliente", "unexpected_argument"),
        ("#note called the customer", "unexpected_argument"),
        ("#cerrar ya", "unexpected_argument"),
        ("#close now", "unexpected_argument"),
        ("#reabrir por favor", "unexpected_argument"),
        ("#reopen please", "unexpected_argument"),
        ("#participante", "missing_address"),
        ("#participante juan", "bad_address"),
        ("#participant a@b.mx c@d.mx", "bad_address"),
    ],
)
def test_malformed_lines_are_problems_not_commands(line: str, problem: str) -> None:
    assert problem in PROBLEM_CODES
    assert only_problem(line) == problem


def test_every_problem_code_can_occur() -> None:
    lines = [
        "#foo",
        "#resolver",
        "#resolver tal-vez",
        "#visita ayer",
        "#visita 2026-12-03 99:99",
        "#area",
        "#area a/b",
        "#cerrar ya",
        "#participante",
        "#participante juan",
        "#fusionar",
        "#tipo",
        "#tipo reclamo",
        "#asignar",
        "#asignar ana",
        "#pendiente mañana",
        "#respuesta",
        "#respuesta reinicio modem",
        "Texto.",
        "#nota",
    ]
    parsed = parse_commands("\n".join(lines))
    assert [p.problem for p in parsed.problems] == list(PROBLEM_CODES)


def test_good_and_bad_commands_are_separated_in_order() -> None:
    parsed = parse_commands("#nota\n#foo\n#cerrar\n#resolver talvez\nTexto")
    assert [c.kind for c in parsed.commands] == [CommandKind.NOTE, CommandKind.CLOSE]
    assert parsed.problems == (
        CommandProblem("#foo", "unknown"),
        CommandProblem("#resolver talvez", "bad_outcome"),
    )
    assert parsed.text == "Texto"


# --- the block and the text ------------------------------------------------------


def test_text_after_the_block_keeps_its_lines_and_inner_blank_lines() -> None:
    message = (
        "#resolver procedente\n"
        "#area redes\n"
        "\n"
        "\n"
        "Buenas tardes, don Juan:\n"
        "\n"
        "Cambiamos el conector de su antena.\n"
        "#2 de la lista: revisado\n"
    )
    parsed = parse_commands(message)
    assert [c.kind for c in parsed.commands] == [CommandKind.RESOLVE, CommandKind.ROUTE]
    assert parsed.text == (
        "Buenas tardes, don Juan:\n\n"
        "Cambiamos el conector de su antena.\n"
        "#2 de la lista: revisado\n"
    )


def test_leading_blank_lines_and_blank_lines_between_commands_are_skipped() -> None:
    parsed = parse_commands("\n  \n#nota\n\n\t\n#cerrar\n\nListo.")
    assert [c.kind for c in parsed.commands] == [CommandKind.NOTE, CommandKind.CLOSE]
    assert parsed.text == "Listo."


def test_indented_command_lines_and_crlf_are_accepted() -> None:
    parsed = parse_commands("  #nota\r\n#visita 2026-12-03 10:30\r\nTexto\r\n")
    assert [c.kind for c in parsed.commands] == [CommandKind.NOTE, CommandKind.VISIT]
    assert parsed.commands[1].visit_time == time(10, 30)
    assert parsed.commands[0].line == "#nota"
    assert parsed.text == "Texto\r\n"


def test_a_command_line_in_the_middle_of_the_text_runs_nothing_and_is_a_problem() -> None:
    # Relayed as text, "#nota" and the note under it would reach the customer.
    message = "Buenas tardes:\n#cerrar\n#resolver procedente\nSaludos"
    parsed = parse_commands(message)
    assert parsed == ParsedCommands(
        commands=(),
        problems=(
            CommandProblem("#cerrar", "misplaced_command"),
            CommandProblem("#resolver procedente", "misplaced_command"),
        ),
        text=message,
    )


def test_a_hash_line_in_the_text_that_is_no_command_is_text() -> None:
    message = "Buenas tardes:\n#1 en la lista de espera\n#SomosPLR"
    assert parse_commands(message) == ParsedCommands((), (), message)


def test_the_first_text_line_ends_the_block_even_before_more_hash_lines() -> None:
    parsed = parse_commands("#nota\nRevisado en sitio.\n#cerrar")
    assert [c.kind for c in parsed.commands] == [CommandKind.NOTE]
    assert parsed.text == "Revisado en sitio.\n#cerrar"
    assert parsed.problems == (CommandProblem("#cerrar", "misplaced_command"),)


def test_a_message_without_commands_is_all_text() -> None:
    assert parse_commands("Hola\nmundo") == ParsedCommands((), (), "Hola\nmundo")
    assert parse_commands("") == ParsedCommands((), (), "")
    assert parse_commands("\n\nHola") == ParsedCommands((), (), "Hola")


def test_a_message_of_only_commands_has_no_text() -> None:
    parsed = parse_commands("#cerrar\n\n")
    assert parsed.commands == (Command(CommandKind.CLOSE, line="#cerrar"),)
    assert parsed.text == ""


def test_command_forms_name_every_kind_in_both_languages() -> None:
    joined = " ".join(COMMAND_FORMS)
    for spanish, english in [
        ("#nota", "#note"),
        ("#resolver", "#resolve"),
        ("#visita", "#visit"),
        ("#area", "#route"),
        ("#cerrar", "#close"),
        ("#reabrir", "#reopen"),
    ]:
        assert spanish in joined
        assert english in joined
    assert len(COMMAND_FORMS) == len(CommandKind)


# --- properties ------------------------------------------------------------------

lines_of_text = st.lists(
    st.one_of(
        st.sampled_from(
            ["", "  ", "#nota", "#cerrar ya", "#visita 2026-12-03 10:30", "#área x", "#", "Hola"]
        ),
        st.text(),
    ),
    max_size=8,
).map("\n".join)


@given(st.one_of(st.text(), lines_of_text))
@example("\u2028#nota\x85\n\r")
@example("#visita 9999-12-31 23:59")
@example("#visita 0000-01-01")
@example("\ufeff#nota\nHola\n\u200b#cerrar\n#1")
def test_parse_never_raises_and_text_is_a_suffix_of_the_lines(text: str) -> None:
    parsed = parse_commands(text)
    lines = text.split("\n")
    suffixes = {"\n".join(lines[k:]) for k in range(len(lines) + 1)}
    assert parsed.text in suffixes
    # The text never starts with a blank line or a "#" line: those are the block's.
    if parsed.text:
        first = line_start(parsed.text.split("\n", 1)[0])
        assert first
        assert not first.startswith("#")
    # Every "#" line of the block is accounted for exactly once, and below it
    # only lines that name a command are, as misplaced.
    text_lines = parsed.text.split("\n") if parsed.text else []
    block = lines[: len(lines) - len(text_lines)]
    hash_lines = [line_start(line) for line in block if line_start(line).startswith("#")]
    in_block = [p for p in parsed.problems if p.problem != "misplaced_command"]
    found = [c.line for c in parsed.commands] + [p.line for p in in_block]
    assert sorted(found) == sorted(hash_lines)
    misplaced = [p.line for p in parsed.problems if p.problem == "misplaced_command"]
    assert parsed.problems[len(in_block) :] == tuple(
        CommandProblem(line, "misplaced_command") for line in misplaced
    )
    for line in misplaced:
        assert line in map(line_start, text_lines[1:])
        assert command_kind(line) is not None  # it names a command
    for problem in parsed.problems:
        assert problem.problem in PROBLEM_CODES
