"""Work one study stage has already done that another would repeat bit for bit.

"Iteration 1 continued" (the Figure 5 arms) samples theta_0 with the same captions, seed and
sampler settings as the self-play run's iteration 1: the same samples. Linking that finished
sample directory into the other run before it starts lets the opponent sampler find a complete
directory with its own identity and reuse it (it checks the identity and every shard, and
refuses a directory made differently), so the study's numbers do not change.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from spin_diffusion.config.run import read_yaml, validate_config
from spin_diffusion.infra.run_layout import RunLayout
from spin_diffusion.sampling.samples import MANIFEST

if TYPE_CHECKING:
    from spin_diffusion.config.run import RunConfig


def same_first_samples(a: RunConfig, b: RunConfig) -> bool:
    """Whether iteration 1 of ``a`` and of ``b`` sample the same images: the same base (the opponent),
    data, seed and sampler settings (batch size and previews do not change a sample)."""
    ignored = {"batch_size", "num_previews"}
    return (
        a.model.pretrained == b.model.pretrained
        and a.model.revision == b.model.revision
        and a.data == b.data
        and a.seed == b.seed
        and a.sampling_for(1).model_dump(exclude=ignored) == b.sampling_for(1).model_dump(exclude=ignored)
    )


def share_opponent_samples(source_run: Path, target: RunConfig) -> bool:
    """Hard-link ``source_run``'s finished ``iter-1/samples`` into ``target``'s run (copy where links fail).

    Only when the source's iteration 1 is finished, its recorded config samples the same images as
    ``target`` and the target has no samples yet; returns whether it linked. The sampler writes
    shards by atomic rename, so a target that resamples a shard never changes the source's file.
    """
    source = RunLayout(Path(source_run))
    src, dst = source.iteration(1).samples, RunLayout(target.run_dir).iteration(1).samples
    if not source.iteration(1).done.is_file() or not (src / MANIFEST).is_file() or dst.exists():
        return False
    saved = source.config
    if not same_first_samples(validate_config(read_yaml(saved), str(saved)), target):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(".samples.linking")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link_or_copy)
    tmp.rename(dst)
    return True


def link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
