"""The per-process caches are bounded LRUs and never hold (or look up) impossible names."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest

from metering import cache, routing


@pytest.fixture
def make_cache() -> Iterator:
    made: list[str] = []

    def build(**options: object) -> tuple[cache.TTLCache[str], list[str]]:
        loads: list[str] = []

        def loader(name: str) -> str:
            loads.append(name)
            return name.upper()

        name = f"test-bounds-{len(made)}"
        made.append(name)
        return cache.TTLCache(loader, name=name, **options), loads

    yield build
    for name in made:
        cache._caches.pop(name, None)


def test_entries_are_bounded_least_recently_used_first(make_cache) -> None:
    lru, loads = make_cache(max_entries=3)
    for name in ("a", "b", "c"):
        assert lru.get(name) == name.upper()
    assert lru.get("a") == "A"  # a hit: "a" becomes the most recently used
    lru.get("d")  # pushes out "b", the least recently used
    assert [lru.peek(name)[0] for name in "abcd"] == [True, False, True, True]
    assert lru.stats()[0] == 3
    assert loads == ["a", "b", "c", "d"]
    lru.get("b")
    assert loads == ["a", "b", "c", "d", "b"], "a pushed-out entry is loaded again"


def test_bytes_are_bounded(make_cache) -> None:
    name = "n" * 1000
    per_entry = sys.getsizeof(name + "0") + cache.VALUE_BYTES
    lru, _ = make_cache(max_entries=1000, max_bytes=per_entry * 4 + 10)
    for i in range(10):
        lru.get(f"{i}{name}")
    entries, size = lru.stats()
    assert entries == 4
    assert size == per_entry * 4
    assert [lru.peek(f"{i}{name}")[0] for i in range(10)] == [False] * 6 + [True] * 4


def test_misses_are_cached_and_cost_less(make_cache) -> None:
    lru = cache.TTLCache(lambda name: None, name="test-bounds-misses", max_entries=10)
    try:
        assert lru.get("gone") is None
        assert lru.peek("gone") == (True, None)
        assert lru.stats() == (1, sys.getsizeof("gone") + cache.MISS_BYTES)
    finally:
        cache._caches.pop("test-bounds-misses", None)


def test_invalidation_keeps_the_byte_count_exact(make_cache) -> None:
    lru, _ = make_cache(max_entries=10)
    lru.get("a")
    lru.get("b")
    lru.invalidate("a")
    assert lru.stats() == (1, sys.getsizeof("b") + cache.VALUE_BYTES)
    lru._store("b", "B")  # stored again: counted once
    assert lru.stats() == (1, sys.getsizeof("b") + cache.VALUE_BYTES)
    lru.invalidate()
    assert lru.stats() == (0, 0)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "m" * (cache.MODEL_NAME_MAX_LENGTH + 1),
        "m" * 2_000_000,
        "gpt-\ud800",
        "gpt\x00",
        "gpt\x07mini",
        "gpt\nmini",
        " gpt-4o-mini",
        "gpt-4o-mini ",
        "gpt\u2028",
    ],
)
def test_impossible_model_names_are_neither_loaded_nor_stored(name: str, make_cache) -> None:
    lru, loads = make_cache(
        valid=lambda n: cache.name_valid(n, max_length=cache.MODEL_NAME_MAX_LENGTH)
    )
    assert lru.get(name) is None
    assert asyncio.run(lru.aget(name)) is None
    assert loads == []
    assert lru.stats() == (0, 0)


@pytest.mark.parametrize(
    "name",
    ["gpt-4o-mini", "ft:gpt-4o-mini:acme::abc123", "meta-llama/Llama-3.1-8B", "m" * 200, "modèle"],
)
def test_possible_model_names_are_looked_up(name: str, make_cache) -> None:
    lru, loads = make_cache(
        valid=lambda n: cache.name_valid(n, max_length=cache.MODEL_NAME_MAX_LENGTH)
    )
    assert lru.get(name) == name.upper()
    assert loads == [name]


def test_the_proxy_caches_refuse_impossible_names_without_a_query(
    db: None, django_assert_num_queries
) -> None:
    with django_assert_num_queries(0):
        assert cache.routes.get("x" * 1_000_000) is None
        assert cache.routes.get("gpt-\udfff") is None
        assert routing.intents.get("i" * (cache.INTENT_NAME_MAX_LENGTH + 1)) is None
        assert cache.keys.get("not-a-sha256-hex-digest") is None
    assert not cache.routes.peek("x" * 1_000_000)[0]


def test_defaults_come_from_settings(settings, make_cache) -> None:
    settings.TB_CACHE_MAX_ENTRIES = 2
    lru, _ = make_cache()
    for name in "abc":
        lru.get(name)
    assert lru.stats()[0] == 2
