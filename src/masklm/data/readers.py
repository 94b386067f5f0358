"""Input files → a stream of documents, for `masklm prepare`.

    files = find_input_files(["corpus/", "web/*.jsonl.zst", "hub.parquet"])
    for document in Corpus(files, DataConfig(text_field="text")):
        ...

Text formats (.txt, .jsonl, .csv) may be compressed with gzip (.gz), zstd (.zst), bz2 (.bz2) or xz (.xz), and are
decompressed as a stream. Tables (.parquet, and the .arrow files of a `datasets` `save_to_disk` folder) are read
record batch by record batch through pyarrow (read, not memory-mapped: see `_record_batches`), so no reader holds
a whole file, except two: a .txt file read as one document, and a .json file (one JSON array, parsed whole).
pyarrow and zstandard are optional (`pip install 'masklm[corpora]'`): `find_input_files` checks the ones the
inputs need before any work starts.
"""

from __future__ import annotations

import bz2
import csv
import functools
import glob
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklm.config import DataConfig
from masklm.errors import UserError
from masklm.utils import finite_number, log, utf16_or_32

TEXT_KINDS = {
    ".txt": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
}
TABLE_KINDS = {".parquet": "parquet", ".arrow": "arrow"}
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst", ".bz2": "bz2", ".xz": "xz"}
NEEDS = {"parquet": "pyarrow", "arrow": "pyarrow", "zst": "zstandard"}  # kind or compression → module
TABLE_BATCH_ROWS = 1024  # rows per record batch read from a Parquet file
# compressed bytes decompressed at a time (see _ZstdReader)
ZSTD_INPUT_BYTES = 2048
_SURROGATE = re.compile("[\ud800-\udfff]")
_GLOB = re.compile(r"[*?\[]")

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one CSV cell may hold a whole book


# ----------------------------------------------------------------------------------------------------------------
# Finding the input files


@dataclass(frozen=True)
class InputFile:
    path: Path
    kind: str  # "txt", "jsonl", "json", "csv", "tsv", "parquet" or "arrow"
    compression: str | None = None  # "gz", "zst", "bz2", "xz" or None (text kinds only)

    @property
    def gz(self) -> bool:
        return self.compression == "gz"


def file_kind(path: Path) -> tuple[str | None, str | None]:
    """(kind or None when unknown, compression or None) from the file name: "a.jsonl.zst" → ("jsonl", "zst")."""
    base, ext = os.path.splitext(path.name.lower())
    compression = COMPRESSIONS.get(ext)
    if compression is not None:
        base, ext = os.path.splitext(base)
        return TEXT_KINDS.get(ext), compression
    return TEXT_KINDS.get(ext) or TABLE_KINDS.get(ext), None


def masklm_output(folder: Path) -> bool:
    """Whether `folder` is one masklm wrote: a run (config.yaml beside metrics.jsonl or command.txt), prepared
    data (`shards.is_prepared`) or a suite's output (its MARKER). Its files are logs and token ids, not text."""
    from masklm.data.shards import is_prepared  # (torch: imported only when a folder is walked)
    from masklm.suite import MARKER

    try:
        if (folder / "config.yaml").is_file() and any(
            (folder / n).is_file() for n in ("metrics.jsonl", "command.txt")
        ):
            return True
        return (folder / MARKER).is_file() or ((folder / "meta.json").is_file() and is_prepared(folder))
    except PermissionError:
        raise _unreadable(folder) from None


def _unreadable(path: str | Path) -> UserError:
    """A folder of the inputs this user may not read: said, not skipped (its text would be missing unseen)."""
    return UserError(
        f"cannot read {path} (permission denied): give this user read access, or leave it out of --input"
    )


def _refuse_unreadable(e: OSError) -> None:
    """os.walk's onerror: a folder it may not list is refused; one that vanished meanwhile is passed over."""
    if isinstance(e, PermissionError):
        raise _unreadable(e.filename)


def _walk(folder: Path) -> Iterator[Path]:
    """Files under `folder`, recursively, in sorted order, skipping hidden files and folders and the folders
    masklm wrote (`masklm_output`: `--input .` beside an earlier run reads the text, not the run's logs).
    Links to folders are followed, as links to files are; a folder reached twice (a link back up the tree, two
    links to one folder) is read once."""
    seen = {os.path.realpath(folder)}
    for root, dirs, names in os.walk(folder, followlinks=True, onerror=_refuse_unreadable):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                kept.append(d)
        skipped = [d for d in kept if masklm_output(Path(root) / d)]
        for d in skipped:
            log(f"note: {Path(root) / d} is a folder masklm wrote (a run or prepared data): not read as text")
        dirs[:] = [d for d in kept if d not in skipped]
        for name in sorted(names):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                yield path


def _expand(item: str | Path) -> list[Path]:
    """A path as given, or the sorted matches of a glob pattern (`**` recurses)."""
    if not str(item).strip():  # Path("") is the current folder: an empty argument would read all of it
        raise UserError("an input path is empty; pass files, folders or glob patterns")
    path = Path(item)
    if path.exists() or not _GLOB.search(str(item)):
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
    if not matches:
        raise UserError(f"no file matches {item}; check the pattern (quote it so the shell leaves it alone)")
    return matches


def _found(path: Path) -> list[InputFile]:
    """The input files at `path`: a folder's known files, or the file itself (read as text if its kind is unknown)."""
    if path.is_dir():
        kinds = [(p, *file_kind(p)) for p in _walk(path)]
        # .json only when named: in a folder it is more often metadata (a datasets folder's state.json)
        return [InputFile(p, kind, comp) for p, kind, comp in kinds if kind not in (None, "json")]
    if path.is_file():
        # a file named, or matched by a glob pattern, is read as text whatever its name
        kind, comp = file_kind(path)
        return [InputFile(path, kind or "txt", comp)]
    if path.exists():  # a device, a pipe or a socket (/dev/null, <(...))
        raise UserError(f"input {path} is not a file or a folder; write the text to a file and pass that")
    raise UserError(f"input {path} does not exist; check the path")


def find_input_files(inputs: Sequence[str | Path]) -> list[InputFile]:
    """Expand files, folders (recursively) and glob patterns into the files to read, each once, in order.

    A glob's matches are read as if each were named (as the shell would expand the pattern unquoted): a file of
    unknown extension is read as plain text, with a note."""
    if not inputs:
        raise UserError("no inputs given; pass one or more text files or folders")
    files: list[InputFile] = []
    seen: set[Path] = set()
    for item in inputs:
        unknown = []
        for path in _expand(item):
            if path.is_file() and file_kind(path)[0] is None:
                unknown.append(path)
            for f in _found(path):
                if f.path.resolve() not in seen:
                    seen.add(f.path.resolve())
                    files.append(f)
        _note_unknown(item, unknown)
    if not files:
        names = ", ".join(str(i) for i in inputs)
        raise UserError(
            f"no readable input files in {names}; expected .txt, .jsonl, .csv, .tsv (optionally .gz, .zst, .bz2, .xz), "
            ".parquet or .arrow files"
        )
    check_modules(files)
    return files


def _note_unknown(item: str | Path, unknown: list[Path]) -> None:
    """One note for the files of one input whose extension is unknown, which are read as plain text."""
    known = ", ".join(TEXT_KINDS)
    if len(unknown) == 1:
        log(f"note: {unknown[0]}: not a known extension ({known}); read as plain text")
    elif unknown:
        log(
            f"note: {len(unknown)} files matching {item} (such as {unknown[0]}) have no known extension ({known}); "
            "read as plain text"
        )


def check_modules(files: list[InputFile]) -> None:
    """One line naming the optional package the inputs need and how to install it, before any work starts."""
    for f in files:
        for need in (f.kind, f.compression):
            module = NEEDS.get(need or "")
            if module and importlib.util.find_spec(module) is None:
                raise UserError(
                    f"reading {f.path} needs {module}, which is not installed: pip install 'masklm[corpora]' "
                    f"(or pip install {module})"
                )


# ----------------------------------------------------------------------------------------------------------------
# Byte streams: counting, hashing, decompressing


class _CountingReader(io.RawIOBase):
    """A raw binary stream that counts and hashes (sha256) the bytes read through it."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer) or 0
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever is left, so `sha256` covers the whole file."""
        while chunk := self._raw.read(1 << 20):
            self.sha256.update(chunk)
            self.bytes_read += len(chunk)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _ZstdReader(io.RawIOBase):
    """zstd frames decompressed as a stream. Unlike zstandard's stream_reader, a file cut short in the middle of a
    frame raises EOFError instead of ending quietly, and a stream that is not zstd raises OSError.

    The input is decompressed ZSTD_INPUT_BYTES at a time and the output handed out from a memoryview, so the work
    is linear and the memory held is what one small piece of input decompresses to. Repetitive text compresses
    more than 10,000 to 1 (a 36 KB file of 400 MB of JSONL): decompressing 1 MiB of input at once, and slicing the
    result as it was read, took more than 300 s and 1 GB; 2 KiB at a time reads it as fast as its .gz, in about
    60 MB more peak memory."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        import zstandard

        self._raw, self._zstd = raw, zstandard
        # frames written with `zstd --long=31` need a 2 GiB window; zstandard refuses more than 128 MiB by default
        self._context = zstandard.ZstdDecompressor(max_window_size=2**31)
        self._frame = self._context.decompressobj()
        self._in_frame = False  # input fed to the current frame, which has not ended yet
        # decompressed bytes not handed out yet
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            chunk = self._raw.read(ZSTD_INPUT_BYTES)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ends in the middle of a frame (truncated file?)")
                return 0
            self._out = memoryview(self._feed(chunk))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _feed(self, chunk: bytes) -> bytes:
        """Decompress `chunk`, starting a new frame whenever one ends (a file may hold several)."""
        out = []
        while chunk:
            try:
                out.append(self._frame.decompress(chunk))
            except self._zstd.ZstdError as e:
                raise OSError(f"not a valid zstd stream: {e}") from None
            self._in_frame = not self._frame.eof
            if not self._frame.eof:
                break
            chunk = self._frame.unused_data
            self._frame = self._context.decompressobj()
        return b"".join(out)


def _decompressed(binary: io.BufferedReader, compression: str | None) -> io.BufferedIOBase:
    if not binary.peek(1):
        # an empty file holds no text, compressed or not (bz2 and xz would call it truncated, gzip and zstd not)
        return binary
    if compression == "gz":
        return gzip.GzipFile(fileobj=binary, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(binary, mode="rb")
    if compression == "xz":
        return lzma.LZMAFile(binary, mode="rb")
    if compression == "zst":
        return io.BufferedReader(_ZstdReader(binary), 1 << 20)
    return binary


def _text_stream(f: InputFile, raw: _CountingReader) -> io.TextIOWrapper:
    binary = _decompressed(io.BufferedReader(raw, 1 << 20), f.compression)
    newline = "" if f.kind == "csv" else None  # the csv module handles line ends itself
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline=newline)


READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


# ----------------------------------------------------------------------------------------------------------------
# Text formats


def _lines(text: io.TextIOBase, path: Path) -> Iterator[str]:
    """Lines of a text stream, refusing binary content (NUL bytes)."""
    for line in text:
        if "\x00" in line:
            raise binary_error(path)
        yield line


def binary_error(path: Path) -> UserError:
    wide = utf16_or_32(Path(path))
    if wide:
        return UserError(
            f"{path} is {wide} text; convert it to UTF-8 (iconv -f {wide} -t UTF-8) or leave it out"
        )
    return UserError(
        f"{path} is not UTF-8 text (binary file?); convert it to UTF-8 or leave it out of the inputs"
    )


def _txt_documents(text: io.TextIOBase, path: Path, cfg: DataConfig) -> Iterator[str]:
    if cfg.where is not None:
        raise UserError(
            f"{path}: --data.where {cfg.where} keeps the records with that field, and plain text has no fields; "
            "leave the text files out of this run or drop --data.where"
        )
    if cfg.one_doc_per_line:
        for line in _lines(text, path):
            if line.strip():
                yield line.rstrip("\n")
        return
    document = text.read()
    if "\x00" in document:
        raise binary_error(path)
    yield document


def _clean(value: str) -> str:
    """Replace lone surrogates (possible in JSON escapes like "\\ud800") with U+FFFD so the text is valid UTF-8."""
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


def _jsonl_documents(text: io.TextIOBase, path: Path, cfg: DataConfig) -> Iterator[str]:
    where = parse_where(cfg.where)
    for lineno, line in enumerate(_lines(text, path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}:{lineno}: invalid JSON ({e.msg}); each line of a .jsonl file must be one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise UserError(
                f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}; write one object per line"
            )
        value = _record_text(record, f"{path}:{lineno}", cfg.text_field, where)
        if value is not None:
            yield value


def _json_documents(text: io.TextIOBase, path: Path, cfg: DataConfig) -> Iterator[str]:
    """A .json file: one array of objects (the text in data.text_field) or of strings."""
    body = text.read()
    if "\x00" in body:
        raise binary_error(path)
    try:
        records = json.loads(body) if body.strip() else []
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the file") from None
    if not isinstance(records, list):
        raise UserError(
            f"{path}: holds a JSON {type(records).__name__}, and a .json input must be an array of objects (or of "
            "strings); write one object per line as .jsonl for anything else"
        )
    where = parse_where(cfg.where)
    for n, record in enumerate(records):
        if isinstance(record, str) and where is None:
            yield _clean(record)
            continue
        if not isinstance(record, dict):
            raise UserError(
                f"{path}: item {n} of the array is {type(record).__name__}; write an array of objects (or of "
                "strings, without --data.where)"
            )
        value = _record_text(record, f"{path} (item {n})", cfg.text_field, where)
        if value is not None:
            yield value


def _record_text(record: dict[str, Any], at: str, field: str, where: tuple[str, str] | None) -> str | None:
    """The text of one JSON record (null: empty); None when --data.where leaves the record out."""
    if where is not None:
        if where[0] not in record:
            raise UserError(f"{at}: no field {where[0]!r} for --data.where; fix the filter")
        if not where_matches(record[where[0]], where[1]):
            return None
    if field not in record:
        fields = ", ".join(list(record)[:20]) or "none"
        raise UserError(
            f"{at}: no field {field!r} (fields: {fields}); set --data.text_field (--text-field) to the text field"
        )
    value = record[field]
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(
            f"{at}: field {field!r} holds {type(value).__name__}, not text; "
            "set --data.text_field (--text-field) to a text field"
        )
    return _clean(value)


def _csv_documents(text: io.TextIOBase, path: Path, cfg: DataConfig, tsv: bool = False) -> Iterator[str]:
    """A .csv file (RFC 4180 quoting), or with `tsv` a .tsv file, read as fine-tuning reads one: tab-separated,
    quotes ordinary characters (GLUE's layout). The first row is the header; a row with more fields is refused.

    The reader is strict: without it, a stray quote at the start of a field opens a quoted field that runs to the
    end of the file, and the rest of the file became one document, silently."""
    if tsv:
        reader = csv.reader(_lines(text, path), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    else:
        reader = csv.reader(_lines(text, path), strict=True)
    # the line the row being read starts on (a quoted field may hold line breaks)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return  # an empty file holds no documents
        if cfg.text_field not in header:
            columns = ", ".join(header[:20]) or "none"
            raise UserError(
                f"{path}: no column {cfg.text_field!r} (columns: {columns}); set --data.text_field (--text-field) to the text column"
            )
        column = header.index(cfg.text_field)
        where = parse_where(cfg.where)
        if where is not None and where[0] not in header:
            raise UserError(
                f"{path}: no column {where[0]!r} for --data.where (columns: {', '.join(header[:20])})"
            )
        keep_col = header.index(where[0]) if where is not None else -1
        while True:
            start = reader.line_num + 1
            row = next(reader, None)
            if row is None:
                return
            if not row:
                continue
            if len(row) > len(header):  # a comma inside an unquoted field would cut the text short, silently
                fix = "remove tabs inside fields" if tsv else "quote fields that contain commas"
                raise UserError(
                    f"{path}:{reader.line_num}: has {len(row)} fields, the header has {len(header)}; {fix}"
                )
            # a short row's missing cells are empty (an empty text is a skipped document)
            if where is None or where_matches(row[keep_col] if keep_col < len(row) else "", where[1]):
                yield row[column] if column < len(row) else ""
    except csv.Error as e:
        quoting = "a field that starts with a quote must end with one (followed by a comma or the end of the line), "
        quoting += 'and a quote inside it is written twice (""): '
        fix = "fix the row" if tsv else quoting + "fix the row"
        raise UserError(
            f"{path}:{start}: malformed CSV in the row that starts on this line ({e}); {fix}"
        ) from None


_BOOLEAN_WORDS = ("true", "false")
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


def where_matches(value: Any, wanted: str) -> bool:
    """Whether a record's field `value` is the VALUE of --data.where COLUMN=VALUE, alike in every format: a
    number equals VALUE when VALUE is the same number (a JSON or Parquet 1.0, a CSV "1.0" and "1" are 1; two
    integers are compared exactly, however large); a boolean when VALUE is its word in any case (True, true); a null
    or a missing cell when VALUE is empty; any other text when it is VALUE exactly."""
    if value is None:
        return wanted == ""
    if isinstance(value, bool):
        return wanted.strip().lower() == ("true" if value else "false")
    if isinstance(value, int | float):
        return _number(wanted) == value
    if isinstance(value, str):
        if value == wanted:
            return True
        if value.lower() in _BOOLEAN_WORDS:  # a CSV's True (pandas) or true
            return value.lower() == wanted.strip().lower()
        number = _number(value)
        return number is not None and number == _number(wanted)
    return str(value) == wanted


def _number(text: str) -> int | float | None:
    """`text` as a number, else None: an int when it is written as one (as float, 9007199254740993 would equal
    9007199254740992), else a finite float. Python compares an int with a float exactly."""
    if _INTEGER.fullmatch(text):
        try:
            return int(text)
        except ValueError:
            # more than 4,300 digits (Python's limit for int()): compared as a float
            pass
    return finite_number(text)


def parse_where(where: str | None) -> tuple[str, str] | None:
    """ "source=imdb" → ("source", "imdb"): keep only rows whose column holds that value."""
    if where is None:
        return None
    column, sep, value = where.partition("=")
    if not sep or not column.strip():
        raise UserError(f"data.where must look like COLUMN=VALUE (e.g. source=imdb), not {where!r}")
    return column.strip(), value


TEXT_READERS: dict[str, Callable[[io.TextIOBase, Path, DataConfig], Iterator[str]]] = {
    "txt": _txt_documents,
    "jsonl": _jsonl_documents,
    "json": _json_documents,
    "csv": _csv_documents,
    "tsv": functools.partial(_csv_documents, tsv=True),
}


# ----------------------------------------------------------------------------------------------------------------
# Tables: Parquet and Arrow (`datasets` save_to_disk folders)


def _record_batches(f: InputFile, columns: list[str] | None) -> tuple[list[str], Iterator[Any]]:
    """(the table's column names, an iterator over its record batches): Parquet row group by row group,
    Arrow (IPC stream as `datasets` writes it, or IPC file) batch by batch. With `columns`, only those are read.

    Files are read, not memory-mapped: a mapped file's pages count in the process's resident set as they are
    touched, which makes a prepare run's peak memory look like it grows with the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if f.kind == "parquet":
        table = pq.ParquetFile(f.path, memory_map=False)
        names = table.schema_arrow.names
        wanted = [c for c in columns or [] if c in names] or None
        return names, _row_group_batches(table, wanted)
    source = pa.OSFile(str(f.path))
    try:
        reader = pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(source)
        return reader.schema.names, (reader.get_batch(i) for i in range(reader.num_record_batches))
    return reader.schema.names, iter(reader)


def _row_group_batches(table: Any, columns: list[str] | None) -> Iterator[Any]:
    """A Parquet file's record batches, one row group at a time, each through its own `iter_batches` reader.

    One `iter_batches` over the whole file keeps what it has read in pyarrow's memory pool until it ends (pyarrow
    26: `pyarrow.total_allocated_bytes()` reaches the file's size on disk by the last row group), so the peak
    memory grew with the file; a reader per row group frees each row group's buffers when it is done."""
    for group in range(table.num_row_groups):
        yield from table.iter_batches(batch_size=TABLE_BATCH_ROWS, row_groups=[group], columns=columns)


def _table_documents(f: InputFile, cfg: DataConfig) -> Iterator[str]:
    """The `cfg.text_field` column of a Parquet or Arrow file, batch by batch (null → empty document)."""
    import pyarrow as pa

    where = parse_where(cfg.where)
    try:
        names, batches = _record_batches(f, [cfg.text_field, *([where[0]] if where else [])])
        _check_columns(f, names, cfg.text_field, where)
        for batch in batches:
            column = batch.column(cfg.text_field)
            if pa.types.is_dictionary(column.type):  # a categorical column of text: its values, decoded
                column = column.dictionary_decode()
            if _is_string_view(column.type):
                # Arrow's newer layout of strings (pyarrow 16+): the same text
                column = column.cast(pa.large_string())
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise UserError(
                    f"{f.path}: column {cfg.text_field!r} holds {column.type}, not text; "
                    "set --data.text_field (--text-field) to a text column"
                )
            if where is not None:
                column = column.filter(_matches(batch.column(where[0]), where[1]))
            for value in column.to_pylist():
                yield "" if value is None else _clean(value)
    except pa.ArrowException as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"cannot read {f.path} ({reason}); fix the file or leave it out of the inputs"
        ) from None


def _is_string_view(arrow_type: Any) -> bool:
    """Whether `arrow_type` is string_view (which pyarrow before 16 does not have)."""
    import pyarrow as pa

    return hasattr(pa.types, "is_string_view") and pa.types.is_string_view(arrow_type)


def _check_columns(f: InputFile, names: list[str], field: str, where: tuple[str, str] | None) -> None:
    columns = ", ".join(names[:20]) or "none"
    if field not in names:
        raise UserError(
            f"{f.path}: no column {field!r} (columns: {columns}); set --data.text_field (--text-field) to the text column"
        )
    if where is not None and where[0] not in names:
        raise UserError(f"{f.path}: no column {where[0]!r} for --data.where (columns: {columns})")


def _matches(column: Any, value: str) -> Any:
    """A boolean mask: the rows of an Arrow `column` that `where_matches` keeps."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return pa.array([where_matches(v, value) for v in column.to_pylist()], pa.bool_())


# ----------------------------------------------------------------------------------------------------------------
# The corpus


class Corpus:
    """The documents of all input files, streamed; tracks bytes read and each file's size and sha256.

    `limits` (characters of text per file, one per file), when given, stops reading each file once that much of
    its text has been taken: a bounded sample spread over the inputs. `hash_files=False` skips hashing what is
    left of a file after that (a sample needs no checksums).

    Once data.max_documents documents are taken, the file they end in is still hashed whole, but the files after it
    are not opened: their entries in `sources` have "read": false and no sha256.
    """

    def __init__(
        self,
        files: list[InputFile],
        cfg: DataConfig,
        limits: list[int] | None = None,
        hash_files: bool = True,
    ) -> None:
        self.files = files
        self.cfg = cfg
        self.limits = limits
        self.hash_files = hash_files
        self.sizes = [f.path.stat().st_size for f in files]
        self.total_bytes = sum(self.sizes)
        self.documents = 0
        self.sources: list[dict[str, Any]] = []
        self._bytes_before = 0  # bytes of the files already finished
        self._current: _CountingReader | None = None
        self.file_index = -1  # the file the document just yielded comes from (an index into `files`)

    @property
    def bytes_read(self) -> int:
        return self._bytes_before + (self._current.bytes_read if self._current else 0)

    def __iter__(self) -> Iterator[str]:
        for i, f in enumerate(self.files):
            self.file_index = i
            if self._done():
                # data.max_documents was reached in an earlier file: this one is not opened, and its source
                # entry says so (no sha256; "bytes" is its size on disk, as for a file read whole)
                self.sources.append({"path": str(f.path), "bytes": self.sizes[i], "read": False})
                continue
            try:
                with open(f.path, "rb", buffering=0) as raw:
                    self._current = _CountingReader(raw)
                    yield from self._read(f, None if self.limits is None else self.limits[i])
            except UnicodeDecodeError:
                raise binary_error(f.path) from None
            except READ_ERRORS as e:
                raise UserError(
                    f"cannot read {f.path} ({e}); fix the file or leave it out of the inputs"
                ) from None
            size, digest = self._current.bytes_read, self._current.sha256.hexdigest()
            self.sources.append({"path": str(f.path), "bytes": size, "sha256": digest})
            self._bytes_before += size
            self._current = None

    def _done(self) -> bool:
        return self.cfg.max_documents is not None and self.documents >= self.cfg.max_documents

    def _read(self, f: InputFile, limit: int | None) -> Iterator[str]:
        """The documents of one file; then (with hash_files) the rest of its bytes, so its sha256 is whole."""
        current = self._current
        assert current is not None
        if f.kind in TEXT_READERS:
            with _text_stream(f, current) as text:
                yield from self._take(TEXT_READERS[f.kind](text, f.path, self.cfg), limit)
                if self.hash_files:
                    current.drain()
            return
        yield from self._take(_table_documents(f, self.cfg), limit)
        if self.hash_files:
            current.drain()

    def _take(self, documents: Iterator[str], limit: int | None) -> Iterator[str]:
        """Count documents; stop at data.max_documents, or once `limit` characters of this file are taken."""
        taken = 0
        for document in documents:
            if self._done() or (limit is not None and taken >= limit):
                return
            self.documents += 1
            taken += len(document)
            yield document
