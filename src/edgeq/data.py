"""Records from data files: .txt (one a line), .jsonl (one JSON object a line) or .csv (a header row), each
with the line (or row) it came from, so that every complaint about the data can name the place."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgeq.data_source import DataSource
from edgeq.errors import DataError


def read_text_file(path: Path, key: str) -> str:
    """The file's text; a file that is not UTF-8 is refused naming the line of the first bad byte."""
    if not path.is_file():
        raise DataError(f"{key}: file '{path}' not found", "Check the path; it is relative to the recipe file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{key}: '{path}' line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x})", "Save the file as UTF-8"
        ) from None


def read_records(source: DataSource, key: str) -> list[tuple[int, dict]]:
    """(line or row number, record) for every non-empty entry: a .txt line becomes {"text": line}."""
    path = Path(source.path)
    text = read_text_file(path, key)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _jsonl(text, path, key)
    elif suffix == ".csv":
        records = _csv(text, path, source, key)
    else:
        records = [(n, {"text": line.strip()}) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not records:
        raise DataError(f"{key}: file '{path}' has no texts", "Put one text a line (.txt) or fill the named field")
    return records


def field_of(record: dict, name: str, number: int, path: Path, key: str):
    """record[name], or a DataError naming the line and the field."""
    if name not in record or record[name] is None or record[name] == "":
        raise DataError(f"{key}: '{path}' line {number} has no field '{name}'", "Every record needs it")
    return record[name]


def load_texts(source: DataSource, limit: int | None = None, key: str = "data") -> list[str]:
    """The first `limit` texts of `source` (the `field` of each record, or each line of a .txt)."""
    name = source.field or "text"
    texts = [str(field_of(r, name, n, Path(source.path), key)).strip() for n, r in read_records(source, key)]
    return texts[:limit] if limit else texts


def _jsonl(text: str, path: Path, key: str) -> list[tuple[int, dict]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{key}: '{path}' line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{key}: '{path}' line {number} is not a JSON object", "Write one {...} object a line")
        records.append((number, record))
    return records


def _csv(text: str, path: Path, source: DataSource, key: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    for wanted in source.fields():
        if wanted not in columns:
            raise DataError(
                f"{key}: '{path}' has no column '{wanted}'", f"Columns: {', '.join(columns) or 'none (empty file)'}"
            )
    return [(number, row) for number, row in enumerate(reader, start=2) if any((v or "").strip() for v in row.values())]
