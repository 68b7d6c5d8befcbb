"""The toy world's prompt grammar and the structured spec behind every prompt.

Every prompt is generated from (and parses back to) a ``PromptSpec``: one or two
objects, each with a colour, shape, size and position that the prompt may leave
open (``None``). Open attributes are filled at render time by ``complete_spec``,
so one prompt maps to a distribution of images, as captions do in real data.
Geometry constants live here so the renderer and the oracle share them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

import numpy as np

from spin_diffusion.errors import DataError

# Palette: saturated colours far (>= ~95 in RGB) from each other and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 45),
    "orange": (240, 130, 20),
    "yellow": (235, 225, 40),
    "green": (40, 165, 65),
    "blue": (40, 90, 215),
    "purple": (140, 60, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Side of the object's bounding box as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.18, "medium": 0.28, "large": 0.40}
# Region centres as (x, y) fractions of the image; the oracle assigns the nearest one.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "size", "position")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
}

# (colour, shape) pairs that never appear in fine-tuning data, prompted or sampled: eval-only.
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("yellow", "cross"), ("green", "circle")}
)
EVAL_BUCKET_FRACTION = 0.2  # share of prompt specs reserved for evaluation (by stable hash)

# Words the grammar uses for each value (first = canonical, rest = paraphrases).
COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus"),
}
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium",),
    "large": ("large", "big"),
}
FILLER_WORDS: tuple[str, ...] = (
    "a", "an", "the", "in", "at", "of", "picture", "there", "is", "placed", "corner", "and", "with",
    "together",
)  # fmt: skip
POSITION_WORDS: tuple[str, ...] = ("top", "bottom", "left", "right", "center", "middle")

VOCABULARY: list[str] = sorted(
    {w for ws in COLOUR_WORDS.values() for w in ws}
    | {w for ws in SHAPE_WORDS.values() for w in ws}
    | {w for ws in SIZE_WORDS.values() for w in ws}
    | set(GENERIC_NOUNS)
    | set(FILLER_WORDS)
    | set(POSITION_WORDS)
)

_WORD_TO = {
    **{w: ("colour", v) for v, ws in COLOUR_WORDS.items() for w in ws},
    **{w: ("shape", v) for v, ws in SHAPE_WORDS.items() for w in ws},
    **{w: ("size", v) for v, ws in SIZE_WORDS.items() for w in ws},
}


@dataclass(frozen=True)
class ObjectSpec:
    """One object; ``None`` means the prompt leaves the attribute open."""

    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None

    def get(self, attribute: str) -> str | None:
        return getattr(self, attribute)

    @property
    def is_complete(self) -> bool:
        return all(self.get(a) is not None for a in ATTRIBUTES)


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: zero (unconditional), one or two objects."""

    objects: tuple[ObjectSpec, ...] = ()

    @property
    def is_complete(self) -> bool:
        return all(o.is_complete for o in self.objects)

    def canonical(self) -> str:
        """Order-free text key: paraphrases of one spec share it (used for the eval split)."""
        parts = sorted("|".join(str(o.get(a)) for a in ATTRIBUTES) for o in self.objects)
        return ";".join(parts)


# ----------------------------------------------------------------------------- feasibility


def object_box(obj: ObjectSpec) -> tuple[float, float, float, float]:
    """Nominal bounding box (x0, y0, x1, y1) in image fractions of a complete object."""
    cx, cy = POSITIONS[obj.position]  # type: ignore[index]
    h = SIZES[obj.size] / 2  # type: ignore[index]
    return cx - h, cy - h, cx + h, cy + h


def boxes_overlap(a: tuple[float, ...], b: tuple[float, ...], gap: float = 0.0) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def is_feasible(spec: PromptSpec, exclude: frozenset[tuple[str, str]] = frozenset()) -> bool:
    """A complete scene is drawable: distinct colours and regions, no overlapping boxes, no excluded combo."""
    objs = spec.objects
    if any((o.colour, o.shape) in exclude for o in objs):
        return False
    if len(objs) == 2:
        a, b = objs
        if a.colour == b.colour or a.position == b.position:
            return False
        if boxes_overlap(object_box(a), object_box(b)):
            return False
    return True


def _uniform(rng: np.random.Generator, values: tuple[str, ...]) -> str:
    return values[int(rng.integers(len(values)))]


def complete_spec(
    spec: PromptSpec,
    rng: np.random.Generator,
    exclude: frozenset[tuple[str, str]] = frozenset(),
    max_tries: int = 1000,
) -> PromptSpec:
    """Fill every open attribute uniformly at random, rejecting undrawable scenes."""
    if not spec.objects:
        return spec
    for _ in range(max_tries):
        objs = tuple(
            ObjectSpec(**{a: o.get(a) or _uniform(rng, ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES})
            for o in spec.objects
        )
        full = PromptSpec(objs)
        if is_feasible(full, exclude):
            return full
    raise DataError(f"toy prompt spec {spec.canonical()!r} has no drawable completion")


def eval_bucket(spec: PromptSpec) -> bool:
    """Stable hash split: True for prompt specs reserved for evaluation."""
    digest = hashlib.sha256(spec.canonical().encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < EVAL_BUCKET_FRACTION


def mentions_held_out(spec: PromptSpec) -> bool:
    return any((o.colour, o.shape) in HELD_OUT_COMBOS for o in spec.objects)


def sample_spec(
    rng: np.random.Generator,
    n_objects: int | None = None,
    p_two: float = 0.4,
    p_mention: dict[str, float] | None = None,
    exclude: frozenset[tuple[str, str]] = frozenset(),
) -> PromptSpec:
    """Draw a prompt spec: a feasible complete scene, then drop the attributes the prompt omits.

    Each object keeps at least its colour or its shape, so no prompt is just "a shape".
    """
    n = n_objects if n_objects is not None else (2 if rng.random() < p_two else 1)
    if n not in (0, 1, 2):
        raise ValueError(f"n_objects must be 0, 1 or 2, got {n}")
    full = complete_spec(PromptSpec((ObjectSpec(),) * n), rng, exclude)
    return omit_attributes(full, rng, p_mention)


P_MENTION: dict[str, float] = {"colour": 0.85, "shape": 0.85, "size": 0.6, "position": 0.6}


def omit_attributes(
    scene: PromptSpec, rng: np.random.Generator, p_mention: dict[str, float] | None = None
) -> PromptSpec:
    """Keep each attribute of a complete scene with its mention probability (colour or shape always)."""
    p = {**P_MENTION, **(p_mention or {})}
    objs = []
    for o in scene.objects:
        keep = {a: o.get(a) if rng.random() < p[a] else None for a in ATTRIBUTES}
        if keep["colour"] is None and keep["shape"] is None:
            which = "colour" if rng.random() < 0.5 else "shape"
            keep[which] = o.get(which)
        objs.append(ObjectSpec(**keep))
    return PromptSpec(tuple(objs))


# ----------------------------------------------------------------------------- text


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _object_phrase(obj: ObjectSpec, rng: np.random.Generator) -> str:
    words = []
    if obj.size:
        words.append(_uniform(rng, SIZE_WORDS[obj.size]))
    if obj.colour:
        words.append(_uniform(rng, COLOUR_WORDS[obj.colour]))
    words.append(_uniform(rng, SHAPE_WORDS[obj.shape]) if obj.shape else _uniform(rng, GENERIC_NOUNS))
    return " ".join([_article(words[0]), *words])


def _position_phrase(position: str | None, rng: np.random.Generator) -> str:
    if position is None:
        return ""
    if position == "center":
        return _uniform(rng, ("in the center", "in the middle", "at the center"))
    return _uniform(rng, (f"in the {position}", f"in the {position} corner", f"at the {position}"))


_ONE_TEMPLATES = ("{o} {p}", "{p} there is {o}", "a picture of {o} {p}", "{o} placed {p}")
_TWO_TEMPLATES = (
    "{o1} {p1} and {o2} {p2}",
    "{p1} there is {o1} and {p2} there is {o2}",
    "a picture of {o1} {p1} together with {o2} {p2}",
    "{o1} {p1} with {o2} {p2}",
)


def spec_to_prompt(spec: PromptSpec, rng: np.random.Generator) -> str:
    """Render a spec as text with a random paraphrase template; ``parse_prompt`` inverts it."""
    if not spec.objects:
        return ""
    o = [_object_phrase(obj, rng) for obj in spec.objects]
    p = [_position_phrase(obj.position, rng) for obj in spec.objects]
    if len(o) == 1:
        text = _uniform(rng, _ONE_TEMPLATES).format(o=o[0], p=p[0])
    else:
        text = _uniform(rng, _TWO_TEMPLATES).format(o1=o[0], p1=p[0], o2=o[1], p2=p[1])
    return re.sub(r"\s+", " ", text).strip()


_SPLIT = re.compile(r"\b(?:and|together with|with)\b")


def _parse_chunk(chunk: str, text: str) -> ObjectSpec:
    words = chunk.split()
    found: dict[str, str] = {}
    noun = False
    for w in words:
        if w in _WORD_TO:
            attr, value = _WORD_TO[w]
            if attr in found and found[attr] != value:
                raise DataError(f"toy prompt {text!r}: two {attr}s for one object")
            found[attr] = value
            noun = noun or attr == "shape"
        elif w in GENERIC_NOUNS:
            noun = True
        elif w not in FILLER_WORDS and w not in POSITION_WORDS:
            raise DataError(f"toy prompt {text!r}: unknown word {w!r}")
    if not noun:
        raise DataError(f"toy prompt {text!r}: no shape noun in {chunk.strip()!r}")
    pos_words = [w for w in words if w in POSITION_WORDS]
    if pos_words:
        if pos_words[0] in ("center", "middle") and len(pos_words) == 1:
            found["position"] = "center"
        elif len(pos_words) == 2 and pos_words[0] in ("top", "bottom") and pos_words[1] in ("left", "right"):
            found["position"] = f"{pos_words[0]} {pos_words[1]}"
        else:
            raise DataError(f"toy prompt {text!r}: unknown position {' '.join(pos_words)!r}")
    return ObjectSpec(**found)


def parse_prompt(text: str) -> PromptSpec:
    """Recover the prompted attributes from a toy prompt (any template); '' is unconditional."""
    clean = re.sub(r"[,.;!]", " ", text.lower()).strip()
    if not clean:
        return PromptSpec()
    chunks = [c for c in _SPLIT.split(clean) if c.strip()]
    if len(chunks) > 2:
        raise DataError(f"toy prompt {text!r}: more than two objects")
    return PromptSpec(tuple(_parse_chunk(c, text) for c in chunks))


def corrupt_spec(
    scene: PromptSpec, rng: np.random.Generator, p_wrong: float = 0.15, p_drop_object: float = 0.1
) -> PromptSpec:
    """A web-style caption spec for a complete scene: omissions, wrong values, a missing object."""
    caption = omit_attributes(scene, rng)
    objs = list(caption.objects)
    if len(objs) == 2 and rng.random() < p_drop_object:
        objs.pop(int(rng.integers(2)))
    out = []
    for o in objs:
        changes = {}
        for a in ATTRIBUTES:
            v = o.get(a)
            if v is not None and rng.random() < p_wrong:
                changes[a] = _uniform(rng, tuple(x for x in ATTRIBUTE_VALUES[a] if x != v))
        out.append(replace(o, **changes))
    return PromptSpec(tuple(out))
