"""The quota's Lua scripts, read once from the package's `lua/` files.

Each script is its own `.lua` file; the shared Lua functions (`lib_*.lua`) are put in front of
the scripts that use them, so every script stays one self-contained text for `EVALSHA`.
"""

from __future__ import annotations

from importlib import resources

from metering.quota.keys import HOLD_TTL, TOMBSTONE_TTL

# script -> the files it is made of, shared functions first
_PARTS: dict[str, tuple[str, ...]] = {
    "reserve": ("lib_int", "reserve"),
    "close": ("lib_int", "close"),
    "sweep": ("lib_int", "lib_release", "sweep"),
    "release_dead": ("lib_int", "lib_release", "release_dead"),
    "beat": ("beat",),
    "adopt": ("lib_int", "adopt"),
    "abandon": ("lib_int", "lib_release", "abandon"),
    "reserved_recompute": ("reserved_recompute",),
    "seed": ("seed",),
    "reconcile": ("reconcile",),
}

# Values written into a script's text where Lua has no other way to know them.
_CONSTANTS = {"HOLD_KEY_TTL": str(HOLD_TTL + TOMBSTONE_TTL)}


def _read(name: str) -> str:
    return (resources.files("metering.quota") / "lua" / f"{name}.lua").read_text("utf-8")


def _build(parts: tuple[str, ...]) -> str:
    text = "".join("\n" + _read(part) for part in parts)
    for placeholder, value in _CONSTANTS.items():
        text = text.replace(placeholder, value)
    return text


SOURCES: dict[str, str] = {name: _build(parts) for name, parts in _PARTS.items()}

RESERVE = SOURCES["reserve"]
CLOSE = SOURCES["close"]
SWEEP = SOURCES["sweep"]
RELEASE_DEAD = SOURCES["release_dead"]
BEAT = SOURCES["beat"]
ADOPT = SOURCES["adopt"]
ABANDON = SOURCES["abandon"]
RESERVED_RECOMPUTE = SOURCES["reserved_recompute"]
SEED = SOURCES["seed"]
RECONCILE = SOURCES["reconcile"]
