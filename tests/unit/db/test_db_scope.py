"""Read-your-writes scopes: one per request, shared by its threads, gone after it."""

from __future__ import annotations

import concurrent.futures
import contextvars
from pathlib import Path

import httpx
import pytest
from db_fakedb import FakeServer
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit import Settings, install
from scalekit._clock import ManualClock
from scalekit.db import ReplicaSet, RequestScopeMiddleware, request_scope


def make() -> ReplicaSet:
    clock = ManualClock()
    return ReplicaSet(
        FakeServer("primary").pool(clock=clock), [FakeServer("replica").pool(clock=clock)],
        clock=clock,
    )  # fmt: skip


def served_by(rs: ReplicaSet) -> object:
    return rs.query("SELECT 1")[0]["server"]


def test_a_scope_ends_with_its_request_on_a_reused_thread() -> None:
    rs = make()

    def job(write: bool) -> object:
        with request_scope():
            if write:
                rs.execute("INSERT INTO t VALUES (1)")
            return served_by(rs)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as worker:
        assert worker.submit(job, True).result() == "primary"
        assert worker.submit(job, False).result() == "replica"


def test_without_a_scope_pins_are_context_local() -> None:
    rs = make()
    contextvars.copy_context().run(rs.execute, "INSERT INTO t VALUES (1)")
    assert served_by(rs) == "replica"
    rs.execute("INSERT INTO t VALUES (1)")
    assert served_by(rs) == "primary"


@pytest.mark.anyio
async def test_async_wrappers_carry_pins_back_to_the_caller() -> None:
    rs = make()
    with pytest.raises(ZeroDivisionError):
        await rs.atransaction(lambda cur: (cur.execute("INSERT INTO t VALUES (1)"), 1 / 0))
    assert (await rs.aquery("SELECT 1"))[0]["server"] == "replica"  # rolled back: no pin
    await rs.atransaction(lambda cur: cur.execute("INSERT INTO t VALUES (1)"))
    assert (await rs.aquery("SELECT 1"))[0]["server"] == "primary"


@pytest.mark.anyio
async def test_the_middleware_scopes_each_request_and_passes_lifespan_through() -> None:
    rs = make()

    async def write(request: Request) -> JSONResponse:
        await run_in_threadpool(rs.execute, "INSERT INTO t VALUES (1)")
        return JSONResponse({"then": await run_in_threadpool(served_by, rs)})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"then": await run_in_threadpool(served_by, rs)})

    app = Starlette(routes=[Route("/write", write), Route("/read", read)])
    app.add_middleware(RequestScopeMiddleware)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/write")).json() == {"then": "primary"}
        assert (await client.get("/read")).json() == {"then": "replica"}
    lifespan_events: list[str] = []

    async def lifespan_app(scope: object, receive: object, send: object) -> None:
        lifespan_events.append("called")

    await RequestScopeMiddleware(lifespan_app)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert lifespan_events == ["called"]


def test_install_adds_the_scope_when_there_is_a_database(tmp_path: Path) -> None:
    app = Starlette()
    install(
        app, Settings(database_url=f"sqlite:///{tmp_path}/app.db"), registry=CollectorRegistry()
    )
    assert RequestScopeMiddleware in [m.cls for m in app.user_middleware]
    bare = Starlette()
    install(bare, Settings(), registry=CollectorRegistry())
    assert RequestScopeMiddleware not in [m.cls for m in bare.user_middleware]
