"""What the training loop writes and reads back: checkpoints, snapshots, resume, and its summary.

Kept apart from the loop in :mod:`spin_diffusion.training.trainer`, which mixes these methods in:
a checkpoint is written into ``.step-N.tmp``, verified by its complete marker and only then renamed,
so a resume never meets a torn save.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spin_diffusion.errors import UserError
from spin_diffusion.infra.atomic import write_json_atomic
from spin_diffusion.infra.run_layout import SNAPSHOTS
from spin_diffusion.model.lora import has_lora
from spin_diffusion.model.saving import save_trained_unet
from spin_diffusion.training.checkpoints import (
    TRAIN_STATE,
    is_disk_full,
    list_checkpoints,
    newest_resumable,
    prune_checkpoints,
    remove_stray_temporaries,
    write_complete_marker,
)
from spin_diffusion.training.distributed import (
    adapter_only_state,
    gathered_copy,
)
from spin_diffusion.training.ema import EMA_FILE, load_ema, save_ema

if TYPE_CHECKING:
    pass


log = logging.getLogger("spin_diffusion.training.trainer")

SUMMARY = "train_summary.json"


@dataclass
class TrainResult:
    steps: int
    resumed_from: int | None
    final_metrics: dict[str, float]
    world_size: int
    rank_fingerprints: list[str]
    global_batch: int = 0  # examples per optimizer step: batch_size x processes x accumulation
    ended: dict[str, Any] | None = None  # why the iteration ended: max_steps, or the stop_when verdict


class CheckpointingMixin:
    """Save, snapshot and resume for :class:`~spin_diffusion.training.trainer.Trainer` (its attributes:
    ``acc``, ``unet``, ``cfg``, ``ckpt_root``, ``out_dir``, ``step``, ``micro_step``, ``ema``,
    ``method_state``, ``stop_rule``, ``sharded``, ``previous_model``)."""

    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimizer, RNG) plus our step counters, written atomically.

        Everything goes into ``.step-N.tmp``; the complete marker is written last
        and only then is the directory renamed, so a resume never meets a torn save.
        """
        final = self.ckpt_root / f"step-{self.step}"
        tmp = self.ckpt_root / f".step-{self.step}.tmp"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.acc.wait_for_everyone()
        try:
            self._write_checkpoint(tmp)
        except Exception as exc:  # any failure: no partial save may stay behind
            full = is_disk_full(exc, self.ckpt_root)
            shutil.rmtree(tmp, ignore_errors=True)
            if full:
                raise UserError(self._disk_full_message(final)) from None
            raise
        if self.acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            prune_checkpoints(self.ckpt_root, self.cfg.checkpoints_total_limit)
        self.acc.wait_for_everyone()
        return final

    def _write_checkpoint(self, tmp: Path) -> None:
        with adapter_only_state(self.acc, enabled=self._adapter_only()):
            self.acc.save_state(str(tmp))
        if self.ema is not None and self.acc.is_main_process:
            save_ema(self.ema, self._trainable_names(), tmp / EMA_FILE)
        if self.method_state is not None and self.acc.is_main_process:
            self.method_state.save(tmp, self._trainable_names())
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {"step": self.step, "micro_step": self.micro_step, "world_size": self.acc.num_processes}
            if self.stop_rule is not None:  # the window of numbers the stopping decision reads
                state["stop_window"] = self.stop_rule.state()
            (tmp / TRAIN_STATE).write_text(json.dumps(state))
            write_complete_marker(tmp)

    def _adapter_only(self) -> bool:
        """LoRA: checkpoints hold the adapter, not the frozen base (a few MB instead of the UNet)."""

        return not self.sharded and has_lora(self.acc.unwrap_model(self.unet))

    def _trainable_names(self) -> list[str]:
        return [n for n, p in self.acc.unwrap_model(self.unet).named_parameters() if p.requires_grad]

    def _disk_full_message(self, final: Path) -> str:
        free = shutil.disk_usage(self.ckpt_root).free if self.ckpt_root.exists() else 0
        last = list_checkpoints(self.ckpt_root)
        kept = f" from {last[-1][1]}" if last else ""
        return (
            f"disk full: could not save checkpoint {final} ({free / 2**20:.0f} MiB free on that disk); "
            f"the partial save was removed; free some space and run the same command to resume{kept}"
        )

    def save_snapshot(self) -> Path:
        """The model at this step in the layout of ``iter-k/model`` (loadable by diffusers and evaluate)."""

        path = self.out_dir / SNAPSHOTS / f"step-{self.step}"
        trained = self.trained_unet()  # every process: gathering a sharded model is collective
        if self.acc.is_main_process:
            save_trained_unet(trained, path, previous=self.previous_model)
        self.acc.wait_for_everyone()
        return path

    def trained_unet(self) -> Any:
        """The trained weights as one plain, complete module on every process (call on all of them).

        Data parallel: the local replica itself. FSDP/DeepSpeed: the local module
        holds a shard, so the full state dict is gathered (``get_state_dict``) and
        loaded into a fresh module built from the config; nothing is deep-copied.
        """
        if not self.sharded:
            return self.acc.unwrap_model(self.unet)
        return gathered_copy(self.acc, self.unet)

    def maybe_resume(self) -> int | None:
        """Load the newest checkpoint that verifies; newer damaged ones are moved aside, saying why."""
        if self.acc.is_main_process:
            remove_stray_temporaries(self.ckpt_root)
        self.acc.wait_for_everyone()
        found, skipped = newest_resumable(self.ckpt_root)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            for path, why in skipped:
                aside = path.with_name(f".{path.name}.damaged")
                shutil.rmtree(aside, ignore_errors=True)
                path.rename(aside)
                older = f"resuming from {found[1].name}" if found else "no older checkpoint: starting over"
                log.warning("skipping checkpoint %s: %s; moved to %s; %s", path, why, aside.name, older)
        self.acc.wait_for_everyone()
        if found is None:
            return None
        step, path = found
        state = json.loads((path / TRAIN_STATE).read_text())
        if state.get("world_size") != self.acc.num_processes:
            raise UserError(
                f"{path} was written by {state.get('world_size')} processes, this run has {self.acc.num_processes}; "
                "resume with the same number of processes"
            )
        with adapter_only_state(self.acc, enabled=self._adapter_only()):
            self.acc.load_state(str(path))
        if self.ema is not None:
            load_ema(self.ema, self._trainable_names(), path / EMA_FILE)
        if self.method_state is not None:
            self.method_state.load(path, self._trainable_names())
        self.step, self.micro_step = state["step"], state["micro_step"]
        self.acc.step = self.micro_step  # the accumulation window continues where it stopped
        if self.stop_rule is not None:
            self.stop_rule.load(state.get("stop_window"))
        return step


def write_summary(out_dir: Path, result: TrainResult, extra: dict[str, Any] | None = None) -> None:
    data = {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_metrics": result.final_metrics,
        "world_size": result.world_size,
        "global_batch": result.global_batch,
        "rank_fingerprints": result.rank_fingerprints,
        "ended": result.ended,
        **(extra or {}),
    }
    write_json_atomic(out_dir / SUMMARY, data)
