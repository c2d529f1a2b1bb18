"""Settings fail early and say where: every value checked when built, named by field or variable.

Issue 12, "Configuration that fails early and says where", points 10-12.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit import ConfigurationError, ScalekitError, Settings, install
from scalekit.cache import CacheConfigError, CacheRule
from scalekit.ratelimit import RateLimitConfigError, Rule
from scalekit.settings import SettingsError

# -- 10. every value checked, the variable named


@pytest.mark.parametrize(
    ("environ", "variable", "detail"),
    [
        ({"SCALEKIT_RATE_LIMIT": "100/fortnight"}, "SCALEKIT_RATE_LIMIT", "does not parse"),
        ({"SCALEKIT_RATE_LIMIT": "0/minute"}, "SCALEKIT_RATE_LIMIT", "admits nothing"),
        ({"SCALEKIT_TRUSTED_PROXIES": "bogus"}, "SCALEKIT_TRUSTED_PROXIES", "'bogus'"),
        ({"SCALEKIT_TRUSTED_PROXIES": "10.0.0.0/8,*"}, "SCALEKIT_TRUSTED_PROXIES", "'\\*'"),
        ({"SCALEKIT_MAX_LAG": "nan"}, "SCALEKIT_MAX_LAG", "finite"),
        ({"SCALEKIT_MAX_LAG": "-1"}, "SCALEKIT_MAX_LAG", ">= 0"),
        ({"SCALEKIT_PIN_AFTER_WRITE": "inf"}, "SCALEKIT_PIN_AFTER_WRITE", "finite"),
        ({"SCALEKIT_REDIS_URL": "http://cache:6379"}, "SCALEKIT_REDIS_URL", "scheme 'http'"),
        ({"SCALEKIT_REDIS_URL": "redis://cache:port/0"}, "SCALEKIT_REDIS_URL", "port"),
        (
            {"SCALEKIT_REDIS_URL": "redis://cache/0?socket_timeout=soon"},
            "SCALEKIT_REDIS_URL",
            "socket_timeout",
        ),
        (
            {"SCALEKIT_DATABASE_URL": "postgres://app:pw@db/tasks"},
            "SCALEKIT_DATABASE_URL",
            "postgres",
        ),
        (
            {"SCALEKIT_DATABASE_URL": "mysql://app:pw@db/tasks?max_conections=5"},
            "SCALEKIT_DATABASE_URL",
            "max_conections",
        ),
        (
            {"SCALEKIT_DATABASE_URL": "sqlite:///a.db", "SCALEKIT_REPLICA_URLS": "redis://x"},
            "SCALEKIT_REPLICA_URLS",
            "redis",
        ),
        ({"SCALEKIT_SHARD_URLS": "mysql://db/s0;ftp://x"}, "SCALEKIT_SHARD_URLS", "ftp"),
        ({"SCALEKIT_METRICS_PATH": "/metrics/{x}"}, "SCALEKIT_METRICS_PATH", "fixed path"),
        ({"SCALEKIT_ACCESS_LOG": "maybe"}, "SCALEKIT_ACCESS_LOG", "true or false"),
    ],
)
def test_from_env_names_the_variable_and_the_problem(
    environ: dict[str, str], variable: str, detail: str
) -> None:
    with pytest.raises(SettingsError, match=detail) as raised:
        Settings.from_env(environ)
    assert str(raised.value).startswith(variable + " ")
    assert raised.value.variable == variable
    assert isinstance(raised.value, ConfigurationError)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, ScalekitError)


def test_a_password_in_a_bad_url_is_never_echoed() -> None:
    for environ in (
        {"SCALEKIT_DATABASE_URL": "mysql://app:s3cret@db/tasks?bogus=1"},
        {"SCALEKIT_REDIS_URL": "redis://:s3cret@cache:nope/0"},
    ):
        with pytest.raises(SettingsError) as raised:
            Settings.from_env(environ)
        assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate_limit": "100/fortnight"}, "rate_limit"),
        ({"max_lag": math.nan}, "max_lag"),
        ({"max_lag": -0.5}, "max_lag"),
        ({"pin_after_write": math.inf}, "pin_after_write"),
        ({"max_lag": "2"}, "max_lag"),
        ({"trusted_proxies": ("10.0.0.0/8", "bogus")}, "trusted_proxies"),
        ({"trusted_proxies": 10}, "trusted_proxies"),
        ({"redis_url": "cache:6379"}, "redis_url"),
        ({"database_url": ""}, "database_url"),
        ({"access_log": "yes"}, "access_log"),
        ({"metrics_path": "metrics"}, "metrics_path"),
    ],
)
def test_keywords_are_checked_too_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings(**kwargs)  # type: ignore[arg-type]
    assert str(raised.value).startswith(field + " ")
    assert raised.value.field == field


def test_a_bare_string_of_proxies_is_a_list_not_its_characters() -> None:
    settings = Settings(trusted_proxies="10.0.0.0/8, 127.0.0.1")  # type: ignore[arg-type]
    assert settings.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert Settings(trusted_proxies=["10.0.0.0/8"]).trusted_proxies == ("10.0.0.0/8",)  # type: ignore[arg-type]
    replicas = Settings(database_url="sqlite:///a.db", replica_urls="sqlite:///b.db")  # type: ignore[arg-type]
    assert replicas.replica_urls == ("sqlite:///b.db",)


@pytest.mark.anyio
async def test_bare_string_proxies_serve_requests_behind_the_proxy() -> None:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(routes=[Route("/", whoami)])
    install(
        app,
        Settings(trusted_proxies="10.0.0.0/8", rate_limit="2/minute"),  # type: ignore[arg-type]
        registry=CollectorRegistry(),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/health/live")).status_code == 200
            first = [
                (await client.get("/", headers={"x-forwarded-for": "203.0.113.7"})).status_code
                for _ in range(3)
            ]
            other = await client.get("/", headers={"x-forwarded-for": "203.0.113.8"})
    assert first == [200, 200, 429]
    assert other.status_code == 200


def test_an_unknown_variable_names_the_closest_known_one() -> None:
    with pytest.raises(SettingsError, match="did you mean SCALEKIT_RATE_LIMIT") as raised:
        Settings.from_env({"SCALEKIT_RATELIMIT": "100/minute"})
    assert str(raised.value).startswith("SCALEKIT_RATELIMIT ")
    with pytest.raises(SettingsError, match="did you mean SCALEKIT_REDIS_URL"):
        Settings.from_env({"SCALEKIT_REDIS": "redis://cache/0"})
    with pytest.raises(SettingsError, match="known: SCALEKIT_DATABASE_URL"):
        Settings.from_env({"SCALEKIT_COLOUR": "blue"})


def test_a_lower_case_variable_is_never_read_and_says_so() -> None:
    with pytest.raises(SettingsError, match="case-sensitive; did you mean SCALEKIT_RATE_LIMIT"):
        Settings.from_env({"scalekit_rate_limit": "100/minute"})
    with pytest.raises(SettingsError, match="did you mean SCALEKIT_REDIS_URL"):
        Settings.from_env({"Scalekit_Redis_Url": "redis://cache/0"})
    Settings.from_env({"scalekit_home": "/srv"}, app_variables=["scalekit_home"])


def test_app_variables_with_the_prefix_can_be_declared() -> None:
    environ = {"SCALEKIT_JWT_SECRET": "x", "SCALEKIT_RATE_LIMIT": "5/minute", "OTHER": "y"}
    settings = Settings.from_env(environ, app_variables=["SCALEKIT_JWT_SECRET"])
    assert settings.rate_limit == "5/minute"


def test_good_values_still_parse() -> None:
    settings = Settings.from_env(
        {
            "SCALEKIT_DATABASE_URL": "mysql://app:pw@db:3306/tasks?max_connections=20",
            "SCALEKIT_REDIS_URL": "redis+sentinel://s1:26379,s2:26379/mymaster/0?socket_timeout=0.2",
            "SCALEKIT_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
            "SCALEKIT_RATE_LIMIT": "10/second;100/15 minutes",
            "SCALEKIT_MAX_LAG": "0",
            "SCALEKIT_PIN_AFTER_WRITE": "2.5",
            "SCALEKIT_METRICS_PATH": "/internal/metrics",
        }
    )
    assert settings.trusted_proxies == ("10.0.0.0/8", "::1")
    assert settings.max_lag == 0.0


# -- 11. rules: config errors at construction


def test_a_misspelt_method_is_a_config_error() -> None:
    with pytest.raises(RateLimitConfigError, match="'GTE' is not an HTTP method; did you mean"):
        Rule("5/minute", methods=["GTE"])
    assert Rule("5/minute", methods=["post"]).methods == frozenset({"POST"})


def test_a_tag_placeholder_that_is_not_a_path_parameter_is_a_config_error() -> None:
    with pytest.raises(CacheConfigError, match=r"\{nope\}, which is not a path parameter"):
        CacheRule("/tasks/{task_id}", ttl=60, tags=["t:{nope}"])
    with pytest.raises(CacheConfigError, match="does not parse"):
        CacheRule("/tasks", ttl=60, tags=["t:{"])
    with pytest.raises(CacheConfigError, match="without a format spec"):
        CacheRule("/tasks/{task_id}", ttl=60, tags=["t:{task_id!r}"])
    rule = CacheRule("/tasks/{task_id:int}", ttl=60, tags=["task:{task_id}", "all-tasks"])
    assert rule.tags == ("task:{task_id}", "all-tasks")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": "60"}, "ttl must be > 0 seconds"),
        ({"ttl": True}, "ttl"),
        ({"ttl": math.nan}, "ttl"),
        ({"ttl": 60, "stale_ttl": "5"}, "stale_ttl"),
        ({"ttl": 60, "max_body": 1.5}, "max_body"),
    ],
)
def test_non_numbers_in_a_cache_rule_are_config_errors(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(CacheConfigError, match=message):
        CacheRule("/tasks", **kwargs)  # type: ignore[arg-type]


# -- 12. a missing extra fails at start-up, naming it


def run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    blocker = "import sys\nfor name in ('redis', 'limits'):\n    sys.modules[name] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_redis_url_without_the_redis_extra_fails_at_install_naming_the_extra() -> None:
    result = run_without_extras(
        """
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from scalekit import Settings, install
        from scalekit._extras import MissingExtraError
        settings = Settings(redis_url="redis://127.0.0.1:6379/0")  # checking needs no extra
        try:
            install(Starlette(), settings, registry=CollectorRegistry())
        except MissingExtraError as exc:
            print("error:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "Settings.redis_url" in result.stdout
    assert 'pip install "scalekit[redis]"' in result.stdout


def test_in_memory_limits_run_on_the_core_install() -> None:
    result = run_without_extras(
        """
        import asyncio, httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from scalekit import Settings, install

        async def home(request):
            return PlainTextResponse("hi")

        async def main():
            app = Starlette(routes=[Route("/", home)])
            install(app, Settings(rate_limit="2/minute"), registry=CollectorRegistry())
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                print([(await client.get("/")).status_code for _ in range(3)])

        asyncio.run(main())
        """
    )
    assert result.returncode == 0, result.stderr
    assert "[200, 200, 429]" in result.stdout


def test_a_core_install_runs_memory_limits_a_memory_cache_and_a_sqlite_pool(
    tmp_path: Path,
) -> None:
    # What `pip install scalekit` brings: no redis, limits or pymysql.
    blocker = (
        "import sys\nfor name in ('redis', 'limits', 'pymysql'):\n    sys.modules[name] = None\n"
    )
    code = textwrap.dedent(
        f"""
        import asyncio, httpx
        from prometheus_client import CollectorRegistry
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        from scalekit import Settings, Stack, install
        from scalekit.cache import CacheRule

        async def tasks(request):
            return JSONResponse(Stack.of(request).db.query("SELECT 1 AS one"))

        async def main():
            app = Starlette(routes=[Route("/tasks", tasks)])
            settings = Settings(database_url="sqlite:///{tmp_path}/app.db", rate_limit="3/minute")
            install(app, settings, cache_rules=[CacheRule("/tasks", ttl=60)],
                    registry=CollectorRegistry())
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    answers = [await c.get("/tasks") for _ in range(4)]
            print([a.status_code for a in answers], answers[1].headers["cache-status"])

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[200, 200, 200, 429] scalekit; hit" in result.stdout


def test_dbutils_is_a_core_dependency() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert any(dep.startswith("dbutils") for dep in project["project"]["dependencies"])


def test_repr_never_shows_a_password() -> None:
    settings = Settings(
        database_url="mysql://app:db-secret@db:3306/tasks",
        replica_urls=("mysql://app:db-secret@replica:3306/tasks",),
        redis_url="redis://:redis-secret@cache:6379/0",
        shard_urls=(("mysql://app:shard-secret@s0/tasks", "mysql://app:shard-secret@s0r/tasks"),),
    )
    text = repr(settings)
    assert "secret" not in text
    assert "mysql://app:***@db:3306/tasks" in text
    assert "redis://:***@cache:6379/0" in text
    assert (
        settings.database_url == "mysql://app:db-secret@db:3306/tasks"
    )  # the value itself is kept
