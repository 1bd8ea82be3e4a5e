"""Writing a resolved recipe as TOML (`RUN/recipe.toml`, `mtl recipes show`) that `tomllib` reads back to the
same dict: the standard library reads TOML but does not write it."""

from __future__ import annotations

import json
import math
from typing import Any


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
        )
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def dump_toml(recipe: dict) -> str:
    """A resolved recipe as TOML text that `tomllib` reads back to the same dict."""
    lines: list[str] = []
    for section in ("model", "data", "train", "eval"):
        table = recipe.get(section, {})
        lines.append(f"[{section}]")
        tables = {}
        for key, value in table.items():
            if section == "train" and key == "stages" and value:
                continue  # written below as [[train.stages]]
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                tables[key] = value  # e.g. data.label_map: written as its own [data.label_map] table
                continue
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            lines.append(f"\n[{section}.{_toml_key(key)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        if section == "train":
            for stage in table.get("stages", []):
                lines.append("\n[[train.stages]]")
                lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in stage.items())
        lines.append("")
    return "\n".join(lines)
