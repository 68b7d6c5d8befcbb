"""Every random choice the project makes, and what each depends on.

Nothing here draws from a global generator: each choice gets its own seed,
hashed from the values that must decide it, so a run is reproducible, resumes
exactly from a step count, and a precomputed reference sees the same draws as
training. The choices:

==========================  ==============================================  ===================
choice                      decided by                                      where
==========================  ==============================================  ===================
iteration seed              run ``seed`` and iteration ``k``                ``iteration_seed``
example order (per epoch)   iteration seed, epoch                           ``batches``
t, noise, flip, caption     iteration seed, example index, epoch            ``batches.make_batch``
dropout, opponent sample    (drawn in that order from one generator; flip
pick                        and pick inside ``TrainingData.latents``)
opponent sample ``j``       iteration seed, prompt id, ``j``                ``sampling``
evaluation image ``j``      ``evaluation.seed``, prompt id, ``j``           ``evaluation.runner``
random crop                 ``data.seed``, "crop", example id, epoch        ``data.transforms``
validation images           fixed seeds ``0..n-1``                          ``validation``
==========================  ==============================================  ===================

Hashes are blake2b of the decimal text (stable across processes and
platforms, unlike Python's ``hash``).
"""

from __future__ import annotations

import hashlib
import random

_MASK = (1 << 63) - 1


def stable_seed(*keys: object) -> int:
    """A 63-bit seed determined only by ``keys`` (any values with a stable ``str``)."""
    text = ":".join(str(k) for k in keys)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & _MASK


def iteration_seed(seed: int, k: int) -> int:
    """The seed of iteration ``k`` of a run: its example order, draws and opponent samples."""
    return seed + 1000 * k


def example_seed(seed: int, index: int, epoch: int, purpose: str = "") -> int:
    """One training example's generator seed in one epoch (``index`` -1: the epoch's order)."""
    return stable_seed(seed, index, epoch, purpose)


def sample_seed(base_seed: int, prompt_id: str, index: int) -> int:
    """Seed of the ``index``-th sample for a prompt: independent of batch size and process count."""
    return stable_seed(base_seed, prompt_id, index)


def example_rng(seed: int, *keys: object) -> random.Random:
    """A Python generator determined only by the seed and the keys (string seeding is stable)."""
    return random.Random(":".join([str(seed), *(str(k) for k in keys)]))
