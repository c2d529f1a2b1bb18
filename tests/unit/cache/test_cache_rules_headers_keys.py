"""Rules, header parsing and keys: the pure parts of scalekit.cache."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import scalekit.cache
from scalekit.cache import CacheConfigError, CacheRule
from scalekit.cache.headers import cache_control, etag_for, if_none_match_matches, vary_names
from scalekit.cache.keys import RequestTarget, base_digest, normalise_query, vary_values

ITEMS = RequestTarget("http", "example.com", "", "/items")
ROOT = RequestTarget("http", "example.com", "", "/")


def test_all_is_sorted_and_complete() -> None:
    exported = scalekit.cache.__all__
    assert exported == sorted(exported)
    public = {
        name
        for name, value in vars(scalekit.cache).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("scalekit.cache")
    }
    assert public <= set(exported)
    for name in exported:
        assert hasattr(scalekit.cache, name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl must be > 0"),
        ({"ttl": 1, "stale_ttl": -1}, "stale_ttl"),
        ({"ttl": 1, "max_body": -1}, "max_body"),
        ({"ttl": 1, "statuses": {99}}, "statuses"),
        ({"ttl": 1, "invalidate_on": ("GET",), "tags": ["t"]}, "invalidate_on"),
        ({"ttl": 1, "invalidate_on": ("POST",)}, "needs tags"),
        ({"ttl": 1, "tags": ["user:{user}"]}, "vary_user=True"),
        ({"ttl": 1, "tags": []}, "must not be empty"),
        ({"ttl": 1, "honor_request_directives": "no"}, "honor_request_directives must be True"),
        ({"ttl": 1, "vary_user": 1}, "vary_user must be True or False"),
    ],
)
def test_invalid_rules_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CacheConfigError, match=message):
        CacheRule("/items", **kwargs)  # type: ignore[arg-type]


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        CacheRule("items", ttl=1)


def test_templates_match_like_routes() -> None:
    rule = CacheRule("/api/v1/tasks/{id}", ttl=1)
    assert rule.match("/api/v1/tasks/42") == {"id": "42"}
    assert rule.match("/api/v1/tasks/42/x") is None
    assert rule.match("/api/v1/tasks") is None
    assert CacheRule("/files/{rest:path}", ttl=1).match("/files/a/b") == {"rest": "a/b"}
    assert CacheRule("/n/{n:int}", ttl=1).match("/n/x") is None
    assert CacheRule("/a.b", ttl=1).match("/aXb") is None


def test_tags_fill_path_params_and_user() -> None:
    rule = CacheRule("/tasks/{id}", ttl=1, vary_user=True, tags=["user:{user}", "task:{id}"])
    assert rule.tags_for({"id": "7"}, "42", lambda: None) == ("user:42", "task:7")
    called = CacheRule("/x", ttl=1, tags=lambda request: [f"r:{request}"])
    assert called.tags_for({}, None, lambda: "req") == ("r:req",)


def test_rule_normalises_its_arguments() -> None:
    rule = CacheRule(
        "/x",
        ttl=1,
        vary_headers=("Accept", "accept-LANGUAGE"),
        tags="t",
        invalidate_on=("post",),
        statuses=[200, 404],
    )
    assert rule.vary_headers == ("accept", "accept-language")
    assert rule.tags == ("t",)
    assert rule.invalidate_on == ("POST",)
    assert rule.statuses == frozenset({200, 404})
    assert rule.name == "/x"


def test_cache_control_is_case_insensitive_and_merges_repeats() -> None:
    headers = [
        (b"Cache-Control", b"Max-Age=60, PRIVATE"),
        (b"cache-control", b'no-cache="set-cookie"'),
    ]
    assert cache_control(headers) == {"max-age": "60", "private": "", "no-cache": "set-cookie"}


def test_vary_names_are_lowercase_sorted_unique() -> None:
    headers = [(b"Vary", b"Accept-Encoding, ACCEPT"), (b"vary", b"accept-encoding")]
    assert vary_names(headers) == ("accept", "accept-encoding")
    assert vary_names([(b"VARY", b"*")]) == ("*",)


def test_etag_is_strong_quoted_sha256_of_body() -> None:
    etag = etag_for(b"hello")
    assert etag == '"' + hashlib.sha256(b"hello").hexdigest()[:32] + '"'
    assert not etag.startswith("W/")


@pytest.mark.parametrize(
    ("header", "matches"),
    [('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True), ('"abd"', False)],
)
def test_if_none_match(header: str, matches: bool) -> None:
    assert if_none_match_matches([header], '"abc"') is matches


@given(
    st.lists(st.tuples(st.text("abc=&%+", max_size=3), st.text("xyz", max_size=3)), max_size=6),
    st.randoms(),
)
def test_query_order_between_names_never_changes_the_key(
    pairs: list[tuple[str, str]], chooser: Any
) -> None:
    from urllib.parse import urlencode

    names = sorted({name for name, _ in pairs})
    chooser.shuffle(names)
    rank = {name: position for position, name in enumerate(names)}
    # Another order of the names; parameters of one name keep their relative order.
    reordered = sorted(pairs, key=lambda pair: rank[pair[0]])
    assert normalise_query(urlencode(pairs).encode()) == normalise_query(
        urlencode(reordered).encode()
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b"page=2&page=1", b"page=1&page=2"),
        (b"a=1&%61=2", b"%61=2&a=1"),
        (b"q=%FF", b"q=%FE"),
        (b"q=+", b"q=%2B"),
        (b"q", b"q="),
        # both names are "\ufffd" to the app, which reads ["1", "2"] and ["2", "1"]
        (b"%FF=1&%FE=2", b"%FE=2&%FF=1"),
        (b"%C3=1&%FF=2", b"%FF=2&%C3=1"),
    ],
)
def test_queries_an_app_can_tell_apart_get_different_keys(first: bytes, second: bytes) -> None:
    assert normalise_query(first) != normalise_query(second)


QUERY_PIECES = st.sampled_from(["a", "%61", "+", "%20", "%FF", "%FE", "%C3", "%A9", "\xe9", "b"])


@given(
    st.lists(
        st.tuples(
            st.lists(QUERY_PIECES, min_size=1, max_size=2).map("".join),
            st.sampled_from(["1", "2", "%FF"]),
        ),
        max_size=6,
    ),
    st.randoms(),
)
def test_one_key_means_one_answer_for_the_app(pairs: list[tuple[str, str]], chooser: Any) -> None:
    # Two raw queries that share a key must read the same to Starlette: every
    # name the app can ask for gives the same list of values in the same order.
    from starlette.datastructures import QueryParams

    shuffled = list(pairs)
    chooser.shuffle(shuffled)
    first, second = (
        "&".join(f"{n}={v}" for n, v in one).encode("latin-1") for one in (pairs, shuffled)
    )
    if normalise_query(first) == normalise_query(second):
        seen = [QueryParams(query.decode("latin-1")) for query in (first, second)]
        for name in set(seen[0].keys()) | set(seen[1].keys()):
            assert seen[0].getlist(name) == seen[1].getlist(name), (first, second)


def test_different_queries_give_different_keys() -> None:
    assert normalise_query(b"foo=bar") != normalise_query(b"")
    assert base_digest("r", ITEMS, normalise_query(b"foo=bar"), None, []) != base_digest(
        "r", ITEMS, "", None, []
    )


def test_absent_and_empty_headers_vary_differently() -> None:
    absent = vary_values([], ["accept"])
    empty = vary_values([(b"accept", b"")], ["accept"])
    assert absent != empty
    assert base_digest("r", ROOT, "", None, absent) != base_digest("r", ROOT, "", None, empty)


@given(st.text(max_size=8), st.text(max_size=8))
def test_user_is_part_of_the_key(first: str, second: str) -> None:
    same = base_digest("r", ROOT, "", first, []) == base_digest("r", ROOT, "", second, [])
    assert same == (first == second)
    assert base_digest("r", ROOT, "", None, []) != base_digest("r", ROOT, "", "", [])
