"""``python -m mailcase`` runs the command-line interface."""

from mailcase.cli import main

raise SystemExit(main())
