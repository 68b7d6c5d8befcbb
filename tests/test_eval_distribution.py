"""FID / KID through torchmetrics with an injected feature extractor, checked against numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spin_diffusion.config.evaluation import DistributionConfig
from spin_diffusion.errors import ConfigError, DataError
from spin_diffusion.evaluation import distribution as dist

pytest.importorskip("torchmetrics")


class TinyFeatures(torch.nn.Module):
    """A fixed random projection of 4x4-pooled pixels: 8 features."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(48, 8, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.float(), 4).flatten(1) @ self.w


def _numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * covmean_trace)


def _numpy_kid(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    m = a.shape[0]

    def k(x, y):
        return (x @ y.T / d + 1) ** 3

    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def _sets(n: int = 24):
    g = torch.Generator().manual_seed(1)
    real = torch.rand(n, 3, 16, 16, generator=g)
    close = (real + 0.02 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)
    far = (0.5 * torch.rand(n, 3, 16, 16, generator=g) + 0.5).clamp(0, 1)
    return real, close, far


def test_fid_and_kid_match_the_formulas():
    real, close, far = _sets()
    feat = TinyFeatures()
    out = dist.distribution_metrics(
        {"close": close, "far": far}, real, feat, kid_subset_size=24, kid_subsets=3, batch_size=7
    )
    with torch.no_grad():
        fr, fc, ff = (feat(x).double().numpy() for x in (real, close, far))
    for name, f in (("close", fc), ("far", ff)):
        assert out[name]["fid"] == pytest.approx(_numpy_fid(fr, f), rel=1e-3, abs=1e-3)
        # subset size = all samples: every subset is the full set, so KID is the full-set MMD
        assert out[name]["kid_mean"] == pytest.approx(_numpy_kid(fr, f), rel=1e-3, abs=1e-5)
        assert out[name]["n"] == 24
    assert out["far"]["fid"] > 10 * out["close"]["fid"]
    assert out["far"]["kid_mean"] > out["close"]["kid_mean"]


def test_identical_sets_have_zero_fid_and_results_are_deterministic():
    real, _, far = _sets()
    kw = {"kid_subset_size": 10, "kid_subsets": 5}
    out = dist.distribution_metrics({"same": real.clone(), "far": far}, real, TinyFeatures(), **kw)
    assert abs(out["same"]["fid"]) < 1e-3
    # KID subsets are random (seeded): unbiased around 0 for the same distribution
    assert abs(out["same"]["kid_mean"]) < 0.1 * out["far"]["kid_mean"]
    again = dist.distribution_metrics({"same": real.clone(), "far": far}, real, TinyFeatures(), **kw)
    assert again == out


def test_too_few_images_is_an_error():
    real, close, _ = _sets(4)
    with pytest.raises(DataError, match="at least 2"):
        dist.distribution_metrics({"x": close[:1]}, real, TinyFeatures())


def test_clip_feature_extractor_from_a_local_dir(tmp_path):
    from spin_diffusion.evaluation.tiny_scorers import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    cfg = DistributionConfig(reference_dir=str(tmp_path), feature="clip", feature_path=str(clip))
    feat = dist.build_feature_extractor(cfg)
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        f = feat(x)
    assert f.shape == (3, 16) and feat.num_features == 16
    real, close, _ = _sets(6)
    out = dist.distribution_metrics({"m": close}, real, feat, kid_subset_size=6, kid_subsets=2)
    assert np.isfinite(out["m"]["fid"])


def test_inception_without_torch_fidelity_says_what_to_do(tmp_path):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"x")
    cfg = DistributionConfig(reference_dir=str(tmp_path), feature="inception", feature_path=str(weights))
    feature = dist.build_feature_extractor(cfg)
    assert feature == 2048
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        real, close, _ = _sets(4)
        with pytest.raises(ConfigError, match="torch-fidelity"):
            dist.distribution_metrics({"m": close}, real, feature, feature_weights=str(weights))
    with pytest.raises(ConfigError, match="does not exist"):
        dist.build_feature_extractor(cfg.model_copy(update={"feature_path": str(tmp_path / "nope.pth")}))


def test_reference_dir_reading(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        dist.read_image_dir(tmp_path / "missing")
    for i in range(3):
        Image.new("RGB", (20, 10), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    assert len(dist.read_image_dir(tmp_path)) == 3
    assert len(dist.read_image_dir(tmp_path, limit=2)) == 2
    (tmp_path / "3.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="3.png: not a readable image"):
        dist.read_image_dir(tmp_path)
    t = dist.images_to_tensor(dist.read_image_dir(tmp_path, limit=3), 8)
    assert t.shape == (3, 3, 8, 8) and t.min() >= 0 and t.max() <= 1
