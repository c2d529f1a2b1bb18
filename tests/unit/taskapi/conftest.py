"""Fixtures for the example task API's unit tests: the app on SQLite files, cheap hashing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from taskapi_helpers import SECRET, Clock, cheap_passwords

from examples.taskapi.app import create_app
from examples.taskapi.auth import Tokens
from examples.taskapi.config import TaskApiConfig


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_client(tmp_path: Path, clock: Clock) -> Callable[..., Any]:
    """``async with make_client(**env) as client``: the app on fresh SQLite files."""

    @contextlib.asynccontextmanager
    async def make(**env: str) -> AsyncIterator[httpx.AsyncClient]:
        environ = {"TASKAPI_JWT_SECRET": SECRET, "TASKAPI_DATA_DIR": str(tmp_path / "data")}
        environ.update(env)
        config = TaskApiConfig.from_env(environ)
        app = create_app(
            config,
            registry=CollectorRegistry(),
            passwords=cheap_passwords(),
            tokens=Tokens(config.jwt_secret, ttl=config.token_ttl, now=clock),
        )
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                c.app = app  # type: ignore[attr-defined]
                yield c

    return make
