import numpy as np
import pandas as pd
import pytest

from biapipe.core import imageio
from biapipe.core.axes import canonical_image, canonical_label
from biapipe.core.errors import InputError


def test_canonical_image_2d_and_rgb():
    assert canonical_image(np.zeros((5, 6)), 2).shape == (5, 6, 1)
    assert canonical_image(np.zeros((5, 6, 3)), 2).shape == (5, 6, 3)


def test_canonical_image_rejects_3d_for_ndim2():
    with pytest.raises(InputError, match="looks 3D"):
        canonical_image(np.zeros((10, 6, 7)), 2, "a.tif")


def test_canonical_image_rejects_2d_for_ndim3():
    with pytest.raises(InputError, match="a.tif: .*2D but the config has ndim: 3"):
        canonical_image(np.zeros((6, 7)), 3, "a.tif")


def test_axes_string_reorders():
    arr = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # CZYX
    out = canonical_image(arr, 3, axes="CZYX")
    assert out.shape == (3, 4, 5, 2)
    assert out[1, 2, 3, 1] == arr[1, 1, 2, 3]


def test_axes_string_mismatch():
    with pytest.raises(InputError, match="do not fit"):
        canonical_image(np.zeros((3, 4)), 2, "x.tif", axes="ZYX")


def test_canonical_label_squeezes():
    assert canonical_label(np.zeros((1, 5, 6), np.uint16), 2).shape == (5, 6)
    with pytest.raises(InputError):
        canonical_label(np.zeros((3, 5, 6), np.uint16), 2, "l.tif")


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with imageio.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_zarr_roundtrip_and_overwrite(tmp_path):
    a = np.random.default_rng(0).random((7, 9, 2)).astype(np.float32)
    imageio.write_zarr(tmp_path / "a.zarr", a)
    imageio.write_zarr(tmp_path / "a.zarr", a * 2)
    np.testing.assert_array_equal(imageio.read_array(tmp_path / "a.zarr"), a * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]


def test_truncated_tiff_is_reported(tmp_path):
    path = tmp_path / "t.tif"
    imageio.write_tiff(path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), compress=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="t.tif: cannot read"):
        imageio.read_array(path)


def test_unsupported_dtype(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.zeros((4, 4), np.complex64))
    with pytest.raises(InputError, match="unsupported image dtype complex64"):
        imageio.read_image(path, 2)


def test_image_id():
    assert imageio.image_id("/a/b/x.ome.tif") == "x"
    assert imageio.image_id("y.zarr") == "y"
    assert imageio.image_id("z.v2.tif") == "z.v2"


def test_many_small_csvs_read_together_equal_reading_them_one_by_one(tmp_path) -> None:
    frames = [pd.DataFrame({"image": ["b"], "iou": [0.25], "n": [3]}),
              pd.DataFrame({"image": ["a, quoted"], "iou": [0.5], "n": [1]}),
              pd.DataFrame({"image": ["c"], "f1": [1.0]}),  # another header (e.g. no labels)
              pd.DataFrame({"image": ["d", "e"], "iou": [0.75, 0.0], "n": [2, 7]})]
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"{i}.csv")
        frame.to_csv(paths[-1], index=False)
    expected = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    got = imageio.read_csv_many(paths)
    pd.testing.assert_frame_equal(got, expected)
    assert list(got["image"]) == ["b", "a, quoted", "c", "d", "e"] and got["n"].isna().sum() == 1
