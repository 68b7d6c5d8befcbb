"""Single labelled images for Diffusion-KTO: each training example is one image and its label.

The official code (jacklishufan/diffusion-kto, ``train_kto_sd_v1.5.py``) trains on
single images with a desirable/undesirable label, drawing them with a
``WeightedRandomSampler`` (with replacement) whose class weights make a draw
desirable with probability ``--positive_ratio``, uniformly within each class.
Here each example slot of an epoch makes that draw from its own seeded
generator (so a run still resumes from a step count), and the batch draws an
independent timestep and noise per image, as that code does.

Images come from an imagefolder whose ``metadata.jsonl`` labels each image
(``data.label_column``), or from Pick-a-Pic's pairs taken apart: each pair's
preferred image is desirable, the other undesirable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import DataError
from spin_diffusion.training.batches import Members

if TYPE_CHECKING:
    import torch

    from spin_diffusion.config.data import DataConfig


@dataclass(frozen=True)
class ImageRef:
    """One image of the latent cache: its example index and, for a pair cache, which member (0 = winner)."""

    index: int
    member: int | None = None


class LabelledImages:
    """What the trainer trains KTO on: ``len`` example slots, each one labelled image."""

    paired = False

    def __init__(
        self, cache: Any, refs: list[ImageRef], labels: list[bool], flip: bool, desirable_ratio: float | None
    ) -> None:
        if desirable_ratio is not None and not (any(labels) and not all(labels)):
            raise DataError(
                "training.kto.desirable_ratio needs both desirable and undesirable images; the data has only "
                + ("desirable" if labels and all(labels) else "undesirable")
                + " ones (set the ratio to null to draw images as they come)"
            )
        self.cache = cache
        self.refs = refs
        self.labels = labels
        self.flip = flip
        self.ratio = desirable_ratio
        self.desirable = [i for i, good in enumerate(labels) if good]
        self.undesirable = [i for i, good in enumerate(labels) if not good]

    def __len__(self) -> int:
        return len(self.refs)

    def caption(self, index: int) -> str:
        return self.cache.captions[self.refs[index].index]

    def latents(self, index: int, epoch: int, rng: torch.Generator) -> Members:
        import torch

        if self.ratio is not None:  # the official weighted draw: a class, then an image of it
            good = bool(torch.rand(1, generator=rng) < self.ratio)
            pool = self.desirable if good else self.undesirable
            index = pool[int(torch.randint(0, len(pool), (1,), generator=rng))]
        ref = self.refs[index]
        flip = self.flip and bool(torch.rand(1, generator=rng) < 0.5)
        if ref.member is None:
            latent, size = (
                self.cache.latents(ref.index, flip=flip),
                self.cache.size_cond(ref.index, flip=flip),
            )
        else:
            latent = self.cache.pair_latents(ref.index, flip=flip)[ref.member]
            size = self.cache.pair_size_cond(ref.index, flip=flip)[ref.member]
        caption = self.cache.captions[ref.index]
        return Members(latent, size_a=size, caption=caption, label=int(self.labels[index]))


def labelled_images(cache: Any, data_cfg: DataConfig, desirable_ratio: float | None) -> LabelledImages:
    """The labelled images of a latent cache: Pick-a-Pic pairs taken apart, or an imagefolder's labels."""
    if cache.pairs:
        refs = [ImageRef(i, member) for i in range(len(cache)) for member in (0, 1)]
        labels = [ref.member == 0 for ref in refs]
    else:
        from spin_diffusion.data.labels import image_labels

        table = image_labels(data_cfg)
        refs = [ImageRef(i) for i in range(len(cache))]
        missing = [cache.ids[i] for i in range(len(cache)) if cache.ids[i] not in table]
        if missing:
            raise DataError(f"{data_cfg.path}: no label '{data_cfg.label_column}' for {missing[0]}")
        labels = [table[cache.ids[i]] for i in range(len(cache))]
    return LabelledImages(cache, refs, labels, data_cfg.random_flip, desirable_ratio)
