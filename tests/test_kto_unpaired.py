"""Diffusion-KTO on single labelled images: labels, the official weighted draw, parity, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from spin_diffusion.cli.main import main


def _image(colour: tuple[int, int, int]) -> Image.Image:
    img = np.full((16, 16, 3), 255, np.uint8)
    img[4:12, 4:12] = colour
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six images, each with its own caption and a per-image label (red ones desirable)."""
    root = tmp_path_factory.mktemp("labelled")
    rows = []
    for i in range(6):
        red = i % 2 == 0
        _image((220, 30, 30) if red else (30, 30, 220)).save(root / f"{i}.png")
        caption = f"a {'red' if red else 'blue'} square number {i}"
        rows.append(json.dumps({"file_name": f"{i}.png", "text": caption, "label": red}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_labels_are_read_per_image_and_bad_ones_name_their_row(tmp_path: Path, labelled_folder: Path) -> None:
    from spin_diffusion.config.data import DataConfig
    from spin_diffusion.data.labels import image_labels
    from spin_diffusion.errors import DataError

    cfg = DataConfig(source="imagefolder", path=str(labelled_folder), resolution=16, label_column="label")
    assert image_labels(cfg) == {f"{i}.png": i % 2 == 0 for i in range(6)}
    (tmp_path / "0.png").write_bytes((labelled_folder / "0.png").read_bytes())
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "0.png", "text": "x", "label": 0.5}) + "\n"
    )
    bad = DataConfig(source="imagefolder", path=str(tmp_path), resolution=16, label_column="label")
    with pytest.raises(DataError, match=r"metadata.jsonl:1.*label 'label' is 0.5"):
        image_labels(bad)


class _Cache:
    """A stand-in latent cache: image i is a constant latent i; captions name the image."""

    pairs = False

    def __init__(self, n: int) -> None:
        self.ids = [f"{i}.png" for i in range(n)]
        self.captions = [f"image {i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def latents(self, i: int, flip: bool = False) -> torch.Tensor:
        return torch.full((4, 2, 2), float(i))

    def size_cond(self, i: int, flip: bool = False) -> None:
        return None


def test_the_official_weighted_draw_gives_desirable_images_at_the_ratio() -> None:
    """Each example slot draws desirable with probability 0.8, then an image of that class, seeded."""
    from spin_diffusion.training.batches import make_batch
    from spin_diffusion.training.labelled_data import ImageRef, LabelledImages

    labels = [i < 2 for i in range(10)]  # 2 desirable, 8 undesirable images
    data = LabelledImages(_Cache(10), [ImageRef(i) for i in range(10)], labels, False, 0.8)
    batch = make_batch(data, [(i % 10, i // 10) for i in range(2000)], seed=0, num_train_timesteps=1000)
    assert batch.labels is not None and abs(batch.labels.float().mean().item() - 0.8) < 0.03
    shown = batch.latents_a[:, 0, 0, 0].long()
    assert torch.equal(batch.labels, (shown < 2).long())  # the label is the drawn image's label
    assert all(c == f"image {int(i)}" for c, i in zip(batch.captions, shown, strict=True))  # and its caption
    assert batch.timesteps.unique().numel() > 100  # per-image t (and noise), as the official code draws
    again = make_batch(data, [(i % 10, i // 10) for i in range(2000)], seed=0, num_train_timesteps=1000)
    assert torch.equal(again.latents_a, batch.latents_a)


def test_single_image_kto_matches_the_official_lines() -> None:
    """jacklishufan/diffusion-kto train_kto_sd_v1.5.py: per image its own t and noise,
    ``lambda_y (1 - sigmoid(sgn beta (g - max(0, mean g))))``, acc = mean(sgn beta (g - kl) > 0)."""
    import copy

    from spin_diffusion.config.run import TrainingConfig
    from spin_diffusion.model.families import Conditioning
    from spin_diffusion.model.prediction import training_scheduler
    from spin_diffusion.model.tiny import build_tiny_pipeline
    from spin_diffusion.training.batches import Batch
    from spin_diffusion.training.losses import compute_loss
    from spin_diffusion.training.reference import ModuleReference

    pipe = build_tiny_pipeline(seed=0)
    sched = training_scheduler(pipe)
    ref = pipe.unet.eval().requires_grad_(False)
    unet = copy.deepcopy(ref).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    shape = (4, unet.config.in_channels, 8, 8)
    captions = ["a red square", "a blue circle", "a red circle", "a blue square"]
    batch = Batch(
        indices=[0, 1, 2, 3],
        epoch=[0] * 4,
        captions=captions,
        latents_a=torch.randn(shape, generator=g),
        latents_b=None,
        timesteps=torch.tensor([50, 300, 600, 900]),
        noise=torch.randn(shape, generator=g),
        labels=torch.tensor([1, 0, 1, 1]),
    )
    ids = pipe.tokenizer(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(ids.input_ids)[0]
    beta = 2000.0
    out = compute_loss(
        "kto",
        TrainingConfig(beta=beta),
        unet,
        sched,
        ModuleReference(ref, sched),
        batch,
        Conditioning(hidden),
    )
    out.loss.backward()
    ours = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad(set_to_none=True)

    noisy = sched.add_noise(batch.latents_a, batch.noise, batch.timesteps)
    model_losses = F.mse_loss(
        unet(noisy, batch.timesteps, hidden).sample.float(), batch.noise, reduction="none"
    )
    model_losses = model_losses.mean(dim=[1, 2, 3])
    with torch.no_grad():
        ref_loss = F.mse_loss(
            ref(noisy, batch.timesteps, hidden).sample.float(), batch.noise, reduction="none"
        )
        ref_loss = ref_loss.mean(dim=[1, 2, 3])
    g_term = -model_losses - (-ref_loss)
    kl = g_term.mean().detach().clamp(min=0)
    g_term = g_term - kl
    labels = batch.labels
    label_scale_g = (2 * labels - 1) * beta * g_term
    loss = ((1.0 * (labels == 1) + 1.0 * (labels != 1)) * (1 - torch.sigmoid(label_scale_g))).mean()
    loss.backward()
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    for a, b in zip(ours, [p.grad for p in unet.parameters()], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    assert out.metrics["implicit_acc"] == pytest.approx((label_scale_g > 0).float().mean().item())
    assert out.metrics["kl"] == pytest.approx(kl.item(), abs=1e-9)


@pytest.mark.slow
def test_kto_trains_end_to_end_from_an_unpaired_labelled_imagefolder(
    tmp_path: Path, tiny_pipeline_dir: Path, labelled_folder: Path
) -> None:
    cfg = {
        "name": "run",
        "output_dir": str(tmp_path / "runs"),
        "method": "kto",
        "model": {"pretrained": str(tiny_pipeline_dir)},
        "data": {
            "source": "imagefolder",
            "path": str(labelled_folder),
            "resolution": 16,
            "label_column": "label",
        },
        "training": {
            "max_steps": 3,
            "batch_size": 4,
            "checkpointing_steps": 1,
            "learning_rate": 1e-4,
            "trackers": [],
            "kto": {"unpaired": True},
        },
        "iterations": [{"beta": 1000}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "run"
    log = [json.loads(line) for line in (run / "iter-1" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(math.isfinite(r["loss"]) for r in log)
    assert log[0]["loss"] == pytest.approx(0.5, abs=1e-3)  # theta = reference: 1 - sigmoid(0)
    assert {"implicit_acc", "kl", "desirable_fraction"} <= set(log[0])
    assert log[-1]["loss"] != pytest.approx(0.5, abs=1e-6)  # the weights moved
    assert (run / "iter-1" / "model" / "unet").exists()

    del cfg["data"]["label_column"]  # a plain imagefolder has no labels: refused in one line
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) != 0


class _PairCache(_Cache):
    """A stand-in Pick-a-Pic cache: pair i holds winner latent i and loser latent -i - 1."""

    pairs = True

    def pair_latents(self, i: int, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((4, 2, 2), float(i)), torch.full((4, 2, 2), float(-i - 1))

    def pair_size_cond(self, i: int, flip: bool = False) -> tuple[None, None]:
        return None, None


def test_pickapic_pairs_taken_apart_are_labelled_by_preference() -> None:
    """Each pair gives two images: its winner desirable, its loser undesirable, both with its caption."""
    from spin_diffusion.config.data import DataConfig
    from spin_diffusion.training.batches import make_batch
    from spin_diffusion.training.labelled_data import labelled_images

    cfg = DataConfig(source="pickapic", path="unused.parquet", resolution=16)
    data = labelled_images(_PairCache(3), cfg, desirable_ratio=None)
    assert len(data) == 6 and data.labels == [True, False] * 3
    batch = make_batch(data, [(i, 0) for i in range(6)], seed=0, num_train_timesteps=1000)
    shown = batch.latents_a[:, 0, 0, 0]
    assert shown.tolist() == [0.0, -1.0, 1.0, -2.0, 2.0, -3.0]
    assert batch.labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert batch.captions == ["image 0", "image 0", "image 1", "image 1", "image 2", "image 2"]
