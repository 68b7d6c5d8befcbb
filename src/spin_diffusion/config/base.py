"""The strict foundation every config file shares: YAML without duplicate keys, numbers without booleans.

Nothing here imports torch, so a bad config answers in about a second.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from spin_diffusion.errors import ConfigError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice.

    PyYAML silently keeps the last value, so a second ``beta:`` pasted into a block would
    overrule the first without a word. Keys brought in by a ``<<`` merge may still be
    overridden by explicit ones, as YAML intends.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first_line.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if earlier is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given on line {earlier})",
                        key_node.start_mark,
                    )
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with :class:`UniqueKeyLoader`; any error is one line naming ``source``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        if problem and str(problem).startswith("duplicate key"):
            raise ConfigError(f"{source}:{where}: {problem}") from None
        detail = f" ({problem})" if problem else ""
        raise ConfigError(f"{source}:{where} is not valid YAML{detail}") from None


def read_yaml_file(path: Path) -> Any:
    """Read and parse a YAML file; missing, unreadable or non-UTF-8 files are one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return parse_yaml(text, str(path))


def _is_number_type(annotation: Any) -> bool:
    """True for ``int``, ``float`` and optionals/unions of them (``bool`` is not a number here)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_number_type(arg) for arg in typing.get_args(annotation))
    return False


class StrictNumbers(BaseModel):
    """Refuses booleans for number fields and inf/NaN for float fields.

    Pydantic's lax mode turns ``max_steps: true`` (YAML also reads ``yes``/``on`` as true) into 1,
    and an infinite learning rate or beta would only surface later as a NaN loss that names no
    field. Full strict mode is not used because it would refuse ``learning_rate: 2e-5``, which
    YAML 1.1 reads as a string.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _is_number_type(field.annotation):
            raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
        return value


class Strict(StrictNumbers):
    """Strict numbers, no unknown keys, and assignments validated like input."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's top-level mapping (duplicate keys and non-UTF-8 text are refused)."""
    path = Path(path)
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level")
    return raw


def format_validation_error(exc: ValidationError, source: str) -> str:
    """The first problem of a validation error as one line: ``source: field.path: message``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{source}: {where}: {str(err['msg']).removeprefix('Value error, ')}"
