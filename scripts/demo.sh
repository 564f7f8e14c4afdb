#!/usr/bin/env bash
# Quick start: set up, then run mailcase once against a throw-away local
# Dovecot and SMTP sink loaded with sample Spanish customer mail.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
