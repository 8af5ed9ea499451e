"""Wording shared by the error messages of the public routes."""

from __future__ import annotations

# Characters of a rejected value that an error message quotes.
SHOWN_VALUE_LENGTH = 20


def shown_value(text: str | None, length: int = SHOWN_VALUE_LENGTH) -> str:
    """Quote `text` for an error message, cut to `length` characters.

    A cut value is marked with "..." and its full length, as in
    `'aaaaaaaaaaaaaaaaaaaa'... (250 characters)`.
    """
    if text is None:
        return "no value"
    if len(text) <= length:
        return repr(text)
    return f"{text[:length]!r}... ({len(text)} characters)"


def invalid_parameter_message(
    name: str, value: str | None, valid: str, problem: str = "is invalid"
) -> str:
    """Return "Parameter NAME PROBLEM: got VALUE. Use VALID.", the form of every 400."""
    return f"Parameter {name} {problem}: got {shown_value(value)}. Use {valid}."
