"""%s placeholders translate to qmark outside literals; %% and literals are respected."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.db._sql import classify, to_qmark


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT %s", "SELECT ?"),
        ("SELECT * FROM t WHERE a = %s AND b = %s", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("SELECT %(user)s", "SELECT :user"),
        ("SELECT '100%%' , %s", "SELECT '100%' , ?"),
        ("SELECT 10 %% 3, %s", "SELECT 10 % 3, ?"),
        ("SELECT 'it''s', %s", "SELECT 'it''s', ?"),
        ('SELECT "a""b", %s', 'SELECT "a""b", ?'),
        ("SELECT 'a\\'b', %s", "SELECT 'a\\'b', ?"),
        ("SELECT `col%`, %s", "SELECT `col%`, ?"),
        ("SELECT 'x?', %s", "SELECT 'x?', ?"),
    ],
)
def test_translation(sql: str, expected: str) -> None:
    assert to_qmark(sql) == expected


@pytest.mark.parametrize("sql", ["SELECT '%s'", "SELECT * FROM t WHERE a LIKE 'x%(n)s'"])
def test_placeholder_inside_literal_is_refused(sql: str) -> None:
    with pytest.raises(ValueError, match="inside a quoted literal"):
        to_qmark(sql)


_plain = st.text(alphabet=st.sampled_from("abc 123,=()"), max_size=8)


@given(st.lists(_plain, min_size=1, max_size=6))
def test_every_placeholder_becomes_one_qmark(parts: list[str]) -> None:
    sql = "%s".join(parts)
    translated = to_qmark(sql)
    assert translated.count("?") == len(parts) - 1
    assert translated.replace("?", "%s") == sql


@given(st.text(alphabet=st.sampled_from("ab %"), max_size=12), st.integers(0, 5))
def test_literal_text_round_trips_through_sqlite(text: str, value: int) -> None:
    escaped = text.replace("%", "%%").replace("'", "''")
    sql = f"SELECT '{escaped}' AS text, %s AS value"
    conn = sqlite3.connect(":memory:")
    try:
        assert conn.execute(to_qmark(sql), [value]).fetchall() == [(text, value)]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sql", "read", "session_clean"),
    [
        ("SELECT 1", True, True),
        ("/* c */ select * from t", True, True),
        ("-- c\nSELECT 1", True, True),
        ("(SELECT 1) UNION (SELECT 2)", True, True),
        ("WITH a AS (SELECT 1) SELECT * FROM a", True, True),
        ("SHOW REPLICA STATUS", True, True),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE", True, True),
        ("SELECT 'DELETE', `update` FROM t", True, True),
        ("SELECT updated_at FROM t -- DELETE", True, True),
        ("SELECT 1 INTO @x", False, False),
        ("SELECT @n := @n + 1", True, False),
        ("SELECT GET_LOCK('job', 0)", True, False),
        ("INSERT INTO t VALUES (1) RETURNING id", False, True),
        ("WITH a AS (SELECT 1) UPDATE t SET x = 1", False, False),  # unknown shape: reset
        ("/*!50000 INSERT INTO t VALUES (1) */", False, True),
        ("DELETE FROM t RETURNING *", False, True),
        ("CREATE TABLE t (a INT)", False, True),
        ("CREATE TEMPORARY TABLE t (a INT)", False, False),
        ("SET @tenant = 'acme'", False, False),
        ("SET SESSION sql_mode = ''", False, False),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", False, False),
        ("CALL refresh()", False, False),
        ("BEGIN", False, True),
        ("BEGIN NOT ATOMIC SELECT 1; END", False, False),
        ("START TRANSACTION READ ONLY", False, True),
        ("COMMIT", False, True),
        ("PRAGMA query_only = ON", False, False),
    ],
)
def test_statements_are_classified_by_their_text(sql: str, read: bool, session_clean: bool) -> None:
    statement = classify(sql)
    assert (statement.read, statement.session_clean) == (read, session_clean)


def test_transaction_boundaries() -> None:
    assert classify("START TRANSACTION").begins
    assert classify("BEGIN WORK").begins
    assert classify("COMMIT").ends
    assert classify("ROLLBACK").ends
    assert not classify("ROLLBACK TO SAVEPOINT a").ends
    assert not classify("COMMIT AND CHAIN").ends


@pytest.mark.parametrize(
    ("sql", "commits"),
    [
        ("CREATE TABLE t (a INT)", True),
        ("/* why */ ALTER TABLE t ADD b INT", True),
        ("TRUNCATE t", True),
        ("LOCK TABLES t WRITE", True),
        ("BEGIN", True),
        ("SET autocommit = 1", True),
        ("CREATE TEMPORARY TABLE t (a INT)", False),
        ("DROP TEMPORARY TABLE t", False),
        ("INSERT INTO t VALUES (1)", False),
        ("SELECT * FROM t FOR UPDATE", False),
        ("SET @x = 1", False),
    ],
)
def test_what_commits_an_open_transaction_implicitly(sql: str, commits: bool) -> None:
    assert classify(sql).commits is commits
