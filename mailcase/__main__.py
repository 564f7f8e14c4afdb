"""``python -m mailcase`` runs the command-line interface."""

from mailcase.cli import entry

entry()
