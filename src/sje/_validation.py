"""Shared validation helpers: key normalisation, nearest-key hints, readable pydantic errors."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def kebab(name: str) -> str:
    return name.replace("_", "-")


def normalize_keys(
    data: Mapping[str, Any], allowed: Iterable[str], where: str, exc: type[Exception]
) -> dict[str, Any]:
    """Map kebab- or snake-case keys to field names; an unknown key raises ``exc`` with a hint."""
    allowed_set = set(allowed)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in allowed_set:
            raise exc(f"{where}: unknown key '{raw_key}'{nearest_hint(key, allowed_set)}")
        out[key] = value
    return out


def nearest_hint(key: str, allowed: Iterable[str]) -> str:
    options = sorted(allowed)
    close = difflib.get_close_matches(key.replace("-", "_"), options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{kebab(close[0])}'?"
    return "; valid keys: " + ", ".join(kebab(o) for o in options)


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or a string like ``250ms``, ``30s``, ``5m``, ``2h``."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return None if value is None else float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError("expected seconds as a number or a string like '30s', '5m', '2h', '250ms'")


#: keys whose values never appear in messages
SECRET_KEYS = frozenset({"token", "secret"})


def describe_validation_error(err: ValidationError, where: str) -> str:
    """One line naming the key path, the bad value and what is allowed."""
    first = err.errors()[0]
    path = ".".join(kebab(str(p)) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    secret = any(str(p) in SECRET_KEYS for p in first["loc"])
    shown = "" if secret or isinstance(value, (dict, list)) else f" (got {value!r})"
    more = len(err.errors()) - 1
    tail = f"; and {more} more problem(s)" if more else ""
    return f"{where}: '{path}': {msg}{shown}{tail}"


def json_problem(value: Any, path: str = "", depth: int = 0) -> str | None:
    """Where ``value`` stops being plain JSON, as ``path: reason``; None when it is JSON."""
    where = path or "value"
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: {value!r} is not valid JSON"
    if depth > 64:
        return f"{where}: nested deeper than 64 levels"
    if isinstance(value, (list, tuple)):
        items: Iterable[tuple[str, Any]] = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    elif isinstance(value, dict):
        bad = next((k for k in value if not isinstance(k, str)), None)
        if bad is not None:
            return f"{where}: key {bad!r} is not a string"
        items = ((f"{path}.{k}" if path else k, v) for k, v in value.items())
    else:
        kind = type(value).__name__
        return f"{where}: {kind} is not JSON (use str, int, float, bool, None, list or dict)"
    for sub_path, item in items:
        problem = json_problem(item, sub_path, depth + 1)
        if problem:
            return problem
    return None
