"""Where a model's prompt fidelity goes: the oracle's checks broken down by attribute.

One fidelity number hides whether a model gets colours wrong, draws the wrong
count, or draws nothing at all (an empty cream canvas scores well on style).
This reads the oracle's own per-image verdicts (:func:`spin_diffusion.toy.oracle.judge`,
unchanged) and pools them by kind of check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from spin_diffusion.toy.world import ATTRIBUTES

if TYPE_CHECKING:
    from PIL import Image

#: The breakdown's keys, in table order, with the column titles the reports use.
BREAKDOWN_COLUMNS: dict[str, str] = {
    "attr_count": "count",
    "attr_colour": "colour",
    "attr_shape": "shape",
    "attr_size": "size",
    "attr_position": "position",
    "objects_found_per_asked": "objects found / asked",
    "empty_share": "empty images",
}


def breakdown_of_verdicts(verdicts: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Pass rate of each kind of check, objects found per object asked, share of empty images.

    ``attr_<a>``: the share of passed checks of attribute ``a`` over every prompted object of every
    image (``attr_count``: images with the asked number of objects); NaN when no prompt asks for it.
    ``objects_found_per_asked``: objects detected / objects prompted, pooled over images (above 1:
    extra objects). ``empty_share``: images in which the oracle finds no object at all.
    """
    passed: dict[str, list[bool]] = {"count": [], **{a: [] for a in ATTRIBUTES}}
    for v in verdicts:
        for name, ok in v["checks"].items():
            kind = name.rsplit(".", 1)[-1]  # "count" or "object<i>.<attribute>"
            passed[kind].append(bool(ok))
    out = {f"attr_{k}": (sum(vals) / len(vals) if vals else float("nan")) for k, vals in passed.items()}
    asked = sum(v["n_expected"] for v in verdicts)
    out["objects_found_per_asked"] = sum(v["n_detected"] for v in verdicts) / asked if asked else float("nan")
    out["empty_share"] = (
        sum(v["n_detected"] == 0 for v in verdicts) / len(verdicts) if verdicts else float("nan")
    )
    return out


def fidelity_breakdown(images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, float]:
    """:func:`breakdown_of_verdicts` of the oracle's verdicts on ``images`` for their ``prompts``."""
    from spin_diffusion.toy.oracle import judge

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    return breakdown_of_verdicts([judge(im, p) for im, p in zip(images, prompts, strict=True)])


def breakdown_cells(row: dict[str, Any], fmt: str = "{:.3f}") -> list[str]:
    """A model's breakdown as table cells in :data:`BREAKDOWN_COLUMNS` order ('-' where absent)."""
    cells = []
    for key in BREAKDOWN_COLUMNS:
        v = row.get(key)
        if v is None or v != v:  # absent or NaN
            cells.append("-")
        elif key == "empty_share":
            cells.append(f"{100 * v:.0f}%")
        elif key == "objects_found_per_asked":
            cells.append(f"{v:.2f}")
        else:
            cells.append(fmt.format(v))
    return cells
