"""The quota's Lua scripts come from the package's `lua/` files, each file used."""

from __future__ import annotations

from importlib import resources

from metering.quota import scripts


def test_every_lua_file_is_part_of_a_script() -> None:
    files = {
        entry.name.removesuffix(".lua")
        for entry in (resources.files("metering.quota") / "lua").iterdir()
        if entry.name.endswith(".lua")
    }
    used = {part for parts in scripts._PARTS.values() for part in parts}
    assert files == used


def test_no_placeholder_is_left_in_a_script() -> None:
    for name, source in scripts.SOURCES.items():
        for placeholder in scripts._CONSTANTS:
            assert placeholder not in source, name
    assert "redis.call('EXPIRE', KEYS[1], 88200)" in scripts.RESERVE  # 30 min + 24 h


def test_shared_functions_come_first() -> None:
    assert scripts.SWEEP.startswith("\nlocal function int(x)")
    assert "local function release(h, tombstone_ttl)" in scripts.ABANDON
    assert "local function release" not in scripts.CLOSE
