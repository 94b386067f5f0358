"""Readers shared by the task modules: a data file as text, and .csv / .tsv / .jsonl files as records.

Every problem with a user's file raises `UserError` with one line naming the file (and line, where there is
one), what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from masklm.errors import UserError
from masklm.utils import plural, utf16_or_32

csv.field_size_limit(2**31 - 1)  # long documents in one cell are fine; the default limit is 128 KiB

Record = dict[str, Any]


COMPRESSED_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
"""The first bytes of a compressed file, and its format."""


def read_text(path: Path) -> str:
    """The whole file as text (UTF-8, optional BOM), or a UserError that says why not."""
    if path.exists() and not path.is_dir() and not path.is_file():
        # a device or a pipe: /dev/zero would be read until memory runs out, a FIFO would wait for ever
        raise UserError(f"{path}: is not a regular file (a device or a pipe); give the path of a data file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a file; give the path of the data file") from None
    except OSError as e:
        raise UserError(
            f"{path}: cannot be read ({e.strerror}); check the path and its permissions"
        ) from None
    packed = next((name for magic, name in COMPRESSED_MAGIC if data.startswith(magic)), None)
    if packed is not None:
        raise UserError(f"{path}: is {packed}-compressed; decompress it first (it is read as plain text)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        wide = utf16_or_32(path, data[:4])
        if wide:
            raise UserError(
                f"{path}: is {wide} text; re-save it as UTF-8 (iconv -f {wide} -t UTF-8)"
            ) from None
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: is not UTF-8 text (byte {e.start}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; give a file with data in it")
    return text


def split_lines(text: str) -> list[str]:
    """Lines ended by a line feed, CR LF or a lone CR (old Mac files): not str.splitlines(), which also splits
    on characters such as U+2028 inside a token."""
    return _LINE_END.split(text)


_LINE_END = re.compile(r"\r\n|\r|\n")


def read_records(path: Path, keep_blank_rows: bool = False) -> tuple[list[str], list[tuple[int, Record]]]:
    """(column names, [(line number, record)]) for a .csv, .tsv or .jsonl file.

    The columns are the CSV/TSV header or the keys of the JSONL objects (in the order they first appear). TSV is
    read without quote handling, like the GLUE files (quotes are ordinary characters); CSV with RFC 4180
    quoting. Empty lines are skipped, and so are CSV/TSV rows whose every cell is blank (a spreadsheet's trailing
    ",,") unless `keep_blank_rows` (prediction: an empty text is an input too, and the output keeps one row per
    input row; in a one-column file an empty line between rows is such a text).
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise UserError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv or .jsonl")
    text = read_text(path)
    if suffix == ".jsonl":
        records = _jsonl_records(path, text)
        return list(dict.fromkeys(key for _, rec in records for key in rec)), records
    return _table_records(path, text, suffix, keep_blank_rows)


def _jsonl_records(path: Path, text: str) -> list[tuple[int, Record]]:
    records: list[tuple[int, Record]] = []
    for lineno, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=_refuse_repeated_keys)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{lineno}: not valid JSON ({e.msg}); write one JSON object per line"
            ) from None
        except _RepeatedKey as e:
            raise UserError(
                f"{path}:{lineno}: names the field '{e.args[0]}' twice (only the last would count); remove one"
            ) from None
        if not isinstance(rec, dict):
            raise UserError(
                f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}; write one object per line"
            )
        records.append((lineno, rec))
    return records


class _RepeatedKey(Exception):
    pass


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook: the object, or _RepeatedKey when it names a key twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _table_records(
    path: Path, text: str, suffix: str, keep_blank_rows: bool = False
) -> tuple[list[str], list[tuple[int, Record]]]:
    if suffix == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, Record]] = []
    empty_lines: list[int] = []  # of a one-column file, after its last row so far
    header: list[str] | None = None
    header_line = start = 0
    try:
        for row in reader:
            # the lines the row spans, start to line (more than one: a quoted field holds a newline)
            start, line = start + 1, reader.line_num
            blank = all(not cell.strip() for cell in row)
            if not row and header is not None and len(header) == 1 and keep_blank_rows:
                empty_lines.append(line)
            if not row or (blank and (header is None or not keep_blank_rows)):
                start = line
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                header_line = line
                _refuse_separator(path, header, suffix, line)
                _refuse_repeated_columns(path, header, header_line)
                start = line
                continue
            if len(row) != len(header):
                raise UserError(
                    _field_count(path, suffix, (start, line), len(row), (header_line, len(header)))
                )
            if len(header) > 1 and [cell.strip() for cell in row] == header:
                raise UserError(
                    f"{path}:{line}: repeats the header (line {header_line}), as files joined end to end do; "
                    "remove that line"
                )
            records += [(n, dict.fromkeys(header, "")) for n in empty_lines]
            empty_lines = []
            records.append((line, dict(zip(header, row))))
            start = line
    except csv.Error as e:
        raise UserError(
            f"{path}:{start + 1}: malformed {suffix[1:].upper()} ({e}); fix the quoting on that line"
        ) from None
    assert header is not None  # read_text rejected a blank file
    if not records:
        raise UserError(f"{path}: has a header but no rows; add examples below the header line")
    return header, records


def _field_count(
    path: Path, suffix: str, lines: tuple[int, int], fields: int, header: tuple[int, int]
) -> str:
    """The message for a row of `fields` fields spanning `lines` (first, last) against the header's (line,
    fields): a row that spans lines in a .csv is a quote left open where it starts."""
    first, last = lines
    if suffix == ".csv" and last > first:
        return (
            f"{path}:{first}: a quoted field opened on this line runs to line {last} ({plural(fields, 'field')}, the "
            f'header has {header[1]}); close the quote, or double a quote that is part of the text ("")'
        )
    fix = (
        "quote fields that contain commas"
        if suffix == ".csv"
        else "remove tabs and line breaks inside fields (a .tsv file is read without quoting, as "
        "GLUE's are: quotes are ordinary characters), or write the file as .csv"
    )
    return f"{path}:{last}: has {fields} fields, the header (line {header[0]}) has {header[1]}; {fix}"


def _refuse_separator(path: Path, header: list[str], suffix: str, line: int) -> None:
    """A UserError when a one-column header reads as another separator's header: "text;label" in a .csv (a
    European spreadsheet's export), a tab-separated header in a .csv, "text,label" in a .tsv."""
    if len(header) != 1:
        return
    others = {";": "semicolon", "\t": "tab", ",": "comma"}
    expected = "comma" if suffix == ".csv" else "tab"
    for sep, name in others.items():
        if name != expected and len(header[0].split(sep)) > 1 and all(header[0].split(sep)):
            fix = {
                "tab": "name the file .tsv",
                "comma": "name the file .csv",
                "semicolon": "save it comma-separated (.csv) or tab-separated (.tsv)",
            }[name]
            raise UserError(
                f"{path}:{line}: the header {header[0]!r} reads as {name}-separated, but a {suffix} file is "
                f"{expected}-separated; {fix}"
            )


def _refuse_repeated_columns(path: Path, header: list[str], line: int) -> None:
    """A UserError when the header names a column twice: a record would keep only its last cell, silently.
    Unnamed columns (empty header cells, e.g. from trailing commas) may repeat: no setting can name them."""
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise UserError(
                f"{path}:{line}: the header names the column '{name}' twice; rename or remove one of them"
            )
        seen.add(name)


def header_hint(columns: list[str]) -> str:
    """For a "has no column" message: a hint when the "column names" read like a row of data (a number, or a
    sentence): the file has no header row, as GLUE's CoLA files have none."""
    data_like = any(re.fullmatch(r"[+-]?\d+(\.\d*)?", c.strip()) or len(c.split()) >= 4 for c in columns)
    return (
        "; if the file has no header row, add one that names its columns (e.g. text,label)"
        if data_like
        else ""
    )


def text_field(rec: Record, column: str, path: Path, line: int) -> str:
    """The text in `column` of one record; a UserError when it is missing or not a string."""
    if column not in rec:
        raise UserError(
            f"{path}:{line}: has no '{column}' field (fields: {', '.join(rec)}); add it to that line"
        )
    value = rec[column]
    if value is None:  # JSON null: no text, as an empty CSV cell
        return ""
    if not isinstance(value, str):
        raise UserError(
            f"{path}:{line}: '{column}' is {type(value).__name__}, expected text; quote it as a string"
        )
    return value


def label_field(rec: Record, column: str, path: Path, line: int) -> str | None:
    """The label in `column` as a stripped string (numbers too); None for an empty cell or JSON null.

    A NaN is no label either: a JSON NaN, or "NaN" / "nan" written in a cell (pandas' and numpy's spelling of a
    missing number). A JSON number that is a whole number is written as an integer: 1.0 is the label "1", as 1 is
    (pandas writes an integer column with missing values as floats); a JSON boolean is "true" / "false". Any
    other CSV cell, or JSON string, is kept as written."""
    if column not in rec:
        raise UserError(
            f"{path}:{line}: has no '{column}' field (fields: {', '.join(rec)}); add it to that line"
        )
    value = rec[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: how pandas writes "no label"
        return None
    # a boolean as JSON spells it (str() would give "True"), so a CSV's "true" is the same label
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool | int | float | str):
        value = str(value).strip()
        return value if value and value.lower().lstrip("+-") != "nan" else None
    raise UserError(
        f"{path}:{line}: '{column}' is a {type(value).__name__}; a label must be one string or number"
    )


# ----------------------------------------------------------------------------------------------------
# One input of an HTTP request (masklm serve)

_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number"}


def json_type(value: Any) -> str:
    """How JSON names the type of `value` ("a string", "an object", "null" ...), for error messages."""
    if value is None:
        return "null"
    return next((name for t, name in _JSON_TYPES.items() if isinstance(value, t)), "a number")


def request_text(value: Any, field: str) -> str:
    """`value` as the text of `field`; a UserError when it is not a string or holds only white space."""
    if not isinstance(value, str):
        raise UserError(f"'{field}' is {json_type(value)}, expected a string")
    if not value.strip():
        raise UserError(f"'{field}' is empty; give some text")
    return value


def request_object(item: Any, required: tuple[str, ...], optional: tuple[str, ...], shape: str) -> Record:
    """`item` checked to be a JSON object with the `required` keys and no keys but those and `optional`;
    `shape` says what was expected (`{"question": ..., "context": ...}`) in the error."""
    if not isinstance(item, dict):
        raise UserError(f"expected {shape}, got {json_type(item)}")
    unknown = [k for k in item if k not in required and k not in optional]
    if unknown:
        raise UserError(f"unknown field '{unknown[0]}'; expected {shape}")
    missing = [k for k in required if k not in item]
    if missing:
        raise UserError(f"'{missing[0]}' is missing; expected {shape}")
    return item
