"""Readable examples for the decimal fields of the API schema (a drf-spectacular hook).

A decimal field is a string with a digit pattern; without an example Swagger UI invents one
from the pattern, which reads like `"released": "-19471841113093"`. Each field gets a plausible
value in the API's own machine form (plain digits, no grouping, no exponent, as the API
returns them), chosen by what the field's name says it holds.
"""

from __future__ import annotations

import re
from typing import Any

# Checked in order; the first fragment found in the field's name wins.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("timeout", "30"),
    ("acceptance", "0.83"),
    ("rate", "0.83"),
    ("return_on_spend", "4.2"),
    ("per_mtok", "2.50"),
    ("per_kwh", "1850000"),
    ("per_dollar_per_watt", "3.6"),
    ("per_dollar", "450000"),
    ("per_accepted", "0.42"),
    ("power", "350"),
    ("kwh", "1.75"),
    ("seconds", "12.5"),
    ("cost", "12.50"),
    ("saving", "42.10"),
    ("value", "180.00"),
    ("cap", "5000.00"),
    ("total", "1250.00"),
)
TOKENS = "250000"  # allowance figures (amount, used, released, reserved ...) are mostly tokens


def _example(name: str, pattern: str) -> str:
    example = next((text for part, text in EXAMPLES if part in name), TOKENS)
    return example if not pattern or re.fullmatch(pattern, example) else "0"


def _walk(node: Any, name: str = "") -> None:
    if isinstance(node, dict):
        if node.get("format") == "decimal" and "example" not in node:
            node["example"] = _example(name, node.get("pattern", ""))
        for key, child in node.items():
            _walk(child, key if key not in ("items", "properties", "allOf") else name)
            if key == "properties" and isinstance(child, dict):
                for prop, schema in child.items():
                    _walk(schema, prop)
    elif isinstance(node, list):
        for child in node:
            _walk(child, name)


def decimal_examples(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS entry: every decimal field gets an example it does not have yet."""
    _walk(result)
    return result
