"""The name of a model in a study's tables, as a record: which method made it, at which iteration or step.

Names are strings only at the boundary (evaluation keys, summary.json, table
rows): :meth:`ModelName.parse` reads one and :attr:`ModelName.name` writes it,
so no other code takes a name apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERNS = (
    (re.compile(r"^sft-(\d+)$"), "sft", "step"),
    (re.compile(r"^spin-exact-(\d+)$"), "spin-exact", "iteration"),
    (re.compile(r"^spin-(\d+)-continued$"), "spin-continued", "iteration"),
    (re.compile(r"^spin-(\d+)$"), "spin", "iteration"),
)


@dataclass(frozen=True)
class ModelName:
    """``method`` is the study method that trained the model (``base`` for the shipped base model).

    ``iteration``: the self-play iteration (spin, spin-exact, spin-continued);
    ``step``: the SFT checkpoint's optimizer step. Any other name (``dpo``, a
    family method, the table alias ``sft-best``) is a method alone.
    """

    method: str
    iteration: int | None = None
    step: int | None = None

    @classmethod
    def parse(cls, name: str) -> ModelName:
        for pattern, method, field in _PATTERNS:
            match = pattern.match(name)
            if match:
                return cls(method, **{field: int(match.group(1))})
        return cls(name)

    @property
    def name(self) -> str:
        if self.method == "sft" and self.step is not None:
            return f"sft-{self.step}"
        if self.iteration is None:
            return self.method
        if self.method == "spin-continued":
            return f"spin-{self.iteration}-continued"
        return f"{self.method}-{self.iteration}"

    def __str__(self) -> str:
        return self.name


def sft_step(name: str) -> int | None:
    """The step of an SFT checkpoint's model name (``sft-200``), None for other models."""
    model = ModelName.parse(name)
    return model.step if model.method == "sft" else None
