"""The example task API on its embedded default (SQLite files, in-memory cache and limits)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from taskapi_helpers import signup

from scalekit.db import ConnectionLost, WriteOutcomeUnknown

pytestmark = pytest.mark.anyio

TASKS = "/api/v1/tasks"


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The stable error shape: JSON with a code and a sentence."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


async def test_register_login_create_list_update_delete(make_client: Any) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")
        me = await client.get("/api/v1/auth/me", headers=auth)
        assert me.json()["username"] == "ada"
        assert me.json()["email"] == "ada@example.com"

        created = await client.post(
            TASKS, json={"title": "Write", "description": "Q3"}, headers=auth
        )
        assert created.status_code == 201
        task = created.json()
        assert created.headers["location"] == f"{TASKS}/{task['id']}"
        assert task["status"] == "todo"
        assert task["description"] == "Q3"

        listed = await client.get(TASKS, headers=auth)
        assert [item["id"] for item in listed.json()["items"]] == [task["id"]]

        patched = await client.patch(f"{TASKS}/{task['id']}", json={"status": "done"}, headers=auth)
        assert patched.json()["status"] == "done"
        assert patched.json()["title"] == "Write"
        replaced = await client.put(
            f"{TASKS}/{task['id']}",
            json={"title": "Rewrite", "description": "", "status": "in_progress"},
            headers=auth,
        )
        assert replaced.json()["title"] == "Rewrite"
        assert replaced.json()["updated_at"] >= task["updated_at"]
        fetched = await client.get(f"{TASKS}/{task['id']}", headers=auth)
        assert fetched.json() == replaced.json()

        deleted = await client.delete(f"{TASKS}/{task['id']}", headers=auth)
        assert deleted.status_code == 204
        assert deleted.content == b""
        assert_error(await client.get(f"{TASKS}/{task['id']}", headers=auth), 404, "not_found")
        assert (await client.get(TASKS, headers=auth)).json()["items"] == []


async def test_another_users_task_is_not_found(make_client: Any) -> None:
    async with make_client() as client:
        ada, bob = await signup(client, "ada"), await signup(client, "bob")
        task = (await client.post(TASKS, json={"title": "ada's"}, headers=ada)).json()
        path = f"{TASKS}/{task['id']}"
        assert_error(await client.get(path, headers=bob), 404, "not_found")
        assert_error(await client.patch(path, json={"title": "x"}, headers=bob), 404, "not_found")
        put = {"title": "x", "description": "", "status": "done"}
        assert_error(await client.put(path, json=put, headers=bob), 404, "not_found")
        assert_error(await client.delete(path, headers=bob), 404, "not_found")
        assert (await client.get(TASKS, headers=bob)).json()["items"] == []
        # ...and nothing of ada's changed.
        assert (await client.get(path, headers=ada)).json() == task


async def test_list_filters_by_status_pages_newest_first(make_client: Any) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")
        ids = []
        for number in range(5):
            status = "done" if number % 2 else "todo"
            body = {"title": f"t{number}", "status": status}
            ids.append((await client.post(TASKS, json=body, headers=auth)).json()["id"])
        first = (await client.get(TASKS, params={"limit": 2}, headers=auth)).json()
        assert [item["id"] for item in first["items"]] == ids[::-1][:2]
        assert first["next_offset"] == 2
        last = (await client.get(TASKS, params={"limit": 2, "offset": 4}, headers=auth)).json()
        assert [item["id"] for item in last["items"]] == [ids[0]]
        assert last["next_offset"] is None
        done = (await client.get(TASKS, params={"status": "done"}, headers=auth)).json()
        assert [item["id"] for item in done["items"]] == [ids[3], ids[1]]
        bad = await client.get(TASKS, params={"status": "lost", "limit": 0}, headers=auth)
        body = assert_error(bad, 422, "validation_error")
        assert {tuple(field["loc"]) for field in body["fields"]} == {
            ("query", "status"),
            ("query", "limit"),
        }


async def test_the_list_is_cached_per_user_and_every_write_invalidates_it(
    make_client: Any,
) -> None:
    async with make_client() as client:
        ada, bob = await signup(client, "ada"), await signup(client, "bob")
        first = await client.get(TASKS, headers=ada)
        assert "fwd=miss" in first.headers["cache-status"]
        assert (await client.get(TASKS, headers=ada)).headers["cache-status"] == "scalekit; hit"
        # Bob has his own entry.
        assert "fwd=miss" in (await client.get(TASKS, headers=bob)).headers["cache-status"]

        task = (await client.post(TASKS, json={"title": "one"}, headers=ada)).json()
        writes = [
            ("PATCH", {"status": "done"}),
            ("PUT", {"title": "two", "description": "", "status": "todo"}),
            ("DELETE", None),
        ]
        seen = await client.get(TASKS, headers=ada)
        assert "fwd=miss" in seen.headers["cache-status"]
        assert [item["title"] for item in seen.json()["items"]] == ["one"]
        for method, body in writes:
            await client.get(TASKS, headers=ada)  # cached again
            response = await client.request(method, f"{TASKS}/{task['id']}", json=body, headers=ada)
            assert response.status_code in (200, 204)
            after = await client.get(TASKS, headers=ada)
            assert "fwd=miss" in after.headers["cache-status"], method
            expected = [] if method == "DELETE" else [response.json()]
            assert after.json()["items"] == expected


async def test_a_sql_injection_title_round_trips_intact(make_client: Any, tmp_path: Path) -> None:
    title = "'; DROP TABLE tasks; --"
    async with make_client() as client:
        auth = await signup(client, "ada")
        created = (
            await client.post(TASKS, json={"title": title, "description": title}, headers=auth)
        ).json()
        assert created["title"] == title
        patched = await client.patch(
            f"{TASKS}/{created['id']}", json={"description": "x' OR '1'='1"}, headers=auth
        )
        assert patched.json()["description"] == "x' OR '1'='1"
        listed = (await client.get(TASKS, headers=auth)).json()["items"]
        assert [item["title"] for item in listed] == [title]
    for shard in ("shard0.db", "shard1.db"):
        with sqlite3.connect(tmp_path / "data" / shard) as conn:
            conn.execute("SELECT count(*) FROM tasks").fetchone()  # the table is still there


async def test_embedded_default_creates_three_files_and_spreads_users(
    make_client: Any, tmp_path: Path
) -> None:
    async with make_client() as client:
        for number in range(8):
            auth = await signup(client, f"user{number}")
            await client.post(TASKS, json={"title": f"of user{number}"}, headers=auth)
    data = tmp_path / "data"
    assert {path.name for path in data.glob("*.db")} == {"users.db", "shard0.db", "shard1.db"}
    with sqlite3.connect(data / "users.db") as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (8,)
    counts = []
    for shard in ("shard0.db", "shard1.db"):
        with sqlite3.connect(data / shard) as conn:
            counts.append(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    assert sum(counts) == 8
    assert all(counts), counts  # JumpHash put users on both shards


async def test_register_conflicts_and_validation(make_client: Any) -> None:
    async with make_client() as client:
        await signup(client, "ada")
        again = {"email": "ADA@example.com", "username": "other", "password": "long enough"}
        assert_error(await client.post("/api/v1/auth/register", json=again), 409, "conflict")
        same_name = {"email": "x@example.com", "username": "ADA", "password": "long enough"}
        assert_error(await client.post("/api/v1/auth/register", json=same_name), 409, "conflict")
        secret = "s3cret-never-echoed"
        bad = {"email": "not-an-email", "username": "a", "password": secret[:5]}
        response = await client.post("/api/v1/auth/register", json=bad)
        body = assert_error(response, 422, "validation_error")
        assert {field["loc"][-1] for field in body["fields"]} == {"email", "username", "password"}
        assert secret[:5] not in response.text


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 201},
        {"title": "ok", "status": "lost"},
        {"title": "ok", "owner": 2},
        '{"title": "\\ud800"}',  # a lone surrogate: JSON allows it, UTF-8 does not
        {"title": "nul\x00"},
        {"title": "ok", "description": "nul\x00"},
    ],
)
async def test_invalid_tasks_are_422_with_fields(
    make_client: Any, body: dict[str, Any] | str
) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")
        if isinstance(body, str):
            headers = {**auth, "Content-Type": "application/json"}
            response = await client.post(TASKS, content=body.encode(), headers=headers)
        else:
            response = await client.post(TASKS, json=body, headers=auth)
        fields = assert_error(response, 422, "validation_error")["fields"]
        assert fields
        assert all(field["loc"][0] == "body" for field in fields)


async def test_patch_needs_a_field_and_no_nulls(make_client: Any) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")
        task = (await client.post(TASKS, json={"title": "t"}, headers=auth)).json()
        path = f"{TASKS}/{task['id']}"
        assert_error(await client.patch(path, json={}, headers=auth), 422, "validation_error")
        null = await client.patch(path, json={"title": None, "status": "done"}, headers=auth)
        fields = assert_error(null, 422, "validation_error")["fields"]
        assert [field["loc"] for field in fields] == [["body", "title"]]
        assert (await client.get(path, headers=auth)).json()["status"] == "todo"  # nothing changed


async def test_bodies_over_64_kb_are_413(make_client: Any) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")
        big = b'{"title": "' + b"a" * (64 * 1024) + b'"}'
        headers = {**auth, "Content-Type": "application/json"}
        declared = await client.post(TASKS, content=big, headers=headers)
        assert_error(declared, 413, "payload_too_large")

        async def chunks() -> Any:
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        streamed = await client.post(TASKS, content=chunks(), headers=headers)
        assert_error(streamed, 413, "payload_too_large")
        just_fits = b'{"title": "t", "description": "' + b"a" * 5_000 + b'"}'
        assert (await client.post(TASKS, content=just_fits, headers=headers)).status_code == 201
        # The longest valid body, every character escaped as JSON allows, still fits.
        astral = "\\ud842\\ude8d"
        title, description = astral * 200, astral * 5_000
        longest = f'{{"title": "{title}", "description": "{description}", "status": "done"}}'
        assert len(longest) < 64 * 1024
        fitting = await client.put(f"{TASKS}/1", content=longest.encode(), headers=headers)
        assert fitting.status_code == 200, fitting.text
        too_long = await client.post(
            TASKS, json={"title": "t", "description": "a" * 5_001}, headers=auth
        )
        assert_error(too_long, 422, "validation_error")


async def test_unknown_routes_and_methods_answer_json(make_client: Any) -> None:
    async with make_client() as client:
        assert_error(await client.get("/api/v1/nothing"), 404, "not_found")
        wrong = await client.put("/api/v1/auth/login")
        assert_error(wrong, 405, "method_not_allowed")
        assert wrong.headers["allow"] == "POST"
        # Every route of the path counts, not only the first (Starlette lists GET only).
        listed = await client.request("OPTIONS", TASKS)
        assert listed.headers["allow"] == "GET, POST"
        one = await client.request("OPTIONS", f"{TASKS}/1")
        assert one.headers["allow"] == "DELETE, GET, PATCH, PUT"
        assert_error(await client.get(f"{TASKS}/0", headers=await signup(client, "a1b")), 422,
                     "validation_error")  # fmt: skip


async def test_a_database_that_cannot_be_reached_is_a_503(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")
        storage = client.app.state.taskapi.storage

        async def lost(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionLost("connection to pool 'shard0' (primary) lost")

        async def unknown(*args: Any, **kwargs: Any) -> Any:
            raise WriteOutcomeUnknown("lost in flight")

        monkeypatch.setattr(storage, "list_tasks", lost)
        monkeypatch.setattr(storage, "create_task", unknown)
        down = await client.get(TASKS, headers=auth)
        assert_error(down, 503, "database_unavailable")
        assert down.headers["retry-after"] == "1"
        unknown_outcome = await client.post(TASKS, json={"title": "t"}, headers=auth)
        assert (
            "may or may not" in assert_error(unknown_outcome, 503, "database_unavailable")["detail"]
        )


async def test_an_unexpected_error_is_a_json_500(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_client() as client:
        auth = await signup(client, "ada")

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("bug")

        monkeypatch.setattr(client.app.state.taskapi.storage, "task", broken)
        response = await client.get(f"{TASKS}/1", headers=auth)
        assert_error(response, 500, "internal_error")
        assert "bug" not in response.text
        assert response.headers["x-request-id"]


async def test_openapi_documents_every_route_and_error(make_client: Any) -> None:
    async with make_client() as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
        assert docs.status_code == 200
        assert "swagger" in docs.text.lower()
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert operations == {
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("GET", "/api/v1/auth/me"),
        ("GET", "/api/v1/tasks"),
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/{task_id}"),
        ("PUT", "/api/v1/tasks/{task_id}"),
        ("PATCH", "/api/v1/tasks/{task_id}"),
        ("DELETE", "/api/v1/tasks/{task_id}"),
    }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    me = spec["paths"]["/api/v1/auth/me"]["get"]
    assert me["security"] == [{"HTTPBearer": []}]
    # What validation refuses, the schema says (schemathesis generates from it).
    task = spec["components"]["schemas"]["TaskCreate"]["properties"]
    assert "\\x00" in task["title"]["pattern"]
    assert "\\x00" in task["description"]["pattern"]
    assert task["description"]["maxLength"] * 12 + task["title"]["maxLength"] * 12 < 64 * 1024
    for model in ("Registration", "Login"):  # the email pattern sits behind a BeforeValidator
        email = spec["components"]["schemas"][model]["properties"]["email"]
        assert "@" in email["pattern"]
    for item in spec["paths"].values():
        for operation in item.values():
            for status in ("413", "422", "429", "503"):
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}
