"""The report's picture of a restored image: output and target on the target's display range."""

import numpy as np
import tifffile
from PIL import Image

from biapipe.tasks.gallery import ReportImage
from biapipe.tasks.restoration.output import write_restored
from biapipe.tasks.restoration.picture import _shared_range, restoration_picture


def test_output_and_target_share_the_targets_display_range():
    target = np.linspace(0, 100, 101 * 101, dtype=np.float32).reshape(101, 101, 1)
    low, high = np.percentile(target, [1.0, 99.8])
    shown_out, shown_target = _shared_range([target + 10, target], target)
    y, x = 50, 50  # the middle pixel: value 50
    assert shown_target[y, x, 0] == np.float32((50 - low) / (high - low))
    # a restoration 10 units too bright shows 10 / (high - low) brighter, not stretched back
    assert abs(shown_out[y, x, 0] - shown_target[y, x, 0] - 10 / (high - low)) < 1e-6
    assert shown_out.max() == 1.0 and shown_target.min() == 0.0


def test_picture_shows_input_restored_and_target_side_by_side(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.uniform(0, 200, (48, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", clean + rng.normal(0, 20, clean.shape).astype(np.float32))
    tifffile.imwrite(tmp_path / "gt.tif", clean)
    write_restored(tmp_path / "out.tif", clean[..., None], [1.0, 1.0])
    metrics = {"psnr": 31.25}
    with_target = restoration_picture(ReportImage("a", str(tmp_path / "in.tif"), str(tmp_path / "gt.tif"),
                                                  str(tmp_path / "out.tif"), metrics), "best", tmp_path / "a.png",
                                      2, None, 512, "psnr")
    alone = restoration_picture(ReportImage("a", str(tmp_path / "in.tif"), None, str(tmp_path / "out.tif")),
                                "best", tmp_path / "b.png", 2, None, 512, "psnr")
    assert with_target.caption == "a: psnr = 31.25"
    assert alone.caption == "a: not scored"
    three, two = Image.open(with_target.path).size[0], Image.open(alone.path).size[0]
    assert abs(three / two - 1.5) < 0.1  # three panels against two
