"""Public signatures say what they take: no ``Any`` where a class or a protocol exists."""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest
import starlette.authentication
import starlette.types
from prometheus_client import CollectorRegistry

import scalekit
import scalekit._clock
import scalekit.cache
import scalekit.db
import scalekit.fastapi
import scalekit.observability
import scalekit.ratelimit
import scalekit.stack

# Names the modules import only for type checkers.
EXTRA_NAMES: dict[str, object] = {
    **vars(collections.abc),
    **vars(scalekit.cache),
    **vars(scalekit.ratelimit),
    **vars(scalekit.db),
    **vars(scalekit.observability),
    "AuthenticationBackend": starlette.authentication.AuthenticationBackend,
    "CollectorRegistry": CollectorRegistry,
    "Clock": scalekit._clock.Clock,
}

# ASGI's own types hold Any by definition (a scope is a mapping of anything).
ASGI = {starlette.types.Scope, starlette.types.Message}


def anys(annotation: object, seen: frozenset[int] = frozenset()) -> bool:
    """Whether ``Any`` appears in ``annotation`` (ASGI types and protocols are opaque)."""
    if annotation is Any:
        return True
    if isinstance(annotation, list):  # Callable[[A, B], R]'s parameter list
        return any(anys(arg, seen) for arg in annotation)
    if any(annotation == asgi for asgi in ASGI) or id(annotation) in seen:
        return False
    return any(anys(arg, seen | {id(annotation)}) for arg in typing.get_args(annotation))


def hints(target: Callable[..., object]) -> dict[str, object]:
    module = inspect.getmodule(target)
    namespace = {**EXTRA_NAMES, **vars(module)} if module else dict(EXTRA_NAMES)
    found = typing.get_type_hints(target, globalns=namespace)
    parameters = inspect.signature(target).parameters
    return {
        name: annotation
        for name, annotation in found.items()
        if name in parameters  # a dataclass's fields outside __init__ aside
        and parameters[name].kind is not inspect.Parameter.VAR_KEYWORD  # passed through
    }


SIGNATURES: list[tuple[str, Callable[..., object]]] = [
    ("install", scalekit.stack.install),
    ("Stack", scalekit.stack.Stack),
    ("RedisCache", scalekit.cache.RedisCache.__init__),
    ("RedisRateLimitBackend", scalekit.ratelimit.RedisRateLimitBackend.__init__),
    ("RateLimitRule", scalekit.ratelimit.RateLimitRule.__init__),
    ("CacheRule", scalekit.cache.CacheRule),
    ("PoolCheck", scalekit.observability.PoolCheck.__init__),
    ("ReplicaSetCheck", scalekit.observability.ReplicaSetCheck.__init__),
    ("RedisCheck", scalekit.observability.RedisCheck.__init__),
    ("limit", scalekit.fastapi.limit),
    ("limited", scalekit.fastapi.limited),
    ("cached", scalekit.fastapi.cached),
]


@pytest.mark.parametrize(("name", "target"), SIGNATURES, ids=[name for name, _ in SIGNATURES])
def test_public_signature_has_no_any(name: str, target: Callable[..., object]) -> None:
    loose = [parameter for parameter, hint in hints(target).items() if anys(hint)]
    assert not loose, f"{name}: parameters typed with Any: {loose}"


def test_the_redis_protocols_accept_redis_py_clients() -> None:
    # Structural at type-check time; at run time the members scalekit calls exist.
    redis_asyncio = pytest.importorskip("redis.asyncio")
    import redis

    from scalekit._redis import AsyncRedisClient, SyncRedisClient

    for protocol, client in (
        (AsyncRedisClient, redis_asyncio.Redis()),
        (SyncRedisClient, redis.Redis()),
    ):
        members = {
            name
            for name in vars(protocol)
            if not name.startswith("_") and callable(getattr(protocol, name))
        }
        assert members
        assert all(callable(getattr(client, name)) for name in members)
