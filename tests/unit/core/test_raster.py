"""PNG, JPEG and BMP input: real files written by Pillow, read with the TIFF path's checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import write_tif
from PIL import Image

from biapipe.core import imageio
from biapipe.core.config import validate_config
from biapipe.core.errors import InputError
from biapipe.data.lazy import open_lazy
from biapipe.data.samples import list_images
from biapipe.data.validate import check_dataset, probe
from biapipe.workflow import stages
from biapipe.workflow.smk import discover_dataset


def ramp(h: int = 12, w: int = 20) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def test_grey_png_reads_exactly_and_probes_without_decoding(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(ramp()).save(path)
    assert probe(path) == ((12, 20), np.dtype(np.uint8))
    image = imageio.read_image(path, 2)
    assert image.shape == (12, 20, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], ramp())


def test_rgb_png_and_16_bit_png(tmp_path):
    rgb = np.stack([ramp(), 255 - ramp(), np.full((12, 20), 7, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert probe(tmp_path / "rgb.png") == ((12, 20, 3), np.dtype(np.uint8))
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "rgb.png", 2), rgb)
    deep = (ramp().astype(np.uint16) * 250)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    shape, dtype = probe(tmp_path / "deep.png")
    assert shape == (12, 20) and dtype == np.uint16
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "deep.png", 2)[..., 0], deep)


def test_jpeg_and_bmp(tmp_path):
    smooth = np.tile(np.linspace(0, 200, 32).astype(np.uint8), (16, 1))
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(np.stack([smooth] * 3, -1)).save(tmp_path / "b.jpeg", quality=95)
    Image.fromarray(smooth).save(tmp_path / "c.bmp")
    jpg = imageio.read_image(tmp_path / "a.jpg", 2)
    assert jpg.shape == (16, 32, 1) and np.abs(jpg[..., 0].astype(int) - smooth).max() <= 4  # lossy
    assert imageio.read_image(tmp_path / "b.jpeg", 2).shape == (16, 32, 3)
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "c.bmp", 2)[..., 0], smooth)
    assert open_lazy(tmp_path / "c.bmp", 2).shape == (16, 32, 1)


def test_palette_png_is_indices_as_label_and_colours_as_image(tmp_path):
    classes = (ramp() % 3).astype(np.uint8)
    img = Image.fromarray(classes, mode="L").convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "lab.png")
    np.testing.assert_array_equal(imageio.read_label(tmp_path / "lab.png", 2), classes)
    colours = imageio.read_image(tmp_path / "lab.png", 2)
    assert colours.shape == (12, 20, 3)
    assert tuple(colours[0, 1]) == (255, 0, 0)  # class 1 is red


def test_bad_files_name_themselves(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InputError, match="broken.png: cannot read image"):
        imageio.read_image(broken, 2)
    with pytest.raises(InputError, match="broken.png: cannot read image"):
        probe(broken)
    Image.fromarray(ramp()).save(tmp_path / "flat.png")
    with pytest.raises(InputError, match="flat.png: PNG/JPEG/BMP images are 2D but the config has ndim: 3"):
        imageio.read_image(tmp_path / "flat.png", 3)


def test_other_files_are_reported_in_one_line(tmp_path, caplog):
    Image.fromarray(ramp()).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "scan.czi").write_bytes(b"x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING, logger="biapipe"):
        found = list_images(tmp_path)
    assert list(found) == ["a"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path}: skipped 2 file(s) not of a supported type")
    assert lines[0].endswith(": notes.txt, scan.czi")


def test_png_dataset_passes_the_header_checks_and_prepares(tmp_path):
    rng = np.random.default_rng(0)
    for split, names in (("train", ["a", "b"]), ("test", ["t"])):
        for name in names:
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            label = np.zeros((32, 32), np.uint8)
            label[8:20, 8:20] = 1
            for folder, arr in (("images", image), ("labels", label)):
                (tmp_path / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(tmp_path / split / folder / f"{name}.png")
    write_tif(tmp_path / "train" / "images" / "c.tif", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    write_tif(tmp_path / "train" / "labels" / "c.tif", np.zeros((32, 32), np.uint8))
    cfg = validate_config({"experiment": "p", "workflow": "semantic", "ndim": 2,
                           "data": {s: {"images": str(tmp_path / s / "images"), "labels": str(tmp_path / s / "labels")}
                                    for s in ("train", "test")},
                           "train": {"patch_size": [16, 16], "val_fraction": 0.0}})
    ds = discover_dataset(cfg)
    assert sorted(s.id for s in ds.train) == ["a", "b", "c"]
    shapes = check_dataset(ds, cfg, "image")  # the test images' headers, for the memory plan
    assert {i: (tuple(shape), str(dtype)) for i, (shape, dtype) in shapes.items()} == {"t": ((32, 32, 3), "uint8")}
    from biapipe.tasks import get_task

    task = get_task(cfg)
    sample = {s.id: s for s in ds.train}["a"]
    stages.prepare(image=sample.image, label=sample.label, image_out=str(tmp_path / "n.zarr"),
                   targets_out=str(tmp_path / "t.zarr"), task=task, axes=None, normalize=cfg["normalize"],
                   memory_gb=cfg["train"]["memory_gb"], patch_size=cfg["train"]["patch_size"])
    assert imageio.read_array(tmp_path / "n.zarr").shape == (32, 32, 3)
    assert int(imageio.read_array(tmp_path / "t.zarr").sum()) == 144
