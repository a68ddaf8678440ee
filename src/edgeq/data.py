"""Calibration and validation texts: .txt (one a line), .jsonl (a named field) or .csv (a named column)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from edgeq.errors import DataError
from edgeq.recipe.schema import DataSource


def load_texts(source: DataSource, limit: int | None = None, key: str = "data") -> list[str]:
    """The first `limit` non-empty texts of `source`. `key` names the recipe key in error messages."""
    path = Path(source.path)
    if not path.is_file():
        raise DataError(f"{key}: file '{path}' not found", "Check the path; it is relative to the recipe file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        texts = _jsonl_texts(path, source.field or "", key)
    elif suffix == ".csv":
        texts = _csv_texts(path, source.field or "", key)
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"{key}: file '{path}' has no texts", "Put one text a line (.txt) or fill the named field")
    return texts[:limit] if limit else texts


def _jsonl_texts(path: Path, field: str, key: str) -> list[str]:
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{key}: '{path}' line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or field not in record:
            raise DataError(f"{key}: '{path}' line {number} has no field '{field}'", "Set `field` to the text's key")
        texts.append(str(record[field]).strip())
    return texts


def _csv_texts(path: Path, column: str, key: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if column not in columns:
            raise DataError(
                f"{key}: '{path}' has no column '{column}'", f"Columns: {', '.join(columns) or 'none (empty file)'}"
            )
        return [(row.get(column) or "").strip() for row in reader]
