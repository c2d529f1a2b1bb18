"""Placeholder translation: scalekit SQL uses ``%s`` (pyformat) for every driver."""

from __future__ import annotations

import functools

__all__ = ["to_qmark"]

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
