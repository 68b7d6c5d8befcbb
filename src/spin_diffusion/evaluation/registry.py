"""Build a scorer from its config by kind; each implementation is imported only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spin_diffusion.evaluation.scorer_base import Scorer, resolve_device

if TYPE_CHECKING:
    from spin_diffusion.config.evaluation import ScorerConfig

SCORER_KINDS = ("pickscore", "hpsv2", "imagereward", "aesthetic", "toy_fidelity", "toy_style")


def build_scorer(cfg: ScorerConfig, device: str = "auto") -> Scorer:
    """Load the scorer ``cfg`` describes from its local files; its ``name`` is ``cfg.metric``."""
    dev = resolve_device(device)
    common = {"device": dev, "batch_size": cfg.batch_size, "name": cfg.metric}
    if cfg.kind == "pickscore":
        from spin_diffusion.evaluation.pickscore import PickScoreScorer

        return PickScoreScorer(cfg.path, cfg.processor_path, **common)
    if cfg.kind == "hpsv2":
        from spin_diffusion.evaluation.hps import HPSv2Scorer

        return HPSv2Scorer(cfg.path, cfg.tokenizer_path, **common)
    if cfg.kind == "imagereward":
        from spin_diffusion.evaluation.imagereward import ImageRewardScorer

        return ImageRewardScorer(cfg.path, cfg.tokenizer_path, **common)
    if cfg.kind == "aesthetic":
        from spin_diffusion.evaluation.aesthetic import AestheticScorer

        return AestheticScorer(cfg.path, cfg.clip_path, **common)
    if cfg.kind in ("toy_fidelity", "toy_style"):
        from spin_diffusion.toy.oracle import OracleScorer

        scorer = OracleScorer(metric=cfg.kind.removeprefix("toy_"))
        scorer.name = cfg.metric
        return scorer
    raise ValueError(f"unknown scorer kind {cfg.kind!r}")
