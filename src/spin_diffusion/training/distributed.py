"""What the loop needs to know about several processes: sharded training (FSDP, DeepSpeed), LoRA
checkpoints, and statistics taken over the global batch.

Under FSDP or DeepSpeed a process's module holds only part of the weights, so
the trained model is gathered with ``get_state_dict`` rather than read from
the local module; a LoRA run's checkpoints hold only the adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

    from spin_diffusion.config.run import TrainingConfig

ADAPTER_FILE = "adapter.safetensors"


def is_sharded(acc: Accelerator) -> bool:
    """FSDP or DeepSpeed: the prepared model is not a full replica on each process."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def sharding_ignored(acc: Accelerator) -> str | None:
    """Which of FSDP/DeepSpeed the launch asked for but accelerate did not set up, if any.

    accelerate 1.15 selects FSDP only for GPU-like multi-device runs and
    DeepSpeed only off CPU; on a CPU-only machine ``accelerate launch --use_fsdp``
    runs plain data parallelism (with ``ACCELERATE_USE_CPU=1``), which must not
    pass for a sharded run unnoticed.
    """
    import os

    asked = [
        name
        for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
        if os.environ.get(var, "false").lower() == "true"
    ]
    return asked[0] if asked and not is_sharded(acc) else None


def fill_deepspeed_config(acc: Accelerator, cfg: TrainingConfig) -> None:
    """Give DeepSpeed the values the loop decides (``auto`` entries only): the loop has no dataloader.

    Per-process batch and gradient clipping come from the training config; a
    ZeRO-3 model is gathered in 16 bit when saved (else ``get_state_dict`` cannot).
    """
    from accelerate.utils import DistributedType

    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    conf = acc.state.deepspeed_plugin.deepspeed_config
    if conf.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        conf["train_micro_batch_size_per_gpu"] = cfg.batch_size
    if conf.get("gradient_clipping", "auto") == "auto":
        conf["gradient_clipping"] = cfg.max_grad_norm or 0.0
    zero = conf.setdefault("zero_optimization", {})
    if zero.get("stage3_gather_16bit_weights_on_model_save", "auto") == "auto":
        zero["stage3_gather_16bit_weights_on_model_save"] = True


def gathered_copy(acc: Accelerator, model: Any) -> Any:
    """A plain module with the full weights of a sharded ``model``, on every process (collective)."""
    import torch

    state = acc.get_state_dict(model)  # complete on the main process (FSDP gathers to rank 0)
    inner = acc.unwrap_model(model)
    plain = type(inner).from_config(inner.config)
    for name, peft_cfg in (getattr(inner, "peft_config", None) or {}).items():
        plain.add_adapter(peft_cfg, adapter_name=name)
    if acc.is_main_process:
        plain.load_state_dict(state)
    if acc.num_processes > 1:
        for tensor in plain.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    plain.requires_grad_(False)
    return plain.eval()


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over every process's copy (collective when distributed; sizes may differ).

    For statistics an objective takes over the whole global batch (Diffusion-KTO's
    reference point) rather than over one process's share of it. Without a
    process group this is ``values.mean()``.
    """
    import torch

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values.mean()
    detached = values.detach().to(torch.float64)
    total = torch.stack(
        [detached.sum(), torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)]
    )
    dist.all_reduce(total)
    return (total[0] / total[1]).to(values.dtype)


def _trainable_state(module: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def adapter_only_state(acc: Accelerator, enabled: bool) -> Iterator[None]:
    """Within this block ``save_state``/``load_state`` write and read only the trainable weights.

    For a LoRA model these are the adapter: the frozen base is rebuilt from the
    model the run starts from, so storing it in every checkpoint (the whole
    UNet, GBs for SD-1.5) buys nothing. The hooks take the model out of
    accelerate's own lists so it neither writes nor expects ``model.safetensors``.
    """
    if not enabled:
        yield
        return
    from safetensors.torch import load_file, save_file

    def name(i: int) -> str:
        return ADAPTER_FILE if i == 0 else ADAPTER_FILE.replace(".", f"_{i}.", 1)

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if acc.is_main_process:
            for i, model in enumerate(models):
                save_file(_trainable_state(acc.unwrap_model(model)), str(Path(output_dir) / name(i)))
        weights.clear()

    def load_hook(models: list[Any], input_dir: str) -> None:
        for i, model in enumerate(models):
            path = Path(input_dir) / name(i)
            if not path.is_file():
                raise CheckpointError(f"{input_dir} has no {name(i)}: it holds no LoRA adapter")
            module = acc.unwrap_model(model)
            expected = {n for n, p in module.named_parameters() if p.requires_grad}
            saved = load_file(str(path), device=str(next(module.parameters()).device))
            if set(saved) != expected:
                raise CheckpointError(f"{path} holds other adapter weights than this model trains")
            module.load_state_dict(saved, strict=False)
        models.clear()

    handles = [acc.register_save_state_pre_hook(save_hook), acc.register_load_state_pre_hook(load_hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
