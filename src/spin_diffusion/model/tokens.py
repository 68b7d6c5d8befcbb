"""Can the base model read the captions? Count captions its tokenizer cannot spell or must cut.

A text encoder only sees token ids. A word-level tokenizer (the shipped toy base
knows only the toy grammar) maps letters it does not know to its unknown id,
which for CLIP tokenizers is the end-of-text id, so an unreadable caption looks
like a short one and training still reports a small loss. Captions longer than
the tokenizer's ``model_max_length`` are cut. Both happen without a word from
transformers worth reading, so the run says it once, in its own words.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_BATCH = 4096  # captions tokenized per call: bounded memory for millions of captions


def _content_ids(tokenizer: Any, captions: Sequence[str]) -> list[list[int]]:
    """Token ids without the special tokens the tokenizer adds, and without truncation."""
    ids: list[list[int]] = []
    for start in range(0, len(captions), _BATCH):
        chunk = [str(c) for c in captions[start : start + _BATCH]]
        # verbose=False: no "sequence length is longer than the maximum" warning per long caption
        ids.extend(tokenizer(chunk, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
    return ids


def _max_content_tokens(tokenizer: Any) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit <= 0 or limit >= 1_000_000:  # "no limit" is a huge sentinel
        return None
    return limit - tokenizer.num_special_tokens_to_add()


def _unreadable(ids: list[int], unk: int | None) -> bool:
    return unk is not None and unk in ids


@dataclass
class _Scan:
    n_unknown: int = 0
    n_truncated: int = 0
    unknown_example: str | None = None
    truncated_example: str | None = None


def _scan(tokenizer: Any, captions: Sequence[str]) -> _Scan:
    unk = getattr(tokenizer, "unk_token_id", None)
    limit = _max_content_tokens(tokenizer)
    out = _Scan()
    for caption, ids in zip(captions, _content_ids(tokenizer, captions), strict=True):
        if _unreadable(ids, unk):
            out.n_unknown += 1
            out.unknown_example = out.unknown_example or str(caption)
        if limit is not None and len(ids) > limit:
            out.n_truncated += 1
            out.truncated_example = out.truncated_example or str(caption)
    return out


def caption_token_report(tokenizer: Any, captions: Sequence[str]) -> tuple[int, int]:
    """``(n_unknown_captions, n_truncated_captions)`` for ``captions`` under ``tokenizer``.

    Unknown: the caption's tokens contain the tokenizer's unknown id (a byte-level
    BPE such as SD's CLIP never produces it; a closed vocabulary does for letters
    and signs it lacks). Truncated: the caption plus the special tokens is longer
    than ``model_max_length``.
    """
    scan = _scan(tokenizer, captions)
    return scan.n_unknown, scan.n_truncated


def _unknown_words(tokenizer: Any, caption: str) -> list[str]:
    unk = getattr(tokenizer, "unk_token_id", None)
    words = caption.split()
    return [w for w, ids in zip(words, _content_ids(tokenizer, words), strict=True) if _unreadable(ids, unk)]


def warn_caption_tokens(
    tokenizer: Any, captions: Sequence[str], logger: logging.Logger | None = None
) -> tuple[int, int]:
    """Log one warning when captions hold unknown tokens or will be cut; returns the report.

    Nothing is logged when every caption is readable and fits.
    """
    logger = logger or logging.getLogger("spin_diffusion")
    scan, n = _scan(tokenizer, captions), len(captions)
    parts = []
    if scan.unknown_example is not None:
        words = ", ".join(_unknown_words(tokenizer, scan.unknown_example)[:5]) or "?"
        parts.append(
            f"{scan.n_unknown} of {n} captions contain words the base model's tokenizer does not know "
            f"(e.g. {_short(scan.unknown_example)!r}: {words}); the model cannot read them, so training on "
            "them teaches little (a closed vocabulary, like the shipped toy base's, knows only its own grammar)"
        )
    if scan.truncated_example is not None:
        parts.append(
            f"{scan.n_truncated} of {n} captions are longer than the text encoder's "
            f"{_max_content_tokens(tokenizer)} tokens and are cut (e.g. {_short(scan.truncated_example)!r})"
        )
    if parts:
        logger.warning("; ".join(parts))
    return scan.n_unknown, scan.n_truncated


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
