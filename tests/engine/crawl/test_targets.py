"""Reading crawl targets: normalising, deduplicating, and streaming from files."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.crawl.targets import (
    Target,
    TargetError,
    dedupe_targets,
    link_target,
    normalise_target,
    read_targets,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_with_problems(path: Path, column: str | None = None) -> tuple[list[Target], list[str]]:
    problems: list[str] = []
    targets = list(
        read_targets(path, column, on_problem=lambda line, msg: problems.append(f"{line}: {msg}"))
    )
    return targets, problems


# --- normalising ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("bücher.de", "https://xn--bcher-kva.de/"),
        ("BÜCHER.DE/Katalog", "https://xn--bcher-kva.de/Katalog"),
        ("例え.テスト", "https://xn--r8jz45g.xn--zckzah/"),
        # IDNA2008 keeps ß; IDNA2003 (the stdlib codec) would give fass.de, another domain.
        ("faß.de", "https://xn--fa-hia.de/"),
    ],
)
def test_internationalised_names_are_idna_encoded(text: str, url: str) -> None:
    assert normalise_target(text).url == url


def test_a_bare_domain_gets_https_and_may_fall_back_to_http() -> None:
    target = normalise_target("  Example.COM  ", line=7)

    assert target == Target(
        url="https://example.com/", host="example.com", line=7, fallback_http=True
    )


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("http://example.com", "http://example.com/"),
        ("HTTPS://Example.com/Path?q=1", "https://example.com/Path?q=1"),
        ("https://example.com/page#section", "https://example.com/page"),
        ("https://example.com:443/", "https://example.com/"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("http://example.com:8080", "http://example.com:8080/"),
        ("https://example.com./", "https://example.com/"),
        ("https://example.com/caf\u00e9?q=\u00fc", "https://example.com/caf%C3%A9?q=%C3%BC"),
        ("https://example.com/caf%C3%A9", "https://example.com/caf%C3%A9"),
        ("http://127.0.0.1:8000/x", "http://127.0.0.1:8000/x"),
        ("http://[0:0::1]:9000/", "http://[::1]:9000/"),
        ("localhost:8000", "https://localhost:8000/"),
    ],
)
def test_explicit_urls_keep_their_scheme_and_get_one_spelling(text: str, url: str) -> None:
    target = normalise_target(text)

    assert target.url == url
    assert target.fallback_http is (not text.lower().startswith("http"))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ftp://example.com/file", "unsupported scheme 'ftp'"),
        ("mailto:someone@example.com", "unsupported scheme 'mailto'"),
        ("javascript:alert(1)", "unsupported scheme 'javascript'"),
        ("https:example.com", "no '//' after 'https:'"),
        ("example .com", "contains whitespace"),
        ("https://user:secret@example.com/", "credentials"),
        ("N/A", "has no dot"),
        ("https://example.com:99999/", "not a URL"),
        ("exa$mple.com", "not a host name"),
        ("-example.com", "not a host name"),
        ("a..b.com", "not a host name"),
        ("10.0.0.300", "not an IP address"),
        ("xn--zz.com", "not a host name"),
        ("https://", "no host"),
    ],
)
def test_junk_is_rejected_with_a_reason_and_the_line(text: str, reason: str) -> None:
    with pytest.raises(TargetError) as raised:
        normalise_target(text, line=12)

    assert reason in raised.value.reason
    assert raised.value.line == 12
    assert str(raised.value).startswith("line 12: ")


def test_link_target_reads_absolute_http_links_only() -> None:
    link = link_target("https://Example.com/a#b")

    assert link is not None and link.url == "https://example.com/a"
    assert not link.fallback_http
    assert link_target("example.com/a") is None  # a page's link without a scheme is relative
    assert link_target("mailto:a@example.com") is None
    assert link_target("https://exa mple.com/") is None


# --- deduplicating ------------------------------------------------------------------


def test_spellings_of_one_site_are_one_target_and_the_first_wins() -> None:
    spellings = ["example.com", "https://EXAMPLE.com/", "example.com/", "https://example.com/#x"]
    targets = [normalise_target(text, line) for line, text in enumerate(spellings, start=1)]

    assert list(dedupe_targets(targets)) == [targets[0]]


def test_different_schemes_paths_and_ports_stay_distinct() -> None:
    texts = ["example.com", "http://example.com", "example.com/a", "example.com:8443"]
    targets = [normalise_target(text) for text in texts]

    assert [t.url for t in dedupe_targets(targets)] == [
        "https://example.com/",
        "http://example.com/",
        "https://example.com/a",
        "https://example.com:8443/",
    ]


def test_dedupe_keeps_digests_not_urls() -> None:
    count = 100_000
    path = "/" + "p" * 300  # every URL string costs more than 350 bytes

    def long_targets() -> Iterator[Target]:
        for i in range(count):
            yield Target(f"https://site{i}.example.com{path}", "h", i, fallback_http=False)

    tracemalloc.start()
    try:
        kept = sum(1 for _ in dedupe_targets(long_targets()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert kept == count
    # An int digest (36 bytes) and its set slot: well under the URL's own size.
    assert peak / count < 150


# --- reading files ---------------------------------------------------------------------


def test_plain_text_skips_blanks_and_comments_and_numbers_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.txt",
        "# our crawl list\n\nexample.com\n  bücher.de  # the bookshop\nhttp://example.org/a#top\n",
    )

    targets, problems = read_with_problems(path)

    assert [(t.line, t.url) for t in targets] == [
        (3, "https://example.com/"),
        (4, "https://xn--bcher-kva.de/"),
        (5, "http://example.org/a"),
    ]
    assert problems == []


def test_bad_lines_are_reported_with_their_numbers_and_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.txt", "example.com\nftp://files.example.com\nfoo\nexample.org\n"
    )

    targets, problems = read_with_problems(path)

    assert [t.url for t in targets] == ["https://example.com/", "https://example.org/"]
    assert problems == ["2: unsupported scheme 'ftp'", "3: not a domain name: 'foo' has no dot"]


def test_without_a_reporter_a_bad_line_raises_with_its_number(tmp_path: Path) -> None:
    path = write(tmp_path / "targets.txt", "example.com\n\nmailto:x@example.com\n")

    with pytest.raises(TargetError, match="line 3: unsupported scheme 'mailto'"):
        list(read_targets(path))


def test_reading_streams_so_later_lines_are_not_read_before_they_are_needed(
    tmp_path: Path,
) -> None:
    # Every line after the first would raise (no reporter) if it were read.
    path = write(tmp_path / "targets.txt", "example.com\n" + "not a target\n" * 200_000)

    targets = read_targets(path)

    assert next(targets).url == "https://example.com/"
    with pytest.raises(TargetError, match="line 2: "):
        next(targets)


def test_csv_takes_the_url_column_by_its_usual_names(tmp_path: Path) -> None:
    path = write(
        tmp_path / "sites.csv",
        "\ufeffname,Website,notes\n"  # a spreadsheet's BOM and capitalised header
        'Books,bücher.de,"multi\nline note"\n'
        "Shop,https://shop.example.com/,\n",
    )

    targets, problems = read_with_problems(path)

    assert [(t.line, t.url) for t in targets] == [
        (3, "https://xn--bcher-kva.de/"),  # the row ends on line 3
        (4, "https://shop.example.com/"),
    ]
    assert problems == []


def test_csv_takes_a_named_column(tmp_path: Path) -> None:
    path = write(tmp_path / "sites.csv", "url,mirror\nexample.com,mirror.example.com\n")

    targets, _ = read_with_problems(path, column="mirror")

    assert [t.url for t in targets] == ["https://mirror.example.com/"]


def test_csv_without_a_known_header_uses_the_first_column(tmp_path: Path) -> None:
    path = write(tmp_path / "sites.csv", "site,rank\nexample.com,1\nexample.org,2\n")

    targets, _ = read_with_problems(path)

    assert [t.url for t in targets] == ["https://example.com/", "https://example.org/"]


def test_csv_whose_first_row_is_a_target_has_no_header(tmp_path: Path) -> None:
    path = write(tmp_path / "sites.csv", "example.com,1\nexample.org,2\n")

    targets, _ = read_with_problems(path)

    assert [(t.line, t.url) for t in targets] == [
        (1, "https://example.com/"),
        (2, "https://example.org/"),
    ]


def test_csv_reports_short_rows_and_empty_cells(tmp_path: Path) -> None:
    path = write(tmp_path / "sites.csv", "id,url\n1,example.com\n2\n3,\n\n4,example.org\n")

    targets, problems = read_with_problems(path)

    assert [t.url for t in targets] == ["https://example.com/", "https://example.org/"]
    assert problems == ["3: row has 1 columns, the targets are in column 2", "4: empty target"]


def test_csv_missing_the_named_column_fails_before_any_target(tmp_path: Path) -> None:
    path = write(tmp_path / "sites.csv", "url\nexample.com\n")

    with pytest.raises(TargetError, match="no column 'domain'"):
        next(read_targets(path, "domain", on_problem=lambda line, message: None))


def test_jsonl_takes_url_then_domain_and_reports_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"url": "https://example.com/a", "domain": "ignored.example"}),
        json.dumps({"domain": "bücher.de"}),
        "{not json",
        json.dumps(["example.net"]),
        json.dumps({"site": "example.org"}),
        json.dumps({"url": 42}),
        "",
    ]
    path = write(tmp_path / "sites.jsonl", "\n".join(lines) + "\n")

    targets, problems = read_with_problems(path)

    assert [(t.line, t.url) for t in targets] == [
        (1, "https://example.com/a"),
        (2, "https://xn--bcher-kva.de/"),
    ]
    assert [problem.split(":")[0] for problem in problems] == ["3", "4", "5", "6"]
    assert "not JSON" in problems[0]
    assert "not a JSON object" in problems[1]
    assert "no field 'url' or 'domain'" in problems[2]
    assert "not text" in problems[3]


def test_jsonl_takes_a_named_field(tmp_path: Path) -> None:
    path = write(tmp_path / "sites.ndjson", json.dumps({"url": "a.example", "home": "b.example"}))

    targets, _ = read_with_problems(path, column="home")

    assert [t.url for t in targets] == ["https://b.example/"]


def test_a_missing_file_is_a_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="can't read targets"):
        list(read_targets(tmp_path / "absent.txt"))


def test_reading_and_deduping_a_file_with_repeats(tmp_path: Path) -> None:
    path = write(
        tmp_path / "targets.txt", "example.com\nhttps://EXAMPLE.com/\nexample.com/\nexample.org\n"
    )

    kept = list(dedupe_targets(read_targets(path)))

    assert [(t.line, t.url) for t in kept] == [
        (1, "https://example.com/"),
        (4, "https://example.org/"),
    ]
