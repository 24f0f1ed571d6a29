"""Saying once that an Azure-only argument is not used."""

from __future__ import annotations

import sys

_SAID: set[str] = set()


def not_used(what: str, why: str) -> None:
    if what not in _SAID:
        _SAID.add(what)
        print(f"tfsubmit.azureml: {what} not used: {why}", file=sys.stderr)
