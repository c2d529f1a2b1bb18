"""The one-release compatibility layer for ``ShardSet``'s old argument order.

``ShardSet`` statements take the shard key as ``key=``, as ``ReplicaSet``'s
do; the old order (the key first: ``query(key, sql, params)``,
``transaction(key, fn)``) still works for one release, with a
``DeprecationWarning``. These functions read either order from a call's
``*args, **kwargs``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from ..pool import Cursor, Params

__all__ = ["STATEMENT_WORDS", "looks_like_sql", "returning", "statement", "transaction"]

_MISSING: Any = object()


def statement(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, str, Params, dict[str, Any]]:
    """``(key, sql, params, options)`` from ``(sql, params, key=)`` or the old order."""
    options = dict(kwargs)
    key = options.pop("key", _MISSING)
    names = ("sql", "params") if key is not _MISSING else ("key", "sql", "params")
    if len(args) > len(names):
        raise TypeError(f"ShardSet.{method}() takes (sql, params=None, *, key=...)")
    values = dict(zip(names, args, strict=False))
    for name in ("sql", "params"):
        if name in options:
            if name in values:
                raise TypeError(f"ShardSet.{method}() got two values for {name!r}")
            values[name] = options.pop(name)
    if key is _MISSING:
        if (
            "key" not in values
            or not isinstance(values.get("sql"), str)
            or (looks_like_sql(values["key"]) and not looks_like_sql(values["sql"]))
        ):
            # The last case: (sql, "a str param") without key=, which the old order
            # would run as (key=sql, sql=the param).
            raise TypeError(
                f"ShardSet.{method}() needs key=, the shard key: "
                f"shards.{method}(sql, params, key=user_id)"
            )
        warnings.warn(
            f"ShardSet.{method}(key, sql, params) is deprecated and goes in the next release: "
            f"write shards.{method}(sql, params, key=key), as on ReplicaSet",
            DeprecationWarning,
            stacklevel=3,
        )
        key = values["key"]
    if not isinstance(values.get("sql"), str):
        raise TypeError(f"ShardSet.{method}() needs the SQL text: {method}(sql, params, key=...)")
    return key, values["sql"], values.get("params"), options


STATEMENT_WORDS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "SHOW", "CALL", "VALUES"}
)


def looks_like_sql(value: object) -> bool:
    """A str that starts with a statement's first word and goes on (``"SELECT 1"``)."""
    if not isinstance(value, str):
        return False
    first, _, rest = value.strip().lstrip("(").partition(" ")
    return first.upper() in STATEMENT_WORDS and bool(rest.strip())


def transaction(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Callable[[Cursor], Any], int]:
    """``(key, fn, retries)`` from ``(fn, key=)`` or the old ``(key, fn)``."""
    options = dict(kwargs)
    retries = int(options.pop("retries", 0))
    key = options.pop("key", _MISSING)
    fn = options.pop("fn", _MISSING)
    if options:
        raise TypeError(f"ShardSet.{method}() got unexpected arguments {sorted(options)}")
    if key is not _MISSING:
        if len(args) + (fn is not _MISSING) != 1:
            raise TypeError(f"ShardSet.{method}() takes (fn, *, key=..., retries=0)")
        fn = args[0] if args else fn
    elif len(args) + (fn is not _MISSING) == 2 and callable(fn if fn is not _MISSING else args[1]):
        warnings.warn(
            f"ShardSet.{method}(key, fn) is deprecated and goes in the next release: "
            f"write shards.{method}(fn, key=key), as on ReplicaSet",
            DeprecationWarning,
            stacklevel=3,
        )
        key, fn = args[0], (fn if fn is not _MISSING else args[1])
    else:
        raise TypeError(f"ShardSet.{method}() needs key=, the shard key: {method}(fn, key=user_id)")
    if not callable(fn):
        raise TypeError(f"ShardSet.{method}() needs a function of a cursor, got {fn!r}")
    return key, fn, retries


def returning(method: str, options: dict[str, Any]) -> bool:
    returning = bool(options.pop("returning", False))
    if options:
        raise TypeError(f"ShardSet.{method}() got unexpected arguments {sorted(options)}")
    return returning
