"""``--set key.path=value`` overrides: parsed as YAML and applied to the raw config mapping."""

from __future__ import annotations

from typing import Any

from spin_diffusion.config.base import parse_yaml
from spin_diffusion.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` with the value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = parse_yaml(raw, "") if raw.strip() else ""
    except ConfigError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML") from exc
    return key.strip().split("."), value


def _list_index(node: list[Any], part: str, where: str, text: str) -> int:
    """``part`` as an index into the list at ``where``, or a one-line error saying what fits."""
    if not part.isdigit():
        raise ConfigError(
            f"override {text!r}: {where} is a list; use an index from 0 to {len(node) - 1}, not {part!r}"
            if node
            else f"override {text!r}: {where} is an empty list; write its entries in the config file"
        )
    index = int(part)
    if index >= len(node):
        entries = "1 entry" if len(node) == 1 else f"{len(node)} entries"
        raise ConfigError(f"override {text!r}: {where} has {entries}, index {index} is out of range")
    return index


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key.path=value`` overrides in place; list entries are addressed by index."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        for depth, part in enumerate(path):
            where = ".".join(path[:depth]) or "the top level"
            last = depth == len(path) - 1
            if isinstance(node, list):
                index = _list_index(node, part, where, text)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                elif part not in node and path[depth + 1].isdigit():
                    raise ConfigError(
                        f"override {text!r}: {'.'.join(path[: depth + 1])} is not in the config file, "
                        f"so it has no entry {path[depth + 1]}; write the list in the file"
                    )
                else:
                    node = node.setdefault(part, {})
            else:
                raise ConfigError(
                    f"override {text!r}: {where} is a value ({node!r}), not a section with {part!r}"
                )
    return raw
