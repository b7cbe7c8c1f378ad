"""Reading JSON and JSON-lines data files into records, with every error naming the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class MalformedDataError(ValueError):
    """A data file does not hold what it should (bad JSON, a missing field); names file and line."""


def parse_json(text: str, origin: str | Path, line: int | None = None) -> Any:
    """``json.loads(text)``; invalid JSON raises :class:`MalformedDataError` naming ``origin`` and
    the line (``line`` when ``text`` is one line of the file, else where the error is)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedDataError(f"{origin}, line {line or err.lineno}: not valid JSON ({err.msg})") from None


def check_parses(path: Path, name: str, origin: str) -> None:
    """Raise :class:`MalformedDataError` (naming ``origin`` and the line) unless ``path``, a file
    to be called ``name``, parses as what its suffix says (JSON lines, JSON, or non-empty text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MalformedDataError(f"{origin}: not UTF-8 text ({err})") from None
    if name.endswith(".jsonl"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                parse_json(line, origin, lineno)
    elif name.endswith(".json"):
        parse_json(text, origin)
    elif not text.strip():
        raise MalformedDataError(f"{origin}, line 1: the file is empty")


def jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-empty line of a JSON-lines file."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = parse_json(line, path, lineno)
            if not isinstance(record, dict):
                raise MalformedDataError(f"{path}, line {lineno}: expected a JSON object")
            yield lineno, record


def json_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each object of a file holding one JSON array of objects."""
    text = path.read_text(encoding="utf-8")
    data = parse_json(text, path)
    if not isinstance(data, list):
        raise MalformedDataError(f"{path}, line 1: expected a JSON array of records")
    # find where each record starts, to name its line in errors
    decoder, out, pos, line, counted = json.JSONDecoder(), [], text.index("[") + 1, 1, 0
    for record in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if not isinstance(record, dict):
            raise MalformedDataError(f"{path}, line {line}: expected a JSON object")
        out.append((line, record))
        _, pos = decoder.raw_decode(text, pos)
    return out


def field(record: dict[str, Any], key: str, path: Path, line: int, kind: type | tuple[type, ...] = str) -> Any:
    """``record[key]``, which must exist and have type ``kind``; otherwise a MalformedDataError."""
    if key not in record:
        raise MalformedDataError(f"{path}, line {line}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise MalformedDataError(f"{path}, line {line}: field {key!r} is {type(value).__name__}, not {kind}")
    return value


def strings(record: dict[str, Any], key: str, path: Path, line: int) -> tuple[str, ...]:
    """``record[key]`` as a tuple of strings (it must be a list of strings)."""
    values = field(record, key, path, line, list)
    if not all(isinstance(v, str) for v in values):
        raise MalformedDataError(f"{path}, line {line}: field {key!r} must be a list of strings")
    return tuple(values)


def optional_strings(record: dict[str, Any], key: str, path: Path, line: int) -> tuple[str, ...]:
    """:func:`strings`, or ``()`` when the record has no ``key``."""
    return strings(record, key, path, line) if key in record else ()
