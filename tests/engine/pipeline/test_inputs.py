"""Reading documents from files, directories and globs."""

from __future__ import annotations

import json
import random
import re
import tracemalloc
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from engine.config.settings import InputFormat, JobSettings
from engine.pipeline.inputs import InputError, iter_documents, resolve_input_format
from engine.pipeline.records import Document
from engine.simulation.make_transcripts import DEFAULT_DIRECTORY, write_transcripts


def job_for(
    path: Path | str,
    input_format: InputFormat = "auto",
    text_field: str = "text",
    id_field: str = "",
) -> JobSettings:
    return JobSettings(
        input=str(path), input_format=input_format, text_field=text_field, id_field=id_field
    )


def read_all(job: JobSettings) -> tuple[list[Document], list[str]]:
    problems: list[str] = []
    return list(iter_documents(job, problems.append)), problems


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- text ----------------------------------------------------------------------


def test_text_is_one_record_per_non_empty_line_named_by_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "first line\n\n   \n  second line  \nthird\n")

    docs, problems = read_all(job_for(path, "text"))

    assert docs == [
        Document("notes.txt#L1", "first line"),
        Document("notes.txt#L4", "second line"),
        Document("notes.txt#L5", "third"),
    ]
    assert problems == []


# --- csv -----------------------------------------------------------------------


def test_csv_takes_the_text_column_and_names_rows_by_number(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", 'title,text\nA,"hello, world"\nB,second\n')

    docs, _ = read_all(job_for(path))

    assert docs == [Document("rows.csv#1", "hello, world"), Document("rows.csv#2", "second")]


def test_csv_names_rows_by_the_id_column_when_given(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "id,body\nq-17,first\nq-18,second\n")

    docs, _ = read_all(job_for(path, text_field="body", id_field="id"))

    assert [doc.source for doc in docs] == ["rows.csv#q-17", "rows.csv#q-18"]
    assert [doc.text for doc in docs] == ["first", "second"]


def test_csv_reports_a_row_without_the_column_and_reads_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "id,text\n1,fine\n2\n3,also fine\n")

    docs, problems = read_all(job_for(path, id_field="id"))

    assert [doc.source for doc in docs] == ["rows.csv#1", "rows.csv#3"]
    assert problems == ["rows.csv:3: column 'text' missing"]


def test_csv_without_the_text_column_fails_before_reading_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "id,body\n1,hello\n")

    with pytest.raises(InputError, match=r"rows\.csv: no column 'text' \(columns: id, body\)"):
        iter_documents(job_for(path), print)


def test_csv_reads_a_spreadsheet_bom_and_long_cells(tmp_path: Path) -> None:
    long_text = "word " * 40_000  # past the csv module's default field limit
    (tmp_path / "export.csv").write_text(f"\ufefftext\n{long_text}\n", encoding="utf-8")

    docs, _ = read_all(job_for(tmp_path / "export.csv"))

    assert [len(doc.text) for doc in docs] == [len(long_text)]


# --- jsonl -----------------------------------------------------------------------


def test_jsonl_names_records_by_line_or_by_the_id_key(tmp_path: Path) -> None:
    lines = [{"id": 7, "text": "seven"}, {"id": "b", "text": "bee"}]
    path = write(tmp_path / "data.jsonl", "".join(json.dumps(line) + "\n" for line in lines))

    by_line, _ = read_all(job_for(path))
    by_id, _ = read_all(job_for(path, id_field="id"))

    assert [doc.source for doc in by_line] == ["data.jsonl#1", "data.jsonl#2"]
    assert by_id == [Document("data.jsonl#7", "seven"), Document("data.jsonl#b", "bee")]


def test_jsonl_skipped_records_are_reported_with_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.jsonl",
        '{"text": "one"}\n'
        "not json at all\n"
        '{"body": "no text key"}\n'
        '{"text": 42}\n'
        "[1, 2]\n"
        '{"text": ""}\n'
        '{"text": null}\n'
        "\n"
        '{"text": "last"}\n',
    )

    docs, problems = read_all(job_for(path))

    assert [doc.source for doc in docs] == ["data.jsonl#1", "data.jsonl#9"]
    assert problems == [
        "data.jsonl:2: not JSON (Expecting value: line 1 column 1)",
        "data.jsonl:3: key 'text' missing",
        "data.jsonl:4: key 'text' is not text (int)",
        "data.jsonl:5: not a JSON object (list)",
        "data.jsonl:6: key 'text' is empty",
        "data.jsonl:7: key 'text' is empty",
    ]


def test_a_missing_id_is_a_bad_record(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "a", "id": "x"}\n{"text": "b"}\n')

    docs, problems = read_all(job_for(path, id_field="id"))

    assert [doc.source for doc in docs] == ["data.jsonl#x"]
    assert problems == ["data.jsonl:2: key 'id' missing"]


def test_without_a_reporter_a_bad_record_raises_after_the_good_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "good"}\n{"other": 1}\n')
    documents = iter_documents(job_for(path))

    assert next(documents) == Document("data.jsonl#1", "good")
    with pytest.raises(InputError, match=r"^data\.jsonl:2: key 'text' missing$"):
        next(documents)


def test_csv_rows_without_text_are_reported_and_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "rows.csv", "id,text\n1,fine\n2,\n3,   \n4,also fine\n")

    docs, problems = read_all(job_for(path, id_field="id"))

    assert [doc.source for doc in docs] == ["rows.csv#1", "rows.csv#4"]
    assert problems == ["rows.csv:3: column 'text' is empty", "rows.csv:4: column 'text' is empty"]


# --- binary data ---------------------------------------------------------------------


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def test_a_single_input_file_of_binary_data_fails_at_once_in_one_line(tmp_path: Path) -> None:
    for name, data in [
        ("blob.jsonl", random_bytes(50_000)),
        ("blob.txt", random_bytes(50_000)),
        ("blob.csv", random_bytes(50_000)),
        ("utf16.txt", "text saved as UTF-16".encode("utf-16")),
    ]:
        path = tmp_path / name
        path.write_bytes(data)

        with pytest.raises(InputError) as raised:
            iter_documents(job_for(path), print)

        assert str(raised.value).startswith(f"{path}: not text: ")
        assert "\n" not in str(raised.value)
        assert "\ufffd" not in str(raised.value)  # no garbage echoed back


def test_a_binary_file_among_documents_is_reported_and_the_rest_are_read(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.txt", "A real document.")
    (tmp_path / "b.md").write_bytes(random_bytes(20_000))
    # No NUL bytes, so only the share of undecodable characters can tell.
    (tmp_path / "c.txt").write_bytes(bytes(b | 0x80 for b in random_bytes(20_000)))
    write(tmp_path / "d.txt", "Another one.")

    docs, problems = read_all(job_for(tmp_path))

    assert [doc.source for doc in docs] == ["a.txt", "d.txt"]
    assert problems[0] == "b.md: not text: NUL bytes in its first 8 KiB (a binary file, or UTF-16)"
    assert re.fullmatch(
        r"c\.txt: not text: \d\d% undecodable or control characters "
        r"\(binary data, or not UTF-8\)",
        problems[1],
    )
    assert len(problems) == 2


def test_text_in_a_legacy_encoding_is_kept_with_its_few_undecodable_letters(
    tmp_path: Path,
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes("Le café était fermé, hélas.\nÜber Straßen.\n".encode("latin-1"))

    docs, problems = read_all(job_for(path, "text"))

    assert [doc.text for doc in docs] == [
        "Le caf\ufffd \ufffdtait ferm\ufffd, h\ufffdlas.",
        "\ufffdber Stra\ufffden.",
    ]
    assert problems == []


def test_binary_lines_and_values_are_reported_as_records_and_skipped(tmp_path: Path) -> None:
    junk = bytes(b | 0x80 for b in random_bytes(300)).replace(b"\n", b"")
    text_file = tmp_path / "log.txt"
    # Mostly text, so the file as a whole is text and only the junk line is not.
    text_file.write_bytes(b"first line " * 60 + b"\n" + junk + b"\nlast line\n")
    controls = "".join(chr(c) for c in range(1, 9)) * 10
    jsonl_file = write(
        tmp_path / "data.jsonl",
        json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": controls}) + "\n",
    )

    lines, line_problems = read_all(job_for(text_file, "text"))
    records, record_problems = read_all(job_for(jsonl_file))

    assert [doc.source for doc in lines] == ["log.txt#L1", "log.txt#L3"]
    assert [p.split(": not text:")[0] for p in line_problems] == ["log.txt:2"]
    assert [doc.text for doc in records] == ["fine"]
    assert [p.split(": not text:")[0] for p in record_problems] == ["data.jsonl:2: key 'text'"]


# --- documents ---------------------------------------------------------------------


def test_a_directory_is_read_recursively_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "b.md", "# B")
    write(root / "a" / "z.txt", "A/Z")
    write(root / "a" / "deeper" / "x.txt", "A/DEEPER/X")
    write(root / "c.txt", "C")
    write(root / "ignored.csv", "text\nnot a document\n")
    write(root / ".hidden" / "secret.txt", "hidden")
    write(root / "empty.txt", "  \n")

    docs, problems = read_all(job_for(root))

    assert [doc.source for doc in docs] == ["a/deeper/x.txt", "a/z.txt", "b.md", "c.txt"]
    assert [doc.text for doc in docs] == ["A/DEEPER/X", "A/Z", "# B", "C"]
    assert problems == ["empty.txt: no text"]


def test_a_jsonl_transcript_is_one_document_of_speaker_lines(tmp_path: Path) -> None:
    lines = [
        {"ts": "00:00:01", "speaker": "Ada", "text": "Shall we start?"},
        {"text": "(laughter)"},
        {"speaker": "Bob", "text": "  Yes.  "},
    ]
    write(tmp_path / "call.jsonl", "".join(json.dumps(line) + "\n" for line in lines))

    docs, _ = read_all(job_for(tmp_path))

    assert docs == [Document("call.jsonl", "Ada: Shall we start?\n(laughter)\nBob: Yes.")]


def test_a_bad_transcript_line_is_reported_and_skipped(tmp_path: Path) -> None:
    write(tmp_path / "call.jsonl", '{"speaker": "Ada", "text": "Hi."}\n{"speaker": "Bob"}\n')

    docs, problems = read_all(job_for(tmp_path))

    assert docs == [Document("call.jsonl", "Ada: Hi.")]
    assert problems == ["call.jsonl:2: key 'text' missing"]


def test_a_single_text_file_is_one_document_named_by_its_file(tmp_path: Path) -> None:
    path = write(tmp_path / "deep" / "report.md", "# Report\n\nTwo paragraphs.\n")

    docs, _ = read_all(job_for(path))

    assert docs == [Document("report.md", "# Report\n\nTwo paragraphs.\n")]


def test_a_glob_reads_matching_files_named_from_the_glob_root(tmp_path: Path) -> None:
    write(tmp_path / "data" / "2024" / "b.txt", "B")
    write(tmp_path / "data" / "2023" / "a.txt", "A")
    write(tmp_path / "data" / "2024" / "notes.md", "not matched")

    docs, _ = read_all(job_for(tmp_path / "data" / "**" / "*.txt"))

    assert docs == [Document("2023/a.txt", "A"), Document("2024/b.txt", "B")]


def test_a_glob_of_csv_files_reads_each_as_csv(tmp_path: Path) -> None:
    write(tmp_path / "part-2.csv", "text\ntwo\n")
    write(tmp_path / "part-1.csv", "text\none\n")

    docs, _ = read_all(job_for(tmp_path / "part-*.csv"))

    assert docs == [Document("part-1.csv#1", "one"), Document("part-2.csv#1", "two")]


def test_a_path_with_wildcard_characters_that_exists_is_a_path(tmp_path: Path) -> None:
    path = write(tmp_path / "draft[1].txt", "Draft one.")

    docs, _ = read_all(job_for(path))

    assert docs == [Document("draft[1].txt", "Draft one.")]


# --- resolving the input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("rows.csv", "csv"),
        ("rows.jsonl", "jsonl"),
        ("notes.txt", "documents"),
        ("notes.md", "documents"),
    ],
)
def test_auto_picks_the_format_from_the_suffix(tmp_path: Path, name: str, expected: str) -> None:
    path = write(tmp_path / name, "text\n")

    assert resolve_input_format(job_for(path)) == expected


def test_auto_reads_directories_and_globs_as_documents(tmp_path: Path) -> None:
    assert resolve_input_format(job_for(tmp_path)) == "documents"
    assert resolve_input_format(job_for(tmp_path / "*.txt")) == "documents"


def test_an_explicit_format_wins_over_the_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "export.log", "one\ntwo\n")

    docs, _ = read_all(job_for(path, "text"))

    assert [doc.source for doc in docs] == ["export.log#L1", "export.log#L2"]


def test_an_unknown_suffix_asks_for_a_format(tmp_path: Path) -> None:
    path = write(tmp_path / "export.log", "one\n")

    with pytest.raises(InputError, match="set input_format"):
        iter_documents(job_for(path))


def test_a_missing_input_fails_at_once_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"

    with pytest.raises(InputError, match=re.escape(f"input not found: {missing}")):
        iter_documents(job_for(missing))


def test_an_input_with_nothing_to_read_fails_at_once(tmp_path: Path) -> None:
    write(tmp_path / "only.csv", "text\nx\n")

    with pytest.raises(InputError, match="no files to read"):
        iter_documents(job_for(tmp_path))
    with pytest.raises(InputError, match=r"nothing matches .*\*\.md"):
        iter_documents(job_for(tmp_path / "*.md"))


def test_input_errors_are_value_errors() -> None:
    assert issubclass(InputError, ValueError)


# --- streaming ------------------------------------------------------------------------


def test_reading_is_lazy_a_huge_file_is_not_loaded(tmp_path: Path) -> None:
    line = json.dumps({"text": "a record of some length " * 4}) + "\n"
    path = tmp_path / "huge.jsonl"
    path.write_text(line * 200_000, encoding="utf-8")  # about 20 MB
    file_size = path.stat().st_size

    tracemalloc.start()
    try:
        first = list(islice(iter_documents(job_for(path)), 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert [doc.source for doc in first] == ["huge.jsonl#1", "huge.jsonl#2", "huge.jsonl#3"]
    assert peak < file_size / 50


# --- the bundled sample ---------------------------------------------------------------


def test_the_bundled_transcripts_read_as_150_documents_of_each_kind() -> None:
    docs, problems = read_all(job_for(DEFAULT_DIRECTORY))

    assert problems == []
    assert len(docs) == 150
    assert Counter(Path(doc.source).suffix for doc in docs) == {
        ".txt": 100,
        ".md": 25,
        ".jsonl": 25,
    }
    assert all(1500 <= len(doc.text.encode()) <= 6144 for doc in docs)
    assert len({doc.text[:400] for doc in docs}) == 150


def test_the_bundled_transcripts_are_what_the_generator_writes(tmp_path: Path) -> None:
    written = write_transcripts(tmp_path)

    bundled = sorted(path.name for path in DEFAULT_DIRECTORY.iterdir())
    assert sorted(path.name for path in written) == bundled
    for path in written:
        assert path.read_bytes() == (DEFAULT_DIRECTORY / path.name).read_bytes(), path.name


def test_the_generator_replaces_its_earlier_output_only(tmp_path: Path) -> None:
    write(tmp_path / "999-meeting-stale.txt", "from an earlier run")
    write(tmp_path / "README", "kept")

    written = write_transcripts(tmp_path, count=3, seed=5)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [path.name for path in written] + ["README"]
    )
