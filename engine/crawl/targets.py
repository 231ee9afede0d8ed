"""Crawl targets read lazily from an operator's file, normalised and deduplicated.

A target file is one domain or URL a line (`#` starts a comment), a CSV
with a column of them, or JSONL with a field of them.  Everything streams:
lines are read and normalised one at a time, so a file of millions of
targets is never held in memory, and a bad line late in the file is only
met when the reader gets there.

Normalising makes one spelling of each site: the host is lower-cased and
IDNA-encoded, a bare domain becomes `https://host/` (marked so the fetcher
may retry it over http), default ports, fragments and a trailing dot go,
an empty path becomes `/`.  `dedupe_targets` then drops repeats using 8-byte
digests, not the URLs themselves.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

# The `idna` package (IDNA2008 with the UTS #46 mapping), not the stdlib's
# `encodings.idna` codec (IDNA2003): they disagree on real names — IDNA2003
# maps `faß.de` to `fass.de`, another registrant's domain, where IDNA2008
# gives `xn--fa-hia.de`, which registries (DENIC since 2010) and browsers
# use.  It is always installed: httpx2 and yarl (aiohttp) depend on it.
import idna

TargetFormat = Literal["auto", "text", "csv", "jsonl"]
ProblemReporter = Callable[[int, str], None]
"""Told about each skipped line: its number (from 1) and what is wrong."""

URL_COLUMNS = ("url", "domain", "host", "website")
"""CSV header names taken, in this order, when no column is named."""

JSON_FIELDS = ("url", "domain")
"""JSONL fields taken, in this order, when no field is named."""

_FORMAT_OF_SUFFIX: dict[str, TargetFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_ENCODING = "utf-8-sig"  # reads plain UTF-8 too, and drops a BOM from spreadsheet exports
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
# A scheme written without `//` (mailto:, javascript:) — but not `host:8080`.
_OPAQUE_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:(?!\d)")
# Underscores are not valid in host names but exist in DNS, and browsers fetch them.
_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Kept as they are when re-quoting a path or query: reserved characters and `%`,
# so an already-escaped URL is unchanged and a raw one gets the same spelling.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"
_INLINE_COMMENT = re.compile(r"\s#")
_SPACE = re.compile(r"\s")


class TargetError(ValueError):
    """A line that is not a crawlable target, or a target file that can't be read.

    `line` is the line number in the file (0 when the text came from elsewhere)
    and `reason` says what is wrong, without the number.
    """

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True, slots=True)
class Target:
    """One site or page to crawl.

    `url` is normalised (see `normalise_target`); `host` is its ASCII host
    without the port.  `fallback_http` is true when the operator gave no
    scheme, so https was assumed and http may be tried if it fails.
    """

    url: str
    host: str
    line: int
    fallback_http: bool


def normalise_target(text: str, line: int = 0) -> Target:
    """The one canonical spelling of a domain or http(s) URL.

    `example.com`, `https://EXAMPLE.com/` and `example.com/#top` all become
    `https://example.com/`.  Raises TargetError (carrying `line`) for other
    schemes, credentials, spaces, bad ports and names that are not hosts.
    """
    text = text.strip()
    if not text:
        raise TargetError("empty target", line)
    scheme = _SCHEME.match(text)
    if scheme and text.startswith("//", scheme.end()):
        return _normalised(text, line, fallback_http=False)
    if text.startswith("//"):  # scheme-relative, as copied from HTML
        return _normalised("https:" + text, line, fallback_http=True)
    opaque = _OPAQUE_SCHEME.match(text)
    if opaque:
        name = opaque.group()[:-1].lower()
        if name in _DEFAULT_PORTS:
            raise TargetError(f"no '//' after '{name}:'", line)
        raise TargetError(f"unsupported scheme {name!r}", line)
    return _normalised("https://" + text, line, fallback_http=True)


def link_target(url: str) -> Target | None:
    """An absolute link found on a page, normalised as `normalise_target` would,
    or None when it is not a crawlable http(s) URL (`line` is 0)."""
    scheme_match = _SCHEME.match(url)
    if not scheme_match or url[: scheme_match.end() - 1].lower() not in _DEFAULT_PORTS:
        return None
    try:
        return _normalised(url, 0, fallback_http=False)
    except TargetError:
        return None


def _normalised(text: str, line: int, fallback_http: bool) -> Target:
    if _SPACE.search(text):
        raise TargetError("contains whitespace", line)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a bad port or an unbalanced IPv6 bracket
        raise TargetError(f"not a URL ({exc})", line) from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise TargetError(f"unsupported scheme {scheme!r}", line)
    if "@" in parts.netloc:
        # Credentials in a target list would be sent to every redirect and logged.
        raise TargetError("credentials in the URL are not crawled", line)
    host = _ascii_host(parts.hostname or "")
    if isinstance(host, _HostProblem):
        raise TargetError(host.reason, line)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    query = quote(parts.query, safe=_QUERY_SAFE)
    url = f"{scheme}://{netloc}{path}?{query}" if query else f"{scheme}://{netloc}{path}"
    return Target(url=url, host=host, line=line, fallback_http=fallback_http)


@dataclass(frozen=True, slots=True)
class _HostProblem:
    reason: str


# Cached because a page's links and a big target list repeat the same hosts,
# and IDNA encoding costs ~12 µs a name.
@lru_cache(maxsize=4096)
def _ascii_host(host: str) -> str | _HostProblem:
    """The host lower-cased, IDNA-encoded and checked, or what is wrong with it."""
    host = host.rstrip(".")  # `example.com.` is the same name, fully qualified
    if not host:
        return _HostProblem("no host")
    try:
        return str(ipaddress.ip_address(host))  # also gives IPv6 its short spelling
    except ValueError:
        pass
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            return _HostProblem(f"not a host name ({exc})")
    labels = host.split(".")
    if len(labels) < 2 and host != "localhost":
        return _HostProblem(f"not a domain name: {host!r} has no dot")
    if len(host) > 253 or not all(_ASCII_LABEL.fullmatch(label) for label in labels):
        return _HostProblem(f"not a host name: {host!r}")
    if labels[-1].isdigit():  # `1.2.3` or `10.0.0.300`: an address, and not a valid one
        return _HostProblem(f"not an IP address: {host!r}")
    if "xn--" in host:
        try:  # a punycode label copied from somewhere must decode to a valid name
            idna.decode(host)
        except idna.IDNAError as exc:
            return _HostProblem(f"not a host name ({exc})")
    return host


def dedupe_targets(targets: Iterable[Target]) -> Iterator[Target]:
    """`targets` without repeats of the same normalised URL; the first one wins.

    Keeps one 8-byte blake2b digest per distinct URL, held as an int, so memory
    grows by about 73 bytes a target (measured with tracemalloc: 73 MB for a
    million, the set's table included) whatever the URLs' length.  Odds of a
    collision, which would drop a target, are about 3 in 10^8 at a million.
    """
    seen: set[int] = set()
    for target in targets:
        digest = hashlib.blake2b(target.url.encode("utf-8"), digest_size=8).digest()
        key = int.from_bytes(digest, "big")
        if key not in seen:
            seen.add(key)
            yield target


def read_targets(
    path: Path,
    column: str | None = None,
    *,
    fmt: TargetFormat = "auto",
    on_problem: ProblemReporter | None = None,
) -> Iterator[Target]:
    """Every target in the file at `path`, read and normalised lazily, in order.

    The format comes from the suffix (`.csv`, `.jsonl`/`.ndjson`, anything else
    is text) unless `fmt` says.  Text: one target a line; blank lines and
    comments (a line starting with `#`, or ` #…` after a target) are skipped.
    CSV: the column named `column`, or else the first header named url,
    domain, host or website (any case), or else the first column; a file
    whose first cell is already a target has no header.  JSONL: the field
    `column`, or else `url`, then `domain`.

    A line that is not a target is skipped and described to `on_problem`
    with its line number; without one it raises TargetError.  A missing
    file or a CSV without the named column raises TargetError when iteration
    starts, before any target.
    """
    report = on_problem if on_problem is not None else _raise_problem
    resolved = _FORMAT_OF_SUFFIX.get(path.suffix.lower(), "text") if fmt == "auto" else fmt
    if resolved == "csv":
        return _csv_targets(path, column, report)
    if resolved == "jsonl":
        return _jsonl_targets(path, column, report)
    return _text_targets(path, report)


def _raise_problem(line: int, message: str) -> None:
    raise TargetError(message, line)


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        handle = path.open(encoding=_ENCODING, errors="replace", newline="")
    except OSError as exc:
        raise TargetError(f"can't read targets from {path}: {exc.strerror}") from None
    with handle:
        yield from enumerate(handle, start=1)


def _text_targets(path: Path, report: ProblemReporter) -> Iterator[Target]:
    for lineno, line in _numbered_lines(path):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        comment = _INLINE_COMMENT.search(text)
        if comment:  # a fragment's `#` never follows whitespace inside a URL
            text = text[: comment.start()].rstrip()
        target = _checked(text, lineno, report)
        if target is not None:
            yield target


def _checked(text: str, lineno: int, report: ProblemReporter) -> Target | None:
    try:
        return normalise_target(text, lineno)
    except TargetError as bad:
        report(lineno, bad.reason)
        return None


def _jsonl_targets(path: Path, field: str | None, report: ProblemReporter) -> Iterator[Target]:
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        text = _json_target_text(line, field)
        if isinstance(text, _Problem):
            report(lineno, text.message)
            continue
        target = _checked(text, lineno, report)
        if target is not None:
            yield target


@dataclass(frozen=True, slots=True)
class _Problem:
    message: str


def _json_target_text(line: str, field: str | None) -> str | _Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return _Problem(f"not JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict):
        return _Problem(f"not a JSON object ({type(record).__name__})")
    names = (field,) if field is not None else JSON_FIELDS
    key = next((name for name in names if name in record), None)
    if key is None:
        return _Problem(f"no field {' or '.join(repr(name) for name in names)}")
    value = record[key]
    if not isinstance(value, str):
        return _Problem(f"field {key!r} is not text ({type(value).__name__})")
    return value


def _csv_targets(path: Path, column: str | None, report: ProblemReporter) -> Iterator[Target]:
    # Long cells (a URL with a huge query) exceed the 128 KiB default; the
    # bound keeps within a C long on every platform.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # `line_num` counts physical lines read, so a quoted cell spanning lines
    # still leaves the number of the row's last line, as an editor shows it.
    reader = csv.reader(line for _, line in _numbered_lines(path))
    try:
        first = next(reader, None)
    except csv.Error as exc:
        raise TargetError(f"not CSV ({exc})", reader.line_num) from None
    if first is None:
        return
    index, has_header = _csv_column(first, column)
    if not has_header:
        yield from _csv_cell_target(first, index, reader.line_num, report)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            report(reader.line_num, f"not CSV ({exc})")
            continue
        yield from _csv_cell_target(row, index, reader.line_num, report)


def _csv_column(first_row: list[str], column: str | None) -> tuple[int, bool]:
    """The index of the targets' column, and whether `first_row` is a header."""
    names = [cell.strip() for cell in first_row]
    if column is not None:
        if column in names:
            return names.index(column), True
        raise TargetError(f"no column {column!r} (columns: {', '.join(names)})", 1)
    lowered = [name.lower() for name in names]
    for wanted in URL_COLUMNS:
        if wanted in lowered:
            return lowered.index(wanted), True
    try:
        normalise_target(names[0] if names else "")
    except TargetError:
        return 0, True
    return 0, False  # the first cell is already a target: the file has no header


def _csv_cell_target(
    row: list[str], index: int, lineno: int, report: ProblemReporter
) -> Iterator[Target]:
    if not any(cell.strip() for cell in row):
        return  # blank line
    if index >= len(row):
        report(lineno, f"row has {len(row)} columns, the targets are in column {index + 1}")
        return
    cell = row[index].strip()
    if not cell:
        report(lineno, "empty target")
        return
    target = _checked(cell, lineno, report)
    if target is not None:
        yield target
