"""Reading CSV and Parquet tables into the columns the detectors take (I/O lives here, not in
``detectors/``).

Each column comes back as a numpy array plus a null mask: numeric columns as float64 (nulls
filled with NaN and flagged in the mask, so they count as *missing*, not as NaN), booleans as
bool, everything else as strings. In CSV files an empty cell (and Arrow's usual null markers:
``NA``, ``NULL``, ``NaN``, …) is missing.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
>>> _ = p.write_text("a,b\\n1.5,x\\n,y\\n")
>>> t = read_table(p)
>>> t.n_rows, t.columns["a"].tolist(), t.missing["a"].tolist(), t.columns["b"].tolist()
(2, [1.5, nan], [False, True], ['x', 'y'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from driftwarden.errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class Table:
    """Columns of one file: ``columns[name]`` (numpy), ``missing[name]`` (bool mask)."""

    columns: dict[str, np.ndarray]
    missing: dict[str, np.ndarray]
    n_rows: int

    def select(self, names: list[str]) -> Table:
        return Table({n: self.columns[n] for n in names}, {n: self.missing[n] for n in names},
                     self.n_rows)


def _read_arrow(path: Path) -> pa.Table:
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if path.is_dir():
        raise InputError(f"not a file: {path}")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pq.read_table(path)
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, UnicodeDecodeError) as exc:
        kind = "Parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "CSV"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {path} as {kind}: {reason}") from None


def _column(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    missing = col.is_null().to_numpy(zero_copy_only=False).astype(bool)
    t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = col.cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64), missing
    if pa.types.is_boolean(t):
        return col.fill_null(False).to_numpy(zero_copy_only=False).astype(bool), missing
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.string())
    values = col.fill_null("").to_numpy(zero_copy_only=False).astype(str)
    return values, missing


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV, Parquet or JSON Lines file (``.jsonl`` / ``.ndjson``) as dicts (nulls
    as None); one readable :class:`~driftwarden.errors.InputError` when that fails.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.jsonl"
    >>> _ = p.write_text('{"a": 1, "b": "x"}\\n\\n{"a": 2}\\n')
    >>> read_rows(p)
    [{'a': 1, 'b': 'x'}, {'a': 2}]
    """
    p = Path(path)
    if p.suffix.lower() not in JSONL_SUFFIXES:
        try:
            return _read_arrow(p).to_pylist()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
            raise InputError(f"cannot read {p}: {exc}") from None
    if not p.is_file():
        raise InputError(f"file not found: {p}" if not p.exists() else f"not a file: {p}")
    rows = []
    with p.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{p}, line {n}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{p}, line {n}: a JSON object per line is expected")
            rows.append(row)
    return rows


def read_table(path: str | Path) -> Table:
    """Read a CSV or Parquet file (by suffix: ``.parquet`` / ``.pq``, else CSV).

    Raises :class:`~driftwarden.errors.InputError` with one readable line when the file is
    missing, unreadable or not a table.
    """
    p = Path(path)
    try:
        table = _read_arrow(p)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types; report, don't crash
        raise InputError(f"cannot read {p}: {exc}") from None
    columns: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for name in table.column_names:
        try:
            columns[name], missing[name] = _column(table.column(name))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"cannot use column {name!r} of {p}: {exc}") from None
    return Table(columns, missing, table.num_rows)


def coerce_numeric(values: np.ndarray) -> np.ndarray:
    """A string column forced to numeric: parsable strings become floats, the others stay as
    strings (and are counted as invalid by the summaries).

    >>> coerce_numeric(np.array(["1.5", "x", "3"])).tolist()
    [1.5, 'x', 3.0]
    """
    if values.dtype.kind in "fiu":
        return values
    out: list[Any] = []
    for v in values.tolist():
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(v)
    return np.asarray(out, dtype=object)
