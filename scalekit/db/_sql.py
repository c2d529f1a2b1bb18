"""SQL text: ``%s`` placeholders for every driver, and what a statement is by its text."""

from __future__ import annotations

import dataclasses
import functools

__all__ = ["Statement", "classify", "is_read", "to_qmark"]

_QUOTES = frozenset("'\"`")


def _scan(sql: str, positional: str, named_prefix: str) -> str:
    out: list[str] = []
    i = 0
    n = len(sql)
    quote = ""
    while i < n:
        char = sql[i]
        if quote:
            if char == quote:
                if i + 1 < n and sql[i + 1] == quote:  # doubled quote inside a literal
                    out.append(char * 2)
                    i += 2
                    continue
                quote = ""
            elif char == "\\" and quote != "`" and i + 1 < n:
                out.append(sql[i : i + 2])
                i += 2
                continue
            elif char == "%" and i + 1 < n:
                following = sql[i + 1]
                if following == "%":
                    out.append("%")
                    i += 2
                    continue
                if following in "s(":
                    raise ValueError(
                        f"a %s placeholder inside a quoted literal at offset {i} of {sql!r}: "
                        "pass the whole value as a parameter instead (e.g. LIKE %s with "
                        "params ['abc%'])"
                    )
            out.append(char)
            i += 1
            continue
        if char in _QUOTES:
            quote = char
        elif char == "%" and i + 1 < n:
            following = sql[i + 1]
            if following == "s":
                out.append(positional)
                i += 2
                continue
            if following == "%":
                out.append("%")
                i += 2
                continue
            if following == "(":
                end = sql.find(")s", i + 2)
                if end != -1:
                    out.append(named_prefix + sql[i + 2 : end])
                    i = end + 2
                    continue
        out.append(char)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def to_qmark(sql: str) -> str:
    """``%s`` → ``?`` and ``%(name)s`` → ``:name`` outside quoted literals; ``%%`` → ``%``.

    Raises:
        ValueError: a placeholder sits inside a quoted literal, where pymysql
            and sqlite3 would disagree about it.
    """
    return _scan(sql, "?", ":")


# -- what a statement is, by its text ------------------------------------------------

_READ_FIRST = frozenset(
    {"SELECT", "SHOW", "WITH", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE"}
)
_DML_FIRST = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
# Schema changes leave no session state, unless they touch a TEMPORARY table.
_DDL_FIRST = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME"})
_TRANSACTION_FIRST = frozenset({"BEGIN", "START", "COMMIT", "ROLLBACK", "END"})
# ``BEGIN`` alone or with these (``BEGIN NOT ATOMIC … END`` is a compound statement).
_BEGIN_WORDS = frozenset({"WORK", "TRANSACTION", "DEFERRED", "IMMEDIATE", "EXCLUSIVE"})
# Words that make a read-looking statement change data, call code or fill variables.
_CHANGES = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "INTO", "CALL", "LOAD", "CREATE", "DROP",
     "ALTER", "TRUNCATE", "RENAME", "GRANT", "REVOKE", "SET", "DO", "HANDLER", "OUTFILE"}
)  # fmt: skip
# Statements MariaDB runs only after committing the open transaction (besides DDL).
_COMMITS_FIRST = frozenset(
    {"LOCK", "UNLOCK", "GRANT", "REVOKE", "ANALYZE", "OPTIMIZE", "REPAIR", "FLUSH", "RESET"}
)
# Functions whose effect outlives the statement on that session.
_SESSION_FUNCTIONS = frozenset({"GET_LOCK", "SETVAL", "SET_CONFIG"})


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """What scalekit needs to know about one SQL statement, from its text alone.

    ``read``: a ``SELECT``/``SHOW``/``WITH … SELECT``/``EXPLAIN`` with no
    data-changing clause — safe to send again after a lost reply.
    ``session_clean``: leaves no session state behind (a read, plain
    ``INSERT``/``UPDATE``/``DELETE``/``REPLACE``, a schema change that is not
    about a ``TEMPORARY`` table, or transaction control), so the connection
    needs no reset before its next borrower.
    ``begins``/``ends``: starts or ends a transaction.
    ``changes_database``: ``USE``, which ``COM_RESET_CONNECTION`` does not undo.
    ``commits``: on MariaDB/MySQL it commits an open transaction first (a schema
    change not about a ``TEMPORARY`` table, ``BEGIN``, ``LOCK``/``UNLOCK
    TABLES``, ``SET autocommit``, ``GRANT``, ``ANALYZE TABLE``, ...).
    """

    read: bool
    session_clean: bool
    begins: bool
    ends: bool
    changes_database: bool = False
    commits: bool = False


def _words(sql: str) -> tuple[list[str], bool]:
    """Upper-cased words outside literals and comments, and whether ``:=`` occurs."""
    words: list[str] = []
    assigns = False
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in _QUOTES:
            i += 1
            while i < n and sql[i] != char:
                i += 2 if sql[i] == "\\" and char != "`" else 1
            i += 1
        elif (
            char == "-" and sql.startswith("--", i) and (i + 2 >= n or sql[i + 2].isspace())
        ) or char == "#":
            end = sql.find("\n", i)
            i = n if end == -1 else end + 1
        elif char == "/" and sql.startswith("/*", i):
            if sql.startswith(("/*!", "/*M!"), i):  # executable comment: its text runs
                i += 3 if sql[i + 2] == "!" else 4
                while i < n and sql[i].isdigit():
                    i += 1
            else:
                end = sql.find("*/", i + 2)
                i = n if end == -1 else end + 2
        elif char == "*" and sql.startswith("*/", i):
            i += 2
        elif char == ":" and sql.startswith(":=", i):
            assigns = True
            i += 2
        elif char.isalpha() or char == "_":
            start = i
            while i < n and (sql[i].isalnum() or sql[i] in "_$"):
                i += 1
            words.append(sql[start:i].upper())
        else:
            i += 1
    return words, assigns


@functools.lru_cache(maxsize=2048)
def classify(sql: str) -> Statement:
    """Classify ``sql`` by its text (cached: statements repeat)."""
    words, assigns = _words(sql)
    first = words[0] if words else ""
    changes = any(
        word in _CHANGES and not (word == "UPDATE" and index and words[index - 1] == "FOR")
        for index, word in enumerate(words)
    )
    read = first in _READ_FIRST and not changes
    lingering = assigns or any(word in _SESSION_FUNCTIONS for word in words)
    dml = first in _DML_FIRST or (first in _DDL_FIRST and "TEMPORARY" not in words)
    begins = (first == "BEGIN" and set(words[1:]) <= _BEGIN_WORDS) or words[:2] == [
        "START",
        "TRANSACTION",
    ]
    chains = "CHAIN" in words and "NO" not in words
    ends = first in ("COMMIT", "ROLLBACK", "END") and "TO" not in words[:3] and not chains
    transaction = begins or ends or first == "ROLLBACK"
    return Statement(
        read=read,
        session_clean=(read or dml or transaction) and not lingering,
        begins=begins,
        ends=ends,
        changes_database=first == "USE",
        commits=(first in _DDL_FIRST and "TEMPORARY" not in words)
        or begins
        or first in _COMMITS_FIRST
        or (first == "SET" and "AUTOCOMMIT" in words),
    )


def is_read(sql: str) -> bool:
    """True when ``sql`` is a read by its text: safe to send again after a lost reply."""
    return classify(sql).read
