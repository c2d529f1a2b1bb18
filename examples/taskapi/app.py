"""The task API: FastAPI routes on scalekit's stack.

``uvicorn examples.taskapi.app:app`` serves it, configured from the
environment (:mod:`examples.taskapi.config`); tests call :func:`create_app`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from scalekit import Stack, install
from scalekit.cache import CacheError
from scalekit.db import ShardSet
from scalekit.fastapi import cached, limit
from scalekit.ratelimit import Rule, user

from .auth import AUTH_ERROR_KEY, BearerBackend, Passwords, TaskUser, Tokens
from .config import TaskApiConfig
from .errors import (
    ApiError,
    BodyLimitMiddleware,
    UnexpectedErrorMiddleware,
    error_response,
    install_error_handlers,
)
from .models import (
    ErrorBody,
    Login,
    Registration,
    Task,
    TaskCreate,
    TaskPage,
    TaskPatch,
    TaskReplace,
    TaskStatus,
    Token,
    User,
)
from .storage import Conflict, Storage, apply_schema

__all__ = ["API_PREFIX", "Services", "create_app"]

API_PREFIX = "/api/v1"
TASKS_TAG = "user:{user}:tasks"
LIST_TTL = 60.0
MAX_ID = 2**63 - 1

_logger = structlog.get_logger("taskapi")


@dataclasses.dataclass
class Services:
    """What the routes use, on ``app.state.taskapi``."""

    config: TaskApiConfig
    stack: Stack
    storage: Storage
    tokens: Tokens
    passwords: Passwords

    async def tasks_changed(self, user_id: int) -> None:
        """Invalidate the user's cached task lists, on every instance."""
        try:
            await self.stack.cache.invalidate(TASKS_TAG.format(user=user_id))
        except CacheError as exc:
            # The write is done; a cache that cannot be reached is bypassed by
            # reads too, and entries expire after LIST_TTL at the latest.
            _logger.warning("task list invalidation failed", user=user_id, error=str(exc))


def _services(request: Request) -> Services:
    services: Services = request.app.state.taskapi
    return services


_bearer = HTTPBearer(
    auto_error=False,
    description="The access token from POST /api/v1/auth/login.",
)


def current_user(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> TaskUser:
    """The authenticated user, or a 401 naming what is wrong with the token."""
    found = request.scope.get("user")
    if isinstance(found, TaskUser):
        return found
    reason = request.scope.get(AUTH_ERROR_KEY)
    raise ApiError(
        401,
        "unauthorized",
        reason or "missing bearer token: send 'Authorization: Bearer <token>'",
        headers={
            "WWW-Authenticate": 'Bearer error="invalid_token"' if reason else "Bearer",
        },
    )


ServicesDep = Annotated[Services, Depends(_services)]
UserDep = Annotated[TaskUser, Depends(current_user)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="the task's id")]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "malformed request",
        401: "missing, malformed, expired or tampered token",
        404: "no such task of yours",
        409: "email or username already registered",
        413: "body over 64 KB",
        422: "invalid fields",
        429: "rate limit exceeded",
        503: "a database is unavailable",
    }
    return {
        status: {"model": ErrorBody, "description": described[status]}
        for status in (400, 413, 422, 429, 503, *statuses)
    }


router = APIRouter(prefix=API_PREFIX)


@router.post(
    "/auth/register",
    status_code=201,
    response_model=User,
    responses=_errors(409),
    tags=["auth"],
    summary="Register a user",
)
async def register(body: Registration, services: ServicesDep) -> User:
    password_hash = await services.passwords.hash(body.password.get_secret_value())
    try:
        return await services.storage.create_user(body.email, body.username, password_hash)
    except Conflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None


def _login_limit(request: Request) -> str:
    # Read per request, so the limit comes from this app's configuration.
    return _services(request).config.login_limit


@router.post(
    "/auth/login",
    response_model=Token,
    responses=_errors(401),
    tags=["auth"],
    summary="Exchange email and password for an access token",
    # Failed logins per client IP; successful ones are not counted.
    dependencies=[Depends(limit(_login_limit, count="failures", name="login-failures"))],
)
async def login(body: Login, services: ServicesDep) -> Token:
    found = await services.storage.credentials(body.email)
    password = body.password.get_secret_value()
    if not await services.passwords.verify(found[1] if found else None, password):
        raise ApiError(401, "invalid_credentials", "wrong email or password")
    assert found is not None
    return Token(access_token=services.tokens.issue(found[0]), expires_in=services.tokens.ttl)


@router.get("/auth/me", response_model=User, responses=_errors(401), tags=["auth"])
async def me(current: UserDep, services: ServicesDep) -> User:
    found = await services.storage.user(current.id)
    if found is None:
        raise ApiError(401, "unauthorized", "the token's user no longer exists")
    return found


@router.get(
    "/tasks",
    response_model=TaskPage,
    responses=_errors(401),
    tags=["tasks"],
    summary="Your tasks, newest first (cached per user, invalidated by every write)",
)
@cached(ttl=LIST_TTL, vary_user=True, tags=[TASKS_TAG])
async def list_tasks(
    current: UserDep,
    services: ServicesDep,
    response: Response,
    status: Annotated[TaskStatus | None, Query(description="only tasks in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TaskPage:
    items, more = await services.storage.list_tasks(
        current.id, status=status, limit=limit, offset=offset
    )
    # Only scalekit's cache (keyed on the user) may keep it; no shared cache.
    response.headers["Cache-Control"] = "private"
    return TaskPage(
        items=items, limit=limit, offset=offset, next_offset=offset + limit if more else None
    )


@router.post(
    "/tasks",
    status_code=201,
    response_model=Task,
    responses=_errors(401),
    tags=["tasks"],
    summary="Create a task",
)
async def create_task(
    body: TaskCreate, current: UserDep, services: ServicesDep, response: Response
) -> Task:
    task = await services.storage.create_task(current.id, body.title, body.description, body.status)
    await services.tasks_changed(current.id)
    response.headers["Location"] = f"{API_PREFIX}/tasks/{task.id}"
    return task


@router.get("/tasks/{task_id}", response_model=Task, responses=_errors(401, 404), tags=["tasks"])
async def get_task(task_id: TaskId, current: UserDep, services: ServicesDep) -> Task:
    found = await services.storage.task(current.id, task_id)
    if found is None:
        raise _no_task(task_id)
    return found


@router.put(
    "/tasks/{task_id}",
    response_model=Task,
    responses=_errors(401, 404),
    tags=["tasks"],
    summary="Replace a task's fields",
)
async def replace_task(
    task_id: TaskId, body: TaskReplace, current: UserDep, services: ServicesDep
) -> Task:
    changes = {"title": body.title, "description": body.description, "status": body.status.value}
    return await _update(services, current.id, task_id, changes)


@router.patch(
    "/tasks/{task_id}",
    response_model=Task,
    responses=_errors(401, 404),
    tags=["tasks"],
    summary="Change some of a task's fields",
)
async def patch_task(
    task_id: TaskId, body: TaskPatch, current: UserDep, services: ServicesDep
) -> Task:
    return await _update(services, current.id, task_id, body.changes())


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    response_class=Response,
    responses=_errors(401, 404),
    tags=["tasks"],
    summary="Delete a task",
)
async def delete_task(task_id: TaskId, current: UserDep, services: ServicesDep) -> Response:
    if not await services.storage.delete_task(current.id, task_id):
        raise _no_task(task_id)
    await services.tasks_changed(current.id)
    return Response(status_code=204)


async def _update(services: Services, user_id: int, task_id: int, changes: dict[str, str]) -> Task:
    updated = await services.storage.update_task(user_id, task_id, changes)
    if updated is None:
        raise _no_task(task_id)
    await services.tasks_changed(user_id)
    return updated


def _no_task(task_id: int) -> ApiError:
    return ApiError(404, "not_found", f"you have no task {task_id}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    # Starlette's 405 lists the methods of the first route matching the path
    # only (GET /tasks hides POST /tasks); list those of every route here.
    path = str(request.scope.get("path", ""))
    allowed = sorted(
        {
            method
            for route in router.routes
            if isinstance(route, APIRoute) and route.path_regex.match(path)
            for method in route.methods or ()
        }
    )
    header = ", ".join(allowed) or getattr(exc, "headers", {}).get("Allow", "")
    return error_response(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on {path}" + (f"; use {header}" if header else ""),
        headers={"Allow": header} if header else None,
    )


def _outside_api(scope: Any) -> bool:
    return not str(scope.get("path", "")).startswith(API_PREFIX + "/")


def create_app(
    config: TaskApiConfig | None = None,
    *,
    registry: CollectorRegistry | None = None,
    passwords: Passwords | None = None,
    tokens: Tokens | None = None,
) -> FastAPI:
    """The task API on scalekit's stack.

    Args:
        config: the configuration (``TaskApiConfig.from_env()`` if None).
        registry: the Prometheus registry (the default one if None).
        passwords: the password hasher (argon2 defaults if None).
        tokens: the token issuer (HS256 with ``config.jwt_secret`` if None).
    """
    config = config or TaskApiConfig.from_env()
    if config.secret_generated:
        _logger.warning(
            "no TASKAPI_JWT_SECRET: using a random secret for this process only "
            "(SCALEKIT_ENV=development); tokens stop working when it restarts"
        )
    tokens = tokens or Tokens(config.jwt_secret, ttl=config.token_ttl)
    app = FastAPI(
        # "/api/v1/tasks/" is a JSON 404 naming the path without the slash,
        # not an empty 307 to a Location built from the client's Host header.
        redirect_slashes=False,
        title="scalekit example task API",
        version="1.0.0",
        description=(
            "Users and their tasks, on scalekit: JWT authentication, users in one "
            "database and tasks on the user's shard, a per-user cached task list, "
            "rate limits per user (or IP) and on failed logins."
        ),
    )
    app.include_router(router)
    install_error_handlers(app)
    app.add_exception_handler(405, _method_not_allowed)
    # Added first, so innermost: right around the routes, inside scalekit's stack.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(UnexpectedErrorMiddleware)

    if config.data_dir is not None:
        # Owner-only: users.db holds the password hashes (an existing folder
        # is left as it is).
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The API-wide limit is keyed on the user (or the IP before login) and
    # covers only the API, so it is declared here rather than as the
    # IP-keyed default rule Settings.rate_limit would install.
    settings = dataclasses.replace(config.settings, rate_limit=None)
    stack = install(
        app,
        settings,
        auth_backend=BearerBackend(tokens),
        # The list's cache rule and the login limit are declared on their
        # routes (@cached, Depends(limit(...))); the API-wide limit spans
        # every route with one counter per user, so it is a rule here.
        rate_rules=[Rule(config.api_limit, key=user, exempt=_outside_api, name="api")],
        registry=registry,
    )
    users = stack.db
    if users is None:  # pragma: no cover - TaskApiConfig always sets database_url
        raise RuntimeError("the task API needs a users database (SCALEKIT_DATABASE_URL)")
    # No shards configured: the users database holds the tasks too.
    shards = stack.shards if stack.shards is not None else ShardSet([users])
    if config.embedded:
        for database in (users, *shards.shards):
            database.execute("PRAGMA journal_mode=WAL")
            apply_schema(database)
    app.state.taskapi = Services(
        config=config,
        stack=stack,
        storage=Storage(users, shards),
        tokens=tokens,
        passwords=passwords or Passwords(),
    )
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.taskapi.app:app`` builds the app on first access, so
    # importing this module (tests, docs) creates no files and needs no secret.
    if name == "app":
        from scalekit.observability import configure_logging

        configure_logging()
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
