"""The exact judge: reads a toy image back with fixed rules, no learned model.

Per pixel: the nearest palette colour if it is close enough, else background. Per colour:
4-connected components above a minimum area are objects. Per object: shape from fill ratio,
vertical centroid offset and corner fill of its bounding box (nearest prototype), size from
area (undoing the shape's fill ratio), position from the centroid (nearest region centre).
Prompt fidelity = fraction of the prompt's demands met (each prompted attribute of each object,
plus the object count), under the best matching of prompted to detected objects.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from spin_diffusion.toy.render import CURATED_BACKGROUND, dilate, shape_mask
from spin_diffusion.toy.world import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    PromptSpec,
    complete_spec,
    parse_prompt,
)

if TYPE_CHECKING:
    import torch

COLOUR_TOLERANCE = 70.0  # max RGB distance from a palette colour for a pixel to count as that colour
MIN_AREA_FRACTION = 0.006  # components smaller than this share of the image are specks, not objects
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_COLOUR_NAMES = list(COLOURS)
# Measured area misses anti-aliased edge pixels; this restores the nominal side (calibrated on renders).
SIDE_CORRECTION_PX = 0.0


@dataclass
class Detected:
    """One object read back from an image."""

    colour: str
    shape: str
    size: str
    position: str
    area: int
    centroid: tuple[float, float]  # (x, y) as image fractions
    side: float  # estimated bounding-box side as an image fraction

    def get(self, attribute: str) -> str:
        return getattr(self, attribute)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (row, col) indices."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    out = []
    for r0, c0 in zip(*np.nonzero(mask), strict=True):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, pixels = deque([(r0, c0)]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(np.array(pixels))
    return out


def shape_features(pixels: np.ndarray) -> np.ndarray:
    """(fill ratio, vertical centroid offset / height, corner-cell fill) of one component."""
    rows, cols = pixels[:, 0], pixels[:, 1]
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    bh, bw = r1 - r0, c1 - c0
    box = np.zeros((bh, bw), dtype=bool)
    box[rows - r0, cols - c0] = True
    fill = len(pixels) / (bh * bw)
    yoff = ((rows + 0.5).mean() - (r0 + r1) / 2) / bh
    kh, kw = max(1, round(bh / 4)), max(1, round(bw / 4))
    corners = [box[:kh, :kw], box[:kh, -kw:], box[-kh:, :kw], box[-kh:, -kw:]]
    return np.array([fill, yoff, float(np.mean([c.mean() for c in corners]))])


@lru_cache(maxsize=128)
def shape_prototypes(side_px: int = 64) -> dict[str, np.ndarray]:
    """Mean features of each shape as it looks at ``side_px`` pixels after anti-aliasing.

    Small objects are blocky (a 6-pixel circle is nearly a square), so prototypes are measured at
    the detected size: shapes drawn at 4x on a few sub-pixel offsets, box-averaged, and kept where
    coverage > 0.7 (about where the colour tolerance cuts an edge pixel).
    """
    from spin_diffusion.toy.render import SUPERSAMPLE as S

    side_px = int(min(max(side_px, 3), 64))
    canvas = side_px + 6
    protos = {}
    for shape in SHAPES:
        feats = []
        for dx, dy in ((0.0, 0.0), (0.25, 0.5), (0.5, 0.25), (0.75, 0.75), (0.4, 0.1), (0.1, 0.6)):
            c = (canvas / 2 + dx) * S, (canvas / 2 + dy) * S
            mask = shape_mask(shape, canvas * S, c[0], c[1], side_px * S)
            cover = mask.reshape(canvas, S, canvas, S).mean(axis=(1, 3))
            pix = np.argwhere(cover > 0.7)
            if len(pix):
                feats.append(shape_features(pix))
        protos[shape] = np.mean(feats, axis=0)
    return protos


_FEATURE_SCALE = np.array([0.08, 0.05, 0.25])


def classify_shape(features: np.ndarray, side_px: int = 64) -> str:
    """Nearest size-matched prototype in scaled feature space."""
    protos = shape_prototypes(side_px)
    dists = {s: float((((features - p) / _FEATURE_SCALE) ** 2).sum()) for s, p in protos.items()}
    return min(dists, key=dists.get)  # type: ignore[arg-type]


def classify_size(side: float) -> str:
    """Nearest nominal side on a log scale."""
    return min(SIZES, key=lambda s: abs(np.log(side / SIZES[s])))


def classify_position(x: float, y: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - x) ** 2 + (POSITIONS[p][1] - y) ** 2)


def colour_labels(arr: np.ndarray) -> np.ndarray:
    """Per-pixel palette index, or -1 where no palette colour is within tolerance."""
    d = np.linalg.norm(arr[:, :, None, :] - _PALETTE[None, None], axis=-1)
    labels = d.argmin(-1)
    labels[d.min(-1) > COLOUR_TOLERANCE] = -1
    return labels


def detect_objects(image: Image.Image) -> tuple[list[Detected], list[np.ndarray]]:
    """All objects in the image (largest first) and their pixel index arrays."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = arr.shape[:2]
    labels = colour_labels(arr)
    min_area = max(3, MIN_AREA_FRACTION * h * w)
    found = []
    for k, name in enumerate(_COLOUR_NAMES):
        for pix in _components(labels == k):
            if len(pix) < min_area:
                continue
            box_side = int(max(np.ptp(pix[:, 0]), np.ptp(pix[:, 1])) + 1)
            shape = classify_shape(shape_features(pix), box_side)
            fill = shape_prototypes()[shape][0]
            side = (np.sqrt(len(pix) / fill) + SIDE_CORRECTION_PX) / np.sqrt(h * w)
            cy, cx = (pix[:, 0] + 0.5).mean() / h, (pix[:, 1] + 0.5).mean() / w
            det = Detected(name, shape, classify_size(side), classify_position(cx, cy), len(pix),
                           (round(float(cx), 4), round(float(cy), 4)), round(float(side), 4))  # fmt: skip
            found.append((det, pix))
    found.sort(key=lambda dp: -dp[0].area)
    return [d for d, _ in found], [p for _, p in found]


def _match(objs: tuple[ObjectSpec, ...], dets: list[Detected]) -> tuple[list[int | None], int]:
    """Assignment of prompted to detected objects that satisfies the most attributes."""
    cands = list(range(min(len(dets), 4))) + [None] * len(objs)
    best: tuple[list[int | None], int] = ([None] * len(objs), -1)
    # dict.fromkeys drops repeats in a fixed order; a set's order of tuples holding None changes from
    # process to process (hash(None) is its address), and so did the winner of a tie.
    for perm in dict.fromkeys(itertools.permutations(cands, len(objs))):
        score = sum(
            sum(o.get(a) is not None and dets[j].get(a) == o.get(a) for a in ATTRIBUTES)
            for o, j in zip(objs, perm, strict=True)
            if j is not None
        )
        if score > best[1]:
            best = (list(perm), score)
    return best


def style_parts(image: Image.Image, pixel_sets: list[np.ndarray]) -> dict[str, float]:
    """House-style evidence: cream background, dark outlines around objects, clean (noise-free) pixels."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w = arr.shape[:2]
    objects = np.zeros((h, w), dtype=bool)
    for pix in pixel_sets:
        objects[pix[:, 0], pix[:, 1]] = True
    bg = ~dilate(objects, 2)
    if not bg.any():
        bg = ~objects
    luma = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    bg_luma = float(np.median(luma[bg])) if bg.any() else 255.0
    background = (
        float((np.abs(arr[bg] - np.array(CURATED_BACKGROUND)).max(-1) < 20).mean()) if bg.any() else 0.0
    )
    outline_scores = []
    for pix in pixel_sets:
        mask = np.zeros((h, w), dtype=bool)
        mask[pix[:, 0], pix[:, 1]] = True
        ring1 = dilate(mask, 1) & ~objects
        ring2 = dilate(mask, 2) & ~objects
        dark = ring2 & (luma < bg_luma - 60) & (arr.max(-1) - arr.min(-1) < 60)
        outline_scores.append(min(1.0, dark.sum() / max(1, ring1.sum())))
    outline = float(np.mean(outline_scores)) if outline_scores else 0.0
    pad = np.pad(arr, ((1, 1), (1, 1), (0, 0)), mode="edge")
    shifts = np.stack([pad[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    deviation = np.abs(arr - np.median(shifts, axis=0)).max(-1)
    clean = float(max(0.0, 1.0 - deviation[bg].mean() / 8.0)) if bg.any() else 0.0
    return {"background": background, "outline": outline, "clean": clean}


def judge(image: Image.Image, prompt: str) -> dict:
    """Per-attribute verdict for one image: checks, fidelity, detected objects, style parts."""
    spec = parse_prompt(prompt)
    dets, pixel_sets = detect_objects(image)
    objs = spec.objects
    checks: dict[str, bool] = {}
    matched: list[int | None] = []
    if objs:
        matched, _ = _match(objs, dets)
        checks["count"] = len(dets) == len(objs)
        for i, (o, j) in enumerate(zip(objs, matched, strict=True)):
            for a in ATTRIBUTES:
                if o.get(a) is not None:
                    checks[f"object{i}.{a}"] = j is not None and dets[j].get(a) == o.get(a)
    parts = style_parts(image, pixel_sets)
    return {
        "prompt": prompt,
        "fidelity": float(np.mean(list(checks.values()))) if checks else 1.0,
        "checks": checks,
        "n_expected": len(objs),
        "n_detected": len(dets),
        "detected": [asdict(d) for d in dets],
        "matched": matched,
        "style": float(np.mean(list(parts.values()))),
        "style_parts": parts,
    }


@lru_cache(maxsize=4096)
def open_attribute_distribution(prompt: str, n_samples: int = 256) -> dict[tuple[int, str], dict[str, float]]:
    """Curated-data distribution of each attribute the prompt leaves open, per object (Monte Carlo, seeded)."""
    spec = parse_prompt(prompt)
    rng = np.random.default_rng(_stable_seed(spec))
    counts: dict[tuple[int, str], Counter] = {}
    for _ in range(n_samples):
        full = complete_spec(spec, rng)
        for i, (o, f) in enumerate(zip(spec.objects, full.objects, strict=True)):
            for a in ATTRIBUTES:
                if o.get(a) is None:
                    counts.setdefault((i, a), Counter())[f.get(a)] += 1
    return {k: {v: c / n_samples for v, c in cnt.items()} for k, cnt in counts.items()}


def _stable_seed(spec: PromptSpec) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(spec.canonical().encode()).digest()[:4], "big")


def set_metrics(images: list[Image.Image], prompts: list[str]) -> dict[str, float]:
    """Set-level numbers: TV distance of open attributes vs curated data, diversity, mean scores.

    ``open_tv_<attr>``: total-variation distance between the values the images show for attributes
    their prompts leave open and what curated data would show (a missing object counts as its own
    value). ``diversity_pixel``: mean pairwise mean-absolute pixel difference among images that share
    a prompt; ``diversity_attr``: distinct open-attribute outcomes / images, per shared prompt.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    gen: dict[str, Counter] = {a: Counter() for a in ATTRIBUTES}
    ref: dict[str, Counter] = {a: Counter() for a in ATTRIBUTES}
    groups: dict[str, list[int]] = {}
    outcomes: list[tuple] = []
    verdicts = [judge(im, p) for im, p in zip(images, prompts, strict=True)]
    for idx, (v, p) in enumerate(zip(verdicts, prompts, strict=True)):
        groups.setdefault(p, []).append(idx)
        outcome = []
        for (i, a), dist in open_attribute_distribution(p).items():
            j = v["matched"][i]
            value = v["detected"][j][a] if j is not None else "missing"
            gen[a][value] += 1
            outcome.append(value)
            for val, prob in dist.items():
                ref[a][val] += prob
        outcomes.append(tuple(outcome))
    out: dict[str, float] = {
        "fidelity": float(np.mean([v["fidelity"] for v in verdicts])) if verdicts else float("nan"),
        "style": float(np.mean([v["style"] for v in verdicts])) if verdicts else float("nan"),
    }
    tvs = []
    for a in ATTRIBUTES:
        n_gen, n_ref = sum(gen[a].values()), sum(ref[a].values())
        if n_gen == 0:
            continue
        values = set(gen[a]) | set(ref[a]) | set(ATTRIBUTE_VALUES[a])
        tv = 0.5 * sum(abs(gen[a][x] / n_gen - ref[a][x] / n_ref) for x in values)
        out[f"open_tv_{a}"] = float(tv)
        tvs.append(tv)
    out["open_tv"] = float(np.mean(tvs)) if tvs else float("nan")
    pix, attr = [], []
    for idxs in groups.values():
        if len(idxs) < 2:
            continue
        arrs = [np.asarray(images[i].convert("RGB"), dtype=np.float32) / 255 for i in idxs]
        pix.append(np.mean([np.abs(x - y).mean() for x, y in itertools.combinations(arrs, 2)]))
        if outcomes[idxs[0]]:
            attr.append(len({outcomes[i] for i in idxs}) / len(idxs))
    out["diversity_pixel"] = float(np.mean(pix)) if pix else float("nan")
    out["diversity_attr"] = float(np.mean(attr)) if attr else float("nan")
    return out


class OracleScorer:
    """The evaluation harness's scorer interface over the oracle: higher is better, one float per image."""

    higher_is_better = True

    def __init__(self, metric: Literal["fidelity", "style"] = "fidelity") -> None:
        if metric not in ("fidelity", "style"):
            raise ValueError(f"toy oracle metric must be 'fidelity' or 'style', got {metric!r}")
        self.metric = metric
        self.name = f"toy_{metric}"

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return torch.tensor([judge(im, p)[self.metric] for im, p in zip(images, prompts, strict=True)],
                            dtype=torch.float32)  # fmt: skip
