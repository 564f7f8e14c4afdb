"""A parser child (mailcase.parsing) that dies on any message with an X-Crash-Parser header.

tests/test_parsing.py starts it in place of ``python -m mailcase.parsing``: no real mail
crashes the parser on demand, and a child that dies mid-message is what must not lose mail.
"""

from __future__ import annotations

import os

from mailcase import parsing
from mailcase.inbound import InboundMail

_real_parse = parsing.ParseOptions.parse


def _parse(self: parsing.ParseOptions, raw: bytes) -> InboundMail:
    if b"\nX-Crash-Parser:" in raw:
        os._exit(3)
    return _real_parse(self, raw)


parsing.ParseOptions.parse = _parse  # type: ignore[method-assign]
parsing.main()
