"""Typed settings for training data and evaluation prompt sets.

Kept free of torch/diffusers/datasets imports so that loading and validating a
run config stays instant. Paths are kept exactly as written; the loaders
resolve relative paths against the current working directory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from spin_diffusion.config.base import StrictNumbers

SourceKind = Literal["imagefolder", "parquet", "pickapic", "hf_disk", "hf"]
PromptKind = Literal["text", "partiprompts", "hpsv2", "pickapic"]


class DataConfig(StrictNumbers):
    """Where the image-caption pairs come from and how images become model inputs."""

    model_config = ConfigDict(extra="forbid")

    source: SourceKind = Field(
        description="imagefolder (dir + metadata.jsonl), parquet, pickapic (Pick-a-Pic v2 parquet), "
        "hf_disk (datasets.save_to_disk) or hf (datasets.load_dataset on a local path)."
    )
    path: str = Field(description="A directory, a file, or (parquet/pickapic) a glob; relative to the CWD.")
    caption_column: str = Field(
        default="text", description="Caption column / metadata key ('caption' by default for pickapic)."
    )
    image_column: str = Field(default="image", description="Image column (bytes, {bytes,path} or path).")
    label_column: str | None = Field(
        default=None,
        description="imagefolder: the metadata.jsonl key of each image's desirability label (true/1 "
        "desirable, false/0 undesirable) for kto on single labelled images (training.kto.unpaired).",
    )
    resolution: int = Field(description="Square training resolution in pixels.")
    center_crop: bool = Field(default=True, description="Centre crop; false means a seeded random crop.")
    random_flip: bool = Field(default=False, description="Horizontal flip with probability 1/2.")
    caption_dropout: float = Field(
        default=0.0, description="Probability of replacing a caption by '' (classifier-free guidance)."
    )
    skip_bad_examples: bool = Field(
        default=False, description="Skip and count unusable examples instead of stopping the run."
    )
    max_examples: int | None = Field(default=None, description="Use at most this many usable examples.")
    allow_external_paths: bool = Field(
        default=False,
        description="Read images whose path (a symlink, an absolute path cell) resolves outside the dataset root.",
    )
    split: str = Field(default="train", description="Split for hf/hf_disk (and imagefolder sub-directory).")
    min_image_size: int | None = Field(
        default=None,
        description="Shorter image side below which an image is unusable (default resolution/4).",
    )
    seed: int = Field(
        default=0,
        description="Seed for random crops (flips, caption dropout and every training draw come from the run's seed; see spin_diffusion/seeds.py).",
    )

    @field_validator("resolution")
    @classmethod
    def _resolution_ok(cls, v: int) -> int:
        if v < 8 or v % 8:
            raise ValueError(f"resolution must be a positive multiple of 8 (>= 8), got {v}")
        return v

    @field_validator("caption_dropout")
    @classmethod
    def _dropout_ok(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {v}")
        return v

    @field_validator("max_examples")
    @classmethod
    def _max_ok(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"max_examples must be >= 1 (or omitted), got {v}")
        return v

    @field_validator("min_image_size")
    @classmethod
    def _min_size_ok(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"min_image_size must be >= 1 (or omitted), got {v}")
        return v

    @field_validator("path", "caption_column", "image_column", "split")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _labels_from_imagefolder(self) -> DataConfig:
        if self.label_column is not None and self.source != "imagefolder":
            raise ValueError(
                "label_column is read from an imagefolder's metadata.jsonl; source pickapic gives per-image "
                "labels by itself (winner desirable, loser undesirable)"
            )
        return self

    @model_validator(mode="after")
    def _pickapic_caption_default(self) -> DataConfig:
        # Pick-a-Pic names its caption column 'caption'; keep an explicit choice.
        if self.source == "pickapic" and "caption_column" not in self.model_fields_set:
            self.caption_column = "caption"
        return self

    @property
    def effective_min_image_size(self) -> int:
        """Shorter side an image needs: upscaling more than 4x is treated as unusable."""
        return self.min_image_size if self.min_image_size is not None else max(1, self.resolution // 4)


class PromptSetConfig(StrictNumbers):
    """An evaluation prompt set read from a local file (or directory for HPSv2)."""

    model_config = ConfigDict(extra="forbid")

    kind: PromptKind = Field(
        description="text, partiprompts (TSV), hpsv2 (JSON lists) or pickapic (parquet)."
    )
    path: str = Field(description="File, directory (hpsv2: one JSON per style) or glob (pickapic).")
    limit: int | None = Field(default=None, description="Keep only the first N prompts.")
    column: str | None = Field(
        default=None, description="Prompt column: 'Prompt' (partiprompts) or 'caption' (pickapic) by default."
    )
    categories: list[str] | None = Field(default=None, description="PartiPrompts categories to keep.")
    styles: list[str] | None = Field(
        default=None, description="HPSv2 styles (file stems, e.g. anime, photo) to keep when path is a dir."
    )
    deduplicate: bool = Field(default=False, description="Drop repeated prompts, keeping the first.")

    @field_validator("limit")
    @classmethod
    def _limit_ok(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"limit must be >= 1 (or omitted), got {v}")
        return v

    @model_validator(mode="after")
    def _filters_fit_kind(self) -> PromptSetConfig:
        if self.categories is not None and self.kind != "partiprompts":
            raise ValueError("categories only applies to kind 'partiprompts'")
        if self.styles is not None and self.kind != "hpsv2":
            raise ValueError("styles only applies to kind 'hpsv2'")
        if self.column is not None and self.kind not in ("partiprompts", "pickapic"):
            raise ValueError("column only applies to kinds 'partiprompts' and 'pickapic'")
        return self
