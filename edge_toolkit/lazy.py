"""Resolving "module:attribute" references: how tables of plain data (variants, families,
commands) name code in heavy modules without importing them until it is used."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(ref: str) -> Any:
    """The object `ref` ("package.module:attribute") names; ValueError for a malformed one."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    return getattr(importlib.import_module(module), attr)
