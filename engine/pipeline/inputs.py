"""Documents read lazily from a file, a directory or a glob.

Everything here streams: files are read line by line or row by row and
directories are walked one level at a time, so a million records are never
held in memory at once.  Only a glob's list of matching paths is gathered,
because it has to be sorted.

Sources name where a document came from and are part of every chunk id, so
they are relative to the input's root (a single file: its name).  Moving the
data or running from another directory then keeps the ids, and with them the
results already stored.

Undecodable bytes become U+FFFD instead of losing the record; a UTF-8 BOM is
dropped.  A record that is mostly undecodable or control characters, and a
file with NUL bytes near its start, is binary data (or not UTF-8): it is
skipped and reported rather than sent to a model as noise.  Every record
that is skipped (unreadable, binary, or without text) is reported, so the
engine can count them.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from glob import glob
from itertools import chain
from pathlib import Path, PurePath
from typing import Literal

from engine.config.settings import JobSettings
from engine.pipeline.records import Document

ConcreteFormat = Literal["text", "csv", "jsonl", "documents"]
BadRecordReporter = Callable[[str], None]

DOCUMENT_SUFFIXES = frozenset({".txt", ".md", ".jsonl"})
"""The files a "documents" input reads: .txt/.md whole, .jsonl as a transcript."""

# What a directory read in a record format contains; a glob or a single file
# is read in that format whatever the suffix, since the user named it.
_RECORD_SUFFIXES: dict[ConcreteFormat, frozenset[str]] = {
    "text": frozenset({".txt"}),
    "csv": frozenset({".csv"}),
    "jsonl": frozenset({".jsonl", ".ndjson"}),
    "documents": DOCUMENT_SUFFIXES,
}
_FORMAT_OF_SUFFIX: dict[str, ConcreteFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "documents",
    ".md": "documents",
}
_GLOB_CHARS = frozenset("*?[")
_ENCODING = "utf-8-sig"  # reads plain UTF-8 too, and drops a BOM from spreadsheet exports

# Binary data decoded as UTF-8 is ~60% replacement and control characters;
# text in a legacy 8-bit encoding loses a few accented letters (~2-10%).  A
# share between the two tells them apart without dropping text that is only
# a little damaged.
_BINARY_SHARE = 0.3
_SNIFF_BYTES = 8192  # how much of a file is looked at for NUL bytes, as git and grep do
# Control characters that never belong in text (tab, newlines, vertical tab and
# form feed do), as UTF-8 bytes: counted on the encoded text, which is several
# times faster than on str for text outside ASCII.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])
_REPLACEMENT = "\ufffd".encode()  # what an undecodable byte became


class InputError(ValueError):
    """The input can't be read as asked: a missing path, an unknown format, or a
    bad record when nobody was given to report it to."""


class _BadRecord(Exception):
    """One record to skip; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class _InputFile:
    path: Path  # what to open
    name: str  # relative to the input's root, posix style: used in sources and messages


def is_glob(input_text: str) -> bool:
    """Whether the input names files by pattern rather than by path.

    A path that exists is a path even with `[` or `*` in its name.
    """
    return any(char in _GLOB_CHARS for char in input_text) and not Path(input_text).exists()


def input_present(input_text: str) -> bool:
    """Whether this machine has the input: its path exists, or its glob matches a file.

    A cluster's worker without it reads none of a shared input (another does)."""
    if is_glob(input_text):
        return any(Path(match).is_file() for match in glob(input_text, recursive=True))
    return bool(input_text) and Path(input_text).exists()


def resolve_input_format(job: JobSettings) -> ConcreteFormat:
    """The format the job's input is read in, with "auto" decided.

    A directory or a glob is "documents" (a glob ending in `.csv` is "csv");
    a single file goes by its suffix, a `.txt`/`.md` file being one document.
    Raises InputError when the input is missing or its format can't be told.
    """
    if not job.input:
        raise InputError("no input given: name a file, a directory or a glob")
    if is_glob(job.input):
        if job.input_format != "auto":
            return job.input_format
        return "csv" if job.input.lower().endswith(".csv") else "documents"
    path = Path(job.input)
    if not path.exists():
        raise InputError(f"input not found: {job.input}")
    if job.input_format != "auto":
        return job.input_format
    if path.is_dir():
        return "documents"
    found = _FORMAT_OF_SUFFIX.get(path.suffix.lower())
    if found is None:
        raise InputError(
            f"can't tell the format of {job.input} from its suffix; "
            "set input_format to text, csv, jsonl or documents"
        )
    return found


def iter_documents(
    job: JobSettings, on_bad_record: BadRecordReporter | None = None
) -> Iterator[Document]:
    """Every document of the job's input, read lazily in a stable order.

    Formats: "text" is one record per non-empty line (source `<file>#L<line>`);
    "csv" and "jsonl" take the text from `job.text_field` and name each record
    by `job.id_field`, or else by its row (csv, from 1) or line (jsonl) number
    (source `<file>#<name>`); "documents" reads every .txt/.md file whole and
    every .jsonl file as a transcript (its lines' `text`, prefixed with
    `speaker: ` when present, one per line), with the file's relative path as
    the source.

    A record that is skipped — not readable as its format, binary, or without
    text — is described in one line, `file:line: what` (`file: what` for a
    whole file), to `on_bad_record`, one call per record; without a reporter
    it raises InputError instead.  Blank lines are not records.  A missing
    input, an unknown format, an input with no files to read, a single input
    file that is binary, and a csv header without the named columns raise
    InputError when called, before any document is read.
    """
    fmt = resolve_input_format(job)
    report = on_bad_record if on_bad_record is not None else _raise_bad_record
    files = _input_files(job.input, fmt)
    first = next(files, None)
    if first is None:
        if is_glob(job.input):
            raise InputError(f"no files to read: nothing matches {job.input}")
        wanted = ", ".join(sorted(_RECORD_SUFFIXES[fmt]))
        raise InputError(f"no files to read in {job.input} (looked for {wanted})")
    first_binary = _binary_file(first)
    if first_binary and not is_glob(job.input) and not Path(job.input).is_dir():
        # The one file named is not text: say so now, not as a run with nothing done.
        raise InputError(f"{job.input}: {first_binary}")
    if fmt == "csv" and not first_binary:
        # Checked now so a wrong column name fails at once, not as a million bad rows.
        _csv_header(first, job)
    return _documents(chain((first,), files), fmt, job, report)


def _raise_bad_record(message: str) -> None:
    raise InputError(message)


def _documents(
    files: Iterator[_InputFile], fmt: ConcreteFormat, job: JobSettings, report: BadRecordReporter
) -> Iterator[Document]:
    for input_file in files:
        binary = _binary_file(input_file)
        if binary:
            report(f"{input_file.name}: {binary}")
            continue
        if fmt == "text":
            yield from _text_records(input_file, report)
        elif fmt == "csv":
            yield from _csv_records(input_file, job, report)
        elif fmt == "jsonl":
            yield from _jsonl_records(input_file, job, report)
        else:
            document = _whole_document(input_file, report)
            if document is not None:
                yield document


# --- Finding the files ---------------------------------------------------------


def _input_files(input_text: str, fmt: ConcreteFormat) -> Iterator[_InputFile]:
    if is_glob(input_text):
        return _glob_files(input_text, fmt)
    path = Path(input_text)
    if path.is_dir():
        suffixes = _RECORD_SUFFIXES[fmt]
        return (
            _InputFile(found, found.relative_to(path).as_posix())
            for found in _walk_sorted(path)
            if found.suffix.lower() in suffixes
        )
    return iter((_InputFile(path, path.name),))


def _walk_sorted(directory: Path) -> Iterator[Path]:
    """Files under `directory`, depth first, sorted by name at every level.

    Hidden entries are skipped (version-control and editor files), and linked
    directories are not followed, so a link cycle can't loop forever.
    """
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _glob_files(pattern: str, fmt: ConcreteFormat) -> Iterator[_InputFile]:
    root = _glob_root(pattern)
    found: list[_InputFile] = []
    for match in glob(pattern, recursive=True):
        path = Path(match)
        if not path.is_file():
            continue
        if fmt == "documents" and path.suffix.lower() not in DOCUMENT_SUFFIXES:
            continue
        found.append(_InputFile(path, Path(os.path.relpath(path, root)).as_posix()))
    found.sort(key=lambda input_file: PurePath(input_file.name).parts)
    return iter(found)


def _glob_root(pattern: str) -> str:
    """The directory a pattern starts from: its parts before the first wildcard."""
    parts = PurePath(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:  # the last part names files, even without a wildcard
        if any(char in _GLOB_CHARS for char in part):
            break
        fixed.append(part)
    return str(PurePath(*fixed)) if fixed else "."


# --- Telling text from binary data ------------------------------------------------


def _binary_text(text: str) -> str | None:
    """Why decoded `text` is binary data rather than text, or None when it reads as text."""
    if not text:
        return None
    data = text.encode("utf-8", "surrogatepass")  # JSON may hold lone surrogates
    unreadable = len(data) - len(data.translate(None, _CONTROL_BYTES)) + data.count(_REPLACEMENT)
    if unreadable <= len(text) * _BINARY_SHARE:
        return None
    share = unreadable * 100 // len(text)
    return f"not text: {share}% undecodable or control characters (binary data, or not UTF-8)"


def _binary_file(input_file: _InputFile) -> str | None:
    """Why the file is binary, judged by its start; None when it looks like text."""
    try:
        with input_file.path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return None  # reading it for real says what is wrong, in its own words
    if b"\x00" in head:
        return "not text: NUL bytes in its first 8 KiB (a binary file, or UTF-16)"
    return _binary_text(head.decode(_ENCODING, errors="replace"))


# --- Reading records -------------------------------------------------------------


def _numbered_lines(input_file: _InputFile) -> Iterator[tuple[int, str]]:
    with input_file.path.open(encoding=_ENCODING, errors="replace") as handle:
        yield from enumerate(handle, start=1)


def _text_records(input_file: _InputFile, report: BadRecordReporter) -> Iterator[Document]:
    for lineno, line in _numbered_lines(input_file):
        text = line.strip()
        if not text:
            continue
        binary = _binary_text(text)
        if binary:
            report(f"{input_file.name}:{lineno}: {binary}")
            continue
        yield Document(f"{input_file.name}#L{lineno}", text)


def _jsonl_records(
    input_file: _InputFile, job: JobSettings, report: BadRecordReporter
) -> Iterator[Document]:
    for lineno, line in _numbered_lines(input_file):
        if not line.strip():
            continue
        try:
            record = _json_object(line)
            text = _record_text(record, job.text_field, "key")
            name = _id_value(record, job.id_field, "key") if job.id_field else str(lineno)
        except _BadRecord as bad:
            report(f"{input_file.name}:{lineno}: {bad}")
            continue
        yield Document(f"{input_file.name}#{name}", text)


def _json_object(line: str) -> Mapping[str, object]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _BadRecord(f"not JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise _BadRecord(f"not a JSON object ({type(value).__name__})")
    return value


def _text_value(record: Mapping[str, object], key: str, kind: str) -> str:
    if key not in record:
        raise _BadRecord(f"{kind} {key!r} missing")
    value = record[key]
    if value is None:  # exports write null for deleted or empty text: treat as empty
        return ""
    if not isinstance(value, str):
        raise _BadRecord(f"{kind} {key!r} is not text ({type(value).__name__})")
    return value


def _record_text(record: Mapping[str, object], key: str, kind: str) -> str:
    """A record's text: present, not empty, and text rather than binary data."""
    text = _text_value(record, key, kind)
    if not text.strip():
        raise _BadRecord(f"{kind} {key!r} is empty")
    binary = _binary_text(text)
    if binary:
        raise _BadRecord(f"{kind} {key!r}: {binary}")
    return text


def _id_value(record: Mapping[str, object], key: str, kind: str) -> str:
    if record.get(key) is None:
        raise _BadRecord(f"{kind} {key!r} missing")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _BadRecord(f"{kind} {key!r} is not a string or an integer")
    name = str(value).strip()
    if not name:
        raise _BadRecord(f"{kind} {key!r} is empty")
    return name


def _csv_header(input_file: _InputFile, job: JobSettings) -> list[str]:
    with input_file.path.open(encoding=_ENCODING, errors="replace", newline="") as handle:
        return _checked_header(csv.DictReader(handle), input_file, job)


def _checked_header(
    reader: csv.DictReader[str], input_file: _InputFile, job: JobSettings
) -> list[str]:
    header = list(reader.fieldnames or ())
    for key in (job.text_field, job.id_field):
        if key and header and key not in header:
            raise InputError(f"{input_file.name}: no column {key!r} (columns: {', '.join(header)})")
    return header


def _csv_records(
    input_file: _InputFile, job: JobSettings, report: BadRecordReporter
) -> Iterator[Document]:
    _allow_large_csv_fields()
    with input_file.path.open(encoding=_ENCODING, errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        if not _checked_header(reader, input_file, job):
            return  # an empty file has no records
        rowno = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                report(f"{input_file.name}:{reader.line_num}: not CSV ({exc})")
                continue
            rowno += 1
            try:
                if row.get(job.text_field) is None:  # a short row: csv has no null
                    raise _BadRecord(f"column {job.text_field!r} missing")
                text = _record_text(row, job.text_field, "column")
                name = _id_value(row, job.id_field, "column") if job.id_field else str(rowno)
            except _BadRecord as bad:
                report(f"{input_file.name}:{reader.line_num}: {bad}")
                continue
            yield Document(f"{input_file.name}#{name}", text)


def _allow_large_csv_fields() -> None:
    # The default limit (128 KiB) rejects long documents kept in one cell;
    # the bound keeps within a C long on every platform.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _whole_document(input_file: _InputFile, report: BadRecordReporter) -> Document | None:
    bad_lines = 0
    if input_file.path.suffix.lower() == ".jsonl":

        def count_and_report(message: str) -> None:
            nonlocal bad_lines
            bad_lines += 1
            report(message)

        text = "\n".join(_transcript_lines(input_file, count_and_report))
    else:
        text = input_file.path.read_text(encoding=_ENCODING, errors="replace")
        binary = _binary_text(text)
        if binary:
            report(f"{input_file.name}: {binary}")
            return None
    if text.strip():
        return Document(input_file.name, text)
    if not bad_lines:  # a transcript of bad lines was reported line by line already
        report(f"{input_file.name}: no text")
    return None


def _transcript_lines(input_file: _InputFile, report: BadRecordReporter) -> Iterator[str]:
    """A .jsonl transcript's utterances, `speaker: text` when a speaker is named.

    An utterance without text is no record and is passed over silently.
    """
    for lineno, line in _numbered_lines(input_file):
        if not line.strip():
            continue
        try:
            record = _json_object(line)
            text = _text_value(record, "text", "key").strip()
            binary = _binary_text(text)
            if binary:
                raise _BadRecord(f"key 'text': {binary}")
        except _BadRecord as bad:
            report(f"{input_file.name}:{lineno}: {bad}")
            continue
        if not text:
            continue
        speaker = record.get("speaker")
        yield f"{speaker}: {text}" if speaker not in (None, "") else text
