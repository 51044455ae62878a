"""Stdlib CSV/JSON writers for lists of flat records (no pandas)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return " ".join(str(_cell(v)) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def jsonable(value: Any) -> Any:
    """``value`` with numpy/torch scalars and arrays turned into Python numbers and lists, non-finite
    floats into ``None``, tuples into lists and mapping keys into strings (so ``json.dumps`` accepts it)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)


def write_rows_csv(
    rows: Iterable[Mapping[str, Any]], path: str | Path, fieldnames: Sequence[str] | None = None
) -> Path:
    """Write records to CSV; columns are ``fieldnames`` or the union of keys in first-seen order.

    Lists become space-separated strings; non-finite floats become empty cells. Returns the path.
    """
    rows = [dict(r) for r in rows]
    if fieldnames is None:
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        fieldnames = list(names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fieldnames), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(jsonable(v)) for k, v in r.items()})
    return path


def write_rows_json(rows: Any, path: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"meta": meta, "rows": rows}`` (or just ``rows`` without ``meta``) as indented JSON."""
    payload = jsonable(rows if meta is None else {"meta": dict(meta), "rows": rows})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False), encoding="utf-8")
    return path
