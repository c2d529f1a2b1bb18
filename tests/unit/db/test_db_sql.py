"""%s placeholders translate to qmark outside literals; %% and literals are respected."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.db._sql import to_qmark


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
