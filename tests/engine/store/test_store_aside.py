"""Setting a store aside for `--fresh`: renamed and whole, never destroyed.

Real SQLite files in `tmp_path`; the "other process" that holds a store open
or dies with its write-ahead log unmerged is a real child process.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

from engine.store.store_aside import StoreInUseError, set_store_aside

TIMEOUT_S = 60.0  # a hang guard only
NOON = time.mktime((2025, 3, 4, 12, 0, 0, 0, 0, -1))


def rows(db: Path) -> int:
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM results").fetchone()[0])


def write_and_die(db: Path, count: int) -> None:
    """A child commits `count` rows in WAL mode and dies before any checkpoint, like kill -9."""
    code = f"""
        import os, sqlite3
        conn = sqlite3.connect({str(db)!r}, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS results (n INTEGER)")
        for n in range({count}):
            conn.execute("INSERT INTO results VALUES (?)", (n,))
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=TIMEOUT_S)


def test_the_store_its_log_and_its_state_folder_move_to_a_timestamped_name(
    tmp_path: Path,
) -> None:
    db = tmp_path / "results.db"
    write_and_die(db, 50)
    assert (tmp_path / "results.db-wal").stat().st_size > 0  # the rows are still in the log
    folder = tmp_path / "results.db.crawldeck"
    folder.mkdir()
    (folder / "demo-sites.txt").write_text("site-0001.test\n", encoding="utf-8")

    aside = set_store_aside(db, now=NOON)

    assert aside == tmp_path / "results-20250304-120000.db"
    # The log was folded in: the renamed file alone holds every row.
    assert not (tmp_path / "results-20250304-120000.db-wal").exists()
    assert rows(aside) == 50
    kept = tmp_path / "results-20250304-120000.db.crawldeck" / "demo-sites.txt"
    assert kept.read_text(encoding="utf-8") == "site-0001.test\n"
    # Nothing is left where the new store will be made, not even a stale log.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("results.db")]
    assert leftovers == []


def test_setting_aside_twice_in_one_second_keeps_both(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    write_and_die(db, 3)
    first = set_store_aside(db, now=NOON)
    write_and_die(db, 7)

    second = set_store_aside(db, now=NOON)

    assert first == tmp_path / "results-20250304-120000.db"
    assert second == tmp_path / "results-20250304-120000-2.db"
    assert first is not None and second is not None
    assert (rows(first), rows(second)) == (3, 7)


def test_nothing_stored_yet_is_nothing_to_set_aside(tmp_path: Path) -> None:
    assert set_store_aside(tmp_path / "results.db", now=NOON) is None
    assert list(tmp_path.iterdir()) == []  # and no empty database was made


def test_a_store_another_process_has_open_is_refused_and_left_where_it_is(
    tmp_path: Path,
) -> None:
    db = tmp_path / "results.db"
    write_and_die(db, 5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sqlite3, sys
                conn = sqlite3.connect({str(db)!r}, isolation_level=None)
                conn.execute("SELECT count(*) FROM results").fetchone()  # open, then idle
                print("open", flush=True)
                sys.stdin.read()  # until the test lets go
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"

        with pytest.raises(StoreInUseError, match="open in another process"):
            set_store_aside(db, now=NOON)

        assert rows(db) == 5
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "results.db",
            "results.db-shm",
            "results.db-wal",
        ]
    finally:
        holder.communicate(input="", timeout=TIMEOUT_S)

    # Once the other process lets go, it moves.
    assert set_store_aside(db, now=NOON) == tmp_path / "results-20250304-120000.db"


def test_a_file_that_is_not_sqlite_is_moved_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "results.db"
    db.write_bytes(b"not a database, but someone's file\n")

    aside = set_store_aside(db, now=NOON)

    assert aside is not None
    assert aside.read_bytes() == b"not a database, but someone's file\n"
    assert not db.exists()
