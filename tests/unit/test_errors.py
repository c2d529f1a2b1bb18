"""One root: every exception scalekit defines is a ScalekitError; config errors are ValueErrors."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import scalekit
from scalekit.errors import ConfigurationError, ScalekitError

# Internal signals that never leave the module that raises them.
PRIVATE = {"_UsageError", "_NeverRaised", "CheckTimeout"}


def exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(scalekit.__path__, "scalekit."):
        if module_info.name.startswith("scalekit.cli"):
            continue
        if any(part.startswith("_") for part in module_info.name.split(".")):
            continue  # private modules: what escapes them is re-raised or re-exported
        try:
            module = importlib.import_module(module_info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("scalekit")
                and not any(part.startswith("_") for part in value.__module__.split("."))
                and name not in PRIVATE
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return sorted(found.values(), key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


CLASSES = exception_classes()


def test_the_walk_finds_the_component_trees() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"CacheError", "RateLimitError", "DatabaseError", "MarkStoreUnavailable"} <= names
    assert {"BucketMoved", "MoveError", "SettingsError", "ConfigurationError"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_error_is_a_scalekit_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, ScalekitError)
    if "Config" in cls.__name__ or cls.__name__.endswith(("SyntaxError", "URLError")):
        assert issubclass(cls, ConfigurationError)
        assert issubclass(cls, ValueError)


def test_observability_and_plumbing_argument_errors_are_configuration_errors() -> None:
    from scalekit._breaker import CircuitBreaker
    from scalekit.observability import Health, RequestContextMiddleware

    with pytest.raises(ConfigurationError, match="timeout"):
        Health([], timeout=0)
    with pytest.raises(ConfigurationError, match="header"):
        RequestContextMiddleware(lambda *a: None, header="")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)


def test_errors_of_the_plumbing_are_rooted_too() -> None:
    from scalekit._breaker import CircuitOpen
    from scalekit._extras import MissingExtraError
    from scalekit._rates import RateSyntaxError
    from scalekit._redis import RedisURLError
    from scalekit._routes import RouteTemplateError

    for cls in (CircuitOpen, MissingExtraError):
        assert issubclass(cls, ScalekitError)
    for cls in (RateSyntaxError, RedisURLError, RouteTemplateError):
        assert issubclass(cls, ConfigurationError)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Backend", "RateLimitBackend"),
        ("BackendUnavailable", "RateLimitUnavailable"),
        ("Check", "LimitCheck"),
        ("CheckResult", "LimitResult"),
        ("MemoryBackend", "MemoryRateLimitBackend"),
        ("RedisBackend", "RedisRateLimitBackend"),
    ],
)
def test_old_rate_limit_names_still_import_with_a_deprecation_warning(old: str, new: str) -> None:
    import scalekit.ratelimit as ratelimit

    with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
        found = getattr(ratelimit, old)
    assert found is getattr(ratelimit, new)


def test_cache_and_limiter_share_one_naming_scheme() -> None:
    import scalekit.cache as cache
    import scalekit.ratelimit as ratelimit

    for kind in ("Backend", "Unavailable", "ConfigError", "Error", "Middleware", "Rule"):
        assert hasattr(cache, f"Cache{kind}")
        assert hasattr(ratelimit, f"RateLimit{kind}")
    # The rate limiter's backend checks no longer share names with health checks.
    assert not {"Check", "CheckResult"} & set(ratelimit.__all__)


def test_rule_is_the_short_name_of_rate_limit_rule_and_does_not_warn() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DESIGN.md and users' code write Rule: it must never warn
        from scalekit.ratelimit import RateLimitRule, Rule

        rule = Rule("5/minute", path="/login")
    assert Rule is RateLimitRule
    assert isinstance(rule, RateLimitRule)
    assert repr(rule).startswith("RateLimitRule('5/minute'")
    assert {"RateLimitRule", "Rule"} <= set(__import__("scalekit.ratelimit").ratelimit.__all__)
