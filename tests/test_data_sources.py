"""Sources: every format yields the right examples; every bad input stops (or is skipped) with its location."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from spin_diffusion.config.data import DataConfig
from spin_diffusion.data.problems import (
    BAD_LABEL,
    BAD_METADATA,
    EMPTY_CAPTION,
    MISSING_CAPTION,
    MISSING_IMAGE,
    PATH_ESCAPE,
    TOO_SMALL,
    UNREADABLE_IMAGE,
    UNSUPPORTED_MODE,
)
from spin_diffusion.data.sources import open_source, scan_source
from spin_diffusion.data.tables import pickapic_winner
from spin_diffusion.data.testing import (
    image_bytes,
    make_image,
    make_imagefolder,
    make_parquet,
    make_pickapic,
    write_parquet,
)
from spin_diffusion.errors import ConfigError, DataError


def cfg(**kw) -> DataConfig:
    kw.setdefault("resolution", 32)
    return DataConfig(**kw)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def jpeg_decoded(seed: int) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(image_bytes(make_image(seed), "JPEG"))))


# ------------------------------------------------------------------ formats


def test_imagefolder_yields_all_examples_in_order(tmp_path):
    root = make_imagefolder(tmp_path / "ds", ["a red square", "a blue circle", "two green stars"])
    src = open_source(cfg(source="imagefolder", path=str(root)))
    examples = list(src)
    assert [e.id for e in examples] == ["img_000.png", "img_001.png", "img_002.png"]
    assert [e.caption for e in examples] == ["a red square", "a blue circle", "two green stars"]
    assert np.array_equal(pixels(examples[1].image), pixels(make_image(1)))
    assert examples[0].image.mode == "RGB"
    assert (src.stats.rows_read, src.stats.usable, src.stats.bad) == (3, 3, 0)


def test_imagefolder_custom_caption_column_and_split_subdir(tmp_path):
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    make_image(0).save(root / "train" / "x.png")
    (root / "train" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "x.png", "prompt": "hello"}) + "\n"
    )
    (ex,) = list(open_source(cfg(source="imagefolder", path=str(root), caption_column="prompt")))
    assert (ex.id, ex.caption) == ("x.png", "hello")


def test_parquet_bytes_and_relative_paths_across_files(tmp_path):
    make_parquet(tmp_path / "d" / "part-0.parquet", ["one", "two"], seed=0)
    (tmp_path / "d" / "imgs").mkdir()
    make_image(7).save(tmp_path / "d" / "imgs" / "seven.png")
    write_parquet(tmp_path / "d" / "part-1.parquet", {"image": ["imgs/seven.png"], "text": ["three"]})
    examples = list(open_source(cfg(source="parquet", path=str(tmp_path / "d" / "*.parquet"))))
    assert [e.id for e in examples] == ["part-0.parquet:0", "part-0.parquet:1", "part-1.parquet:0"]
    assert [e.caption for e in examples] == ["one", "two", "three"]
    assert np.array_equal(pixels(examples[1].image), pixels(make_image(1)))
    assert np.array_equal(pixels(examples[2].image), pixels(make_image(7)))
    # A directory is searched for *.parquet as well.
    assert len(list(open_source(cfg(source="parquet", path=str(tmp_path / "d"))))) == 3


def test_parquet_with_hf_image_struct_column(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"image": [make_image(3), make_image(4)], "text": ["c", "d"]})
    ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    examples = list(open_source(cfg(source="parquet", path=str(tmp_path / "hf.parquet"))))
    assert [e.caption for e in examples] == ["c", "d"]
    assert np.array_equal(pixels(examples[1].image), pixels(make_image(4)))


def test_max_examples_stops_early(tmp_path):
    make_parquet(tmp_path / "p.parquet", [f"cap {i}" for i in range(6)])
    src = open_source(cfg(source="parquet", path=str(tmp_path / "p.parquet"), max_examples=4))
    assert [e.caption for e in src] == ["cap 0", "cap 1", "cap 2", "cap 3"]
    assert src.stats.usable == 4


def test_hf_disk_and_hf_local_dataset(tmp_path):
    import datasets

    imgs = [make_image(i) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": imgs, "text": ["x", "y", "z"]}).cast_column(
        "image", datasets.Image()
    )
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "disk"))
    got = list(open_source(cfg(source="hf_disk", path=str(tmp_path / "disk"))))
    assert [(e.id, e.caption) for e in got] == [("train:0", "x"), ("train:1", "y"), ("train:2", "z")]
    assert np.array_equal(pixels(got[2].image), pixels(imgs[2]))
    assert [
        e.caption for e in open_source(cfg(source="hf_disk", path=str(tmp_path / "disk"), split="test"))
    ] == ["x"]
    with pytest.raises(DataError, match="no split 'valid'.*available: train, test"):
        list(open_source(cfg(source="hf_disk", path=str(tmp_path / "disk"), split="valid")))

    # datasets.load_dataset on a local directory (here an imagefolder layout).
    root = make_imagefolder(tmp_path / "folder", ["p", "q"])
    got = list(open_source(cfg(source="hf", path=str(root))))
    assert [e.caption for e in got] == ["p", "q"]
    assert np.array_equal(pixels(got[0].image), pixels(make_image(0)))


def test_hf_refuses_non_local_path(tmp_path):
    with pytest.raises(DataError, match="local paths only"):
        list(open_source(cfg(source="hf", path="some-user/some-dataset")))


# ------------------------------------------------------------------ Pick-a-Pic


LABELS = [(1, 0), (0, 1), (0.5, 0.5), (1, 0), (0.5, 0.5), (0, 1)]


def test_pickapic_single_images_take_the_preferred_one_and_drop_ties(tmp_path):
    path = make_pickapic(tmp_path / "pap.parquet", LABELS)
    src = open_source(cfg(source="pickapic", path=str(path)))
    examples = list(src)
    assert [e.id for e in examples] == ["pap.parquet:0", "pap.parquet:1", "pap.parquet:3", "pap.parquet:5"]
    assert [e.caption for e in examples] == ["prompt 0", "prompt 1", "prompt 3", "prompt 5"]
    # Row 0 prefers jpg_0 (image 0), row 1 prefers jpg_1 (image 3), row 5 prefers jpg_1 (image 11).
    for ex, seed in zip(examples, [0, 3, 6, 11], strict=True):
        assert np.array_equal(pixels(ex.image), jpeg_decoded(seed))
    assert (src.stats.rows_read, src.stats.ties_dropped, src.stats.usable) == (6, 2, 4)


def test_pickapic_pairs_follow_labels_including_swapped(tmp_path):
    path = make_pickapic(tmp_path / "pap.parquet", LABELS)
    src = open_source(cfg(source="pickapic", path=str(path)), pairs=True)
    pairs = list(src)
    assert len(pairs) == 4 and src.stats.ties_dropped == 2
    expected = {
        "pap.parquet:0": (0, 1),
        "pap.parquet:1": (3, 2),
        "pap.parquet:3": (6, 7),
        "pap.parquet:5": (11, 10),
    }
    for p in pairs:
        win, lose = expected[p.id]
        assert np.array_equal(pixels(p.image_win), jpeg_decoded(win))
        assert np.array_equal(pixels(p.image_lose), jpeg_decoded(lose))


@pytest.mark.parametrize(
    ("labels", "winner"),
    [((1, 0), 0), ((0, 1), 1), ((0.5, 0.5), None), ((1.0, 0.0), 0)],
)
def test_pickapic_winner_valid(labels, winner):
    assert pickapic_winner(*labels, "f row 0") == winner


@pytest.mark.parametrize(
    "labels", [(0.7, 0.3), (1, 1), (0, 0), (0.5, 0.0), (None, 1), ("x", 0), (float("nan"), 1)]
)
def test_pickapic_winner_invalid(labels):
    from spin_diffusion.data.problems import BadExample

    with pytest.raises(BadExample) as info:
        pickapic_winner(*labels, "f row 3")
    assert info.value.kind == BAD_LABEL and "f row 3" in str(info.value)


def test_pickapic_bad_label_stops_with_row_or_is_skipped(tmp_path):
    path = make_pickapic(tmp_path / "pap.parquet", [(1, 0), (0.7, 0.3), (0, 1)])
    with pytest.raises(
        DataError, match=r"pap\.parquet row 1: labels \(0\.7, 0\.3\) must each be 0, 0\.5 or 1"
    ):
        list(open_source(cfg(source="pickapic", path=str(path))))
    src = open_source(cfg(source="pickapic", path=str(path), skip_bad_examples=True))
    assert len(list(src)) == 2 and src.stats.problems == {BAD_LABEL: 1}


def test_pairs_need_pickapic(tmp_path):
    with pytest.raises(ConfigError, match="pairs"):
        open_source(cfg(source="parquet", path=str(tmp_path)), pairs=True)


# ------------------------------------------------------------------ bad inputs


def _folder_with(tmp_path, rows, files):
    root = tmp_path / "ds"
    root.mkdir()
    for name, content in files.items():
        p = root / name
        if isinstance(content, Image.Image):
            content.save(p)
        else:
            p.write_bytes(content)
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


BAD_CASES = [
    # (rows, files, kind, message regex)
    (
        [{"file_name": "bad.png", "text": "x"}],
        {"bad.png": b"not an image"},
        UNREADABLE_IMAGE,
        r"bad\.png.*not a readable image",
    ),
    ([{"file_name": "gone.png", "text": "x"}], {}, MISSING_IMAGE, r"gone\.png not found"),
    (
        [{"file_name": "a.png", "text": None}],
        {"a.png": make_image(0)},
        MISSING_CAPTION,
        r"caption 'text' is missing",
    ),
    (
        [{"file_name": "a.png", "text": "   "}],
        {"a.png": make_image(0)},
        EMPTY_CAPTION,
        r"caption 'text' is empty",
    ),
    ([{"file_name": "a.png", "text": 5}], {"a.png": make_image(0)}, MISSING_CAPTION, r"is a int, not text"),
    (
        [{"file_name": "t.png", "text": "x"}],
        {"t.png": make_image(0, (6, 40))},
        TOO_SMALL,
        r"6x40, shorter side below the minimum 8",
    ),
    (
        [{"file_name": "../outside.png", "text": "x"}],
        {},
        PATH_ESCAPE,
        r"'\.\./outside\.png' escapes the dataset root",
    ),
    ([{"file_name": "/etc/passwd", "text": "x"}], {}, PATH_ESCAPE, r"'/etc/passwd' escapes"),
    ([{"file_name": "a/../../x.png", "text": "x"}], {}, PATH_ESCAPE, r"escapes"),
    ([{"text": "x"}], {}, BAD_METADATA, r"no 'file_name'"),
]


@pytest.mark.parametrize(
    ("rows", "files", "kind", "message"), BAD_CASES, ids=[c[2] + str(i) for i, c in enumerate(BAD_CASES)]
)
def test_bad_example_stops_with_location_or_is_skipped(tmp_path, rows, files, kind, message):
    good = {"file_name": "good.png", "text": "fine"}
    root = _folder_with(tmp_path, [good, *rows], {"good.png": make_image(9), **files})
    with pytest.raises(DataError) as info:
        list(open_source(cfg(source="imagefolder", path=str(root))))
    msg = str(info.value)
    assert "\n" not in msg
    assert "metadata.jsonl:2" in msg  # file and line of the offending row
    assert "skip_bad_examples" in msg
    import re

    assert re.search(message, msg), msg
    src = open_source(cfg(source="imagefolder", path=str(root), skip_bad_examples=True))
    assert [e.id for e in src] == ["good.png"]
    assert src.stats.problems == {kind: 1} and src.stats.usable == 1 and src.stats.rows_read == 2


def test_truncated_image_is_unreadable(tmp_path):
    data = image_bytes(make_image(0, (64, 64)))
    write_parquet(tmp_path / "p.parquet", {"image": [data[: len(data) // 2]], "text": ["x"]})
    with pytest.raises(DataError, match=r"p\.parquet row 0: image bytes is (corrupt|not a readable image)"):
        list(open_source(cfg(source="parquet", path=str(tmp_path / "p.parquet"))))


def test_empty_and_null_image_cells(tmp_path):
    write_parquet(tmp_path / "p.parquet", {"image": [b"", None], "text": ["x", "y"]})
    stats = scan_source(cfg(source="parquet", path=str(tmp_path / "p.parquet")))
    assert stats.problems == {MISSING_IMAGE: 2}
    assert "row 0: image bytes are empty" in stats.shown[MISSING_IMAGE][0]
    assert "row 1: image is empty (null)" in stats.shown[MISSING_IMAGE][1]


def test_non_rgb_modes_convert_or_are_refused(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red -> white
    grey = make_image(1, mode="L")
    pal = make_image(2, mode="P")
    deep = Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16))  # 16-bit grey: mode I;16
    assert deep.mode.startswith("I")
    write_parquet(
        tmp_path / "p.parquet",
        {"image": [image_bytes(x) for x in (rgba, grey, pal, deep)], "text": ["a", "b", "c", "d"]},
    )
    src = open_source(cfg(source="parquet", path=str(tmp_path / "p.parquet"), skip_bad_examples=True))
    got = list(src)
    assert [e.caption for e in got] == ["a", "b", "c"]
    assert all(e.image.mode == "RGB" for e in got)
    assert pixels(got[0].image).min() == 255  # composited on white, not black
    assert np.array_equal(pixels(got[1].image)[..., 0], np.asarray(grey))
    assert src.stats.problems == {UNSUPPORTED_MODE: 1}
    assert "row 3: image mode I" in src.stats.shown[UNSUPPORTED_MODE][0]


def test_missing_column_is_fatal_even_when_skipping(tmp_path):
    make_parquet(tmp_path / "p.parquet", ["x"])
    with pytest.raises(
        DataError,
        match=r"p\.parquet: column 'caption' \(data\.caption_column\) not found; available columns: image, text",
    ):
        list(
            open_source(
                cfg(
                    source="parquet",
                    path=str(tmp_path / "p.parquet"),
                    caption_column="caption",
                    skip_bad_examples=True,
                )
            )
        )
    root = make_imagefolder(tmp_path / "f", ["x"])
    with pytest.raises(DataError, match=r"metadata\.jsonl \(first row\): column 'prompt'"):
        list(open_source(cfg(source="imagefolder", path=str(root), caption_column="prompt")))
    write_parquet(tmp_path / "pap.parquet", {"caption": ["x"], "jpg_0": [b""], "label_0": [1.0]})
    with pytest.raises(DataError, match=r"column 'jpg_1' \(data\.source pickapic\) not found"):
        list(open_source(cfg(source="pickapic", path=str(tmp_path / "pap.parquet"))))


def test_missing_paths_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        list(open_source(cfg(source="parquet", path=str(tmp_path / "nope.parquet"))))
    with pytest.raises(DataError, match="no parquet files found"):
        list(open_source(cfg(source="parquet", path=str(tmp_path / "*.parquet"))))
    (tmp_path / "fake.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"fake\.parquet: not a readable parquet file"):
        list(open_source(cfg(source="parquet", path=str(tmp_path / "fake.parquet"))))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata.jsonl"):
        list(open_source(cfg(source="imagefolder", path=str(tmp_path / "empty"))))
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        list(open_source(cfg(source="hf_disk", path=str(tmp_path / "empty"))))


def test_malformed_metadata_line_is_reported(tmp_path):
    root = make_imagefolder(tmp_path / "f", ["x", "y"])
    meta = root / "metadata.jsonl"
    meta.write_text(meta.read_text() + "{broken\n")
    stats = scan_source(cfg(source="imagefolder", path=str(root)))
    assert stats.usable == 2 and stats.problems == {BAD_METADATA: 1}
    assert "metadata.jsonl:3: not valid JSON" in stats.shown[BAD_METADATA][0]


def test_scan_collects_every_problem_and_ignores_max_examples(tmp_path):
    rows = [{"file_name": f"{i}.png", "text": "t"} for i in range(4)] + [
        {"file_name": "x.png", "text": ""}
    ] * 7
    root = _folder_with(
        tmp_path, rows, {f"{i}.png": make_image(i) for i in range(4)} | {"x.png": make_image(5)}
    )
    stats = scan_source(cfg(source="imagefolder", path=str(root), max_examples=1))
    assert (stats.rows_read, stats.usable, stats.bad) == (11, 4, 7)
    assert len(stats.shown[EMPTY_CAPTION]) == 5
    assert any("and 2 more" in line for line in stats.summary_lines())
