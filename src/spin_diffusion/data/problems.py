"""Kinds of unusable examples and the tally a scan or a training run keeps of them.

One vocabulary for "what is wrong with this row", shared by lazy validation
during training (stop or skip-and-count) and by ``spin-diffusion data check``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Problem kinds (the keys of SourceStats.problems). Documented in docs/data.md.
UNREADABLE_IMAGE = "unreadable_image"  # corrupt, truncated or not an image
MISSING_IMAGE = "missing_image"  # file not found or empty cell
UNSUPPORTED_MODE = "unsupported_mode"  # e.g. 16-bit or float images
TOO_SMALL = "too_small"  # shorter side below min_image_size
MISSING_CAPTION = "missing_caption"  # null / absent caption
EMPTY_CAPTION = "empty_caption"  # caption is blank
BAD_CAPTION = "bad_caption"  # caption text that is not valid Unicode (a lone surrogate)
PATH_ESCAPE = "path_escape"  # file_name points outside the dataset root
BAD_LABEL = "bad_label"  # Pick-a-Pic labels not in {0, 0.5, 1} or inconsistent
BAD_METADATA = "bad_metadata"  # unparsable metadata line or missing file_name

MAX_SHOWN = 5  # offending rows remembered per kind


class BadExample(Exception):
    """One row is unusable; ``location`` names the file/row, ``kind`` is one of the constants above."""

    def __init__(self, kind: str, location: str, detail: str) -> None:
        super().__init__(f"{location}: {detail}")
        self.kind = kind
        self.location = location
        self.detail = detail


@dataclass
class SourceStats:
    """Counts of one pass over a source; filled while iterating."""

    rows_read: int = 0
    usable: int = 0
    ties_dropped: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    shown: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bad(self) -> int:
        """Number of unusable rows (ties are not unusable: they are dropped by design)."""
        return sum(self.problems.values())

    def record(self, problem: BadExample) -> None:
        """Count a problem and keep its message if it is among the first few of its kind."""
        self.problems[problem.kind] = self.problems.get(problem.kind, 0) + 1
        shown = self.shown.setdefault(problem.kind, [])
        if len(shown) < MAX_SHOWN:
            shown.append(str(problem))

    def to_dict(self) -> dict:
        """JSON-ready form, stored in the latent-cache manifest."""
        return {
            "rows_read": self.rows_read,
            "usable": self.usable,
            "ties_dropped": self.ties_dropped,
            "problems": dict(sorted(self.problems.items())),
            "shown": {k: list(v) for k, v in sorted(self.shown.items())},
        }

    def summary_lines(self) -> list[str]:
        """Human-readable summary: counts first, then the first offending rows per kind."""
        lines = [
            f"rows read:        {self.rows_read}",
            f"usable examples:  {self.usable}",
            f"ties dropped:     {self.ties_dropped}",
            f"unusable:         {self.bad}",
        ]
        for kind in sorted(self.problems):
            lines.append(f"  {kind}: {self.problems[kind]}")
            for msg in self.shown.get(kind, []):
                lines.append(f"    - {msg}")
            extra = self.problems[kind] - len(self.shown.get(kind, []))
            if extra > 0:
                lines.append(f"    ... and {extra} more")
        return lines
