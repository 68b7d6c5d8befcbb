"""Where images may come from: link loops, paths outside the dataset root, EXIF orientation, and a
run directory inside its own data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from spin_diffusion.cli.main import main
from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.files import source_files, source_fingerprint
from spin_diffusion.data.problems import PATH_ESCAPE
from spin_diffusion.data.sources import scan_source
from spin_diffusion.data.testing import write_parquet
from tiny_runs import colour_squares, tiny_spin_config

TRAINING = {"max_steps": 1, "batch_size": 2, "learning_rate": 1e-3, "trackers": [], "validation_prompts": 0}


def _cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run(
        [sys.executable, "-m", "spin_diffusion.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )  # fmt: skip


def _imagefolder_cfg(path: Path, **extra) -> DataConfig:
    return DataConfig(source="imagefolder", path=str(path), resolution=16, **extra)


def test_train_ends_on_a_data_folder_with_link_loops_and_a_link_to_root(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    data = colour_squares(tmp_path / "d", ["red", "blue"])
    os.symlink(".", data / "loop")
    os.symlink("..", data / "up")
    os.symlink("/", data / "root")
    (data / "sub").mkdir()
    os.symlink("..", data / "sub" / "back")
    config = tiny_spin_config(
        tmp_path, tiny_pipeline_dir, data, training=TRAINING, iterations=[{"beta": 2000}]
    )
    result = _cli("train", str(config), cwd=tmp_path, timeout=240)  # the old walk looped or hung here
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "runs" / "run" / "iter-1" / "iteration.json").is_file()


def test_the_fingerprint_walk_visits_each_directory_once_and_stays_inside(tmp_path: Path) -> None:
    data = colour_squares(tmp_path / "d", ["red"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x")
    os.symlink(".", data / "a")
    os.symlink(".", data / "b")
    os.symlink(outside, data / "ext")
    os.symlink("missing-target", data / "dangling.png")
    names = sorted(p.name for p in source_files(_imagefolder_cfg(data)))
    assert names == ["0.png", "dangling.png", "metadata.jsonl"]
    assert source_fingerprint(_imagefolder_cfg(data))  # a dangling link is an entry, not a crash
    allowed = sorted(p.name for p in source_files(_imagefolder_cfg(data, allow_external_paths=True)))
    assert allowed == ["0.png", "big.bin", "dangling.png", "metadata.jsonl"]


def test_a_symlink_out_of_the_dataset_is_refused_unless_allowed(tmp_path: Path) -> None:
    data = colour_squares(tmp_path / "d", ["red", "blue"])
    outside = tmp_path / "store.png"
    Image.new("RGB", (16, 16), (0, 200, 0)).save(outside)
    (data / "1.png").unlink()
    os.symlink(outside, data / "1.png")
    stats = scan_source(_imagefolder_cfg(data))
    assert stats.usable == 1 and stats.problems == {PATH_ESCAPE: 1}
    assert scan_source(_imagefolder_cfg(data, allow_external_paths=True)).usable == 2


def test_an_absolute_path_cell_is_refused_without_saying_whether_the_file_exists(tmp_path: Path) -> None:
    existing = tmp_path / "secret.txt"
    existing.write_text("not an image")
    cells = [{"bytes": None, "path": str(existing)}, {"bytes": None, "path": str(tmp_path / "no-such-file")}]
    parquet = write_parquet(tmp_path / "data" / "rows.parquet", {"image": cells, "text": ["a", "b"]})
    cfg = DataConfig(source="parquet", path=str(parquet), resolution=16)
    stats = scan_source(cfg)
    assert stats.problems == {PATH_ESCAPE: 2}
    shown = stats.shown[PATH_ESCAPE]
    messages = [m.replace(str(existing), "P").replace(str(tmp_path / "no-such-file"), "P") for m in shown]
    messages = [m.replace("row 0", "row N").replace("row 1", "row N") for m in messages]
    assert len(set(messages)) == 1 and "allow_external_paths" in messages[0], shown


def _exif_jpeg(path: Path, orientation: int) -> None:
    img = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high; left half red
    img[:, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(path, format="JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied_when_decoding(tmp_path: Path) -> None:
    from spin_diffusion.data.images import load_image

    _exif_jpeg(tmp_path / "r.jpg", 6)  # 6: rotate 90 degrees clockwise to view
    img = load_image("r.jpg", tmp_path, "r.jpg", 1)
    assert img.size == (16, 32)  # upright: 16 wide, 32 high
    pixels = np.asarray(img).astype(int)
    assert pixels[2, 8, 0] > 200 and pixels[-2, 8, 0] < 60  # the red half is now on top
    _exif_jpeg(tmp_path / "plain.jpg", 1)
    assert load_image("plain.jpg", tmp_path, "plain.jpg", 1).size == (32, 16)


def test_a_cache_of_the_previous_format_is_rebuilt_not_reused(
    tmp_path: Path, tiny_pipeline_dir: Path
) -> None:
    from spin_diffusion.data.latents import _key, ensure_latent_cache
    from spin_diffusion.model.loading import load_pipeline

    vae = load_pipeline(tiny_pipeline_dir).vae
    cfg = _imagefolder_cfg(colour_squares(tmp_path / "d", ["red", "blue"]))
    cache_dir = tmp_path / "cache"
    assert ensure_latent_cache(cfg, vae, cache_dir, show_progress=False).status == "built"
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["settings"]["format"] = 2  # as the previous version wrote it: its own settings, its own key
    del manifest["settings"]["allow_external_paths"]
    manifest["key"] = _key(manifest["settings"])
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    cache = ensure_latent_cache(cfg, vae, cache_dir, show_progress=False)
    assert cache.status == "rebuilt" and len(cache) == 2


def test_an_output_dir_inside_the_data_is_refused_before_anything_is_written(
    tmp_path: Path, tiny_pipeline_dir: Path, capsys
) -> None:
    data = colour_squares(tmp_path / "d", ["red", "blue"])
    config = tiny_spin_config(
        tmp_path,
        tiny_pipeline_dir,
        data,
        training=TRAINING,
        iterations=[{"beta": 2000}],
        output_dir=str(data / "runs"),
    )
    assert main(["train", str(config)]) == 2
    assert "inside data.path" in capsys.readouterr().err
    assert not (data / "runs").exists()
