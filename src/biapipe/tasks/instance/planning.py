"""The instance workflow's planned keys (``train.plan: auto``; the generic ones: workflow/planning.py).

Post-processing follows the objects: the smallest kept object is a fraction of the small
objects of the training set, holes are filled (nuclei and cells have none), seeds are the
bottoms of contour-map basins, and thresholds are tuned on the validation images whenever
there are some. The target channels follow
how crowded the objects are.
"""

from __future__ import annotations

import math
from typing import Any

#: Objects touching each other on more than this share of their pixels (median over images) are
#: crowded: a distance channel then separates them better than contours alone.
CROWDED = 0.02

#: Appearance augmentation for unseen image types, beyond the generic plan's (probabilities and
#: ranges): out-of-focus blur, smooth shape changes, wider exposure changes. Chosen on the
#: leave-type-out benchmark at the 40-minute budget (docs/architecture.md).
APPEARANCE = {"elastic": 0.3, "blur": 0.3, "blur_range": [0.5, 2.0], "brightness_range": [-0.2, 0.2],
              "contrast_range": [0.5, 1.5], "gamma_range": [0.5, 2.0]}

#: Depth of the contour-map basins that seed objects (``postprocess.instance.seed_contour_depth``),
#: the tuner's starting point: chosen on the leave-type-out benchmark (docs/architecture.md).
BASIN_DEPTH = 0.05


def plan_instance(fingerprint: dict[str, Any] | None, cfg: dict[str, Any],
                  has_validation: bool) -> list[tuple[str, Any, str]]:
    """(key, value, why) of the instance workflow's planned keys."""
    out: list[tuple[str, Any, str]] = []
    if has_validation:
        out.append(("postprocess.instance.tuned", True,
                    "seed and mask thresholds searched on the validation images (F1 at IoU 0.5)"))
    for key, value in APPEARANCE.items():
        out.append((f"train.augment.{key}", value,
                    "blur, shape and exposure changes wider than the training images show: nuclei of an unseen "
                    "image type differ from the training types in focus, shape and brightness"))
    out.append(("postprocess.instance.fill_holes", True, "objects have no holes; a hole is a missed pixel"))
    out.append(("postprocess.instance.seed_contour_depth", BASIN_DEPTH,
                "seeds at the bottom of every contour-map basin this deep rather than below a fixed contour "
                "level: dim objects of unseen image types still get a seed, touching ones parted by a weak "
                "ridge get one each"))
    objects = (fingerprint or {}).get("objects")
    if objects:
        small = float(objects["diameter_p10"])
        min_size = max(4, int(round(math.pi / 4 * (small / 3) ** 2)))
        out.append(("postprocess.instance.min_size", min_size,
                    f"a ninth of the area of the small objects (10th percentile diameter {small:g} px): "
                    "smaller pieces are fragments"))
        crowded = float(objects["touching_median"])
        channels = ["foreground", "contour", "distance"] if crowded > CROWDED else ["foreground", "contour"]
        out.append(("targets.instance.channels", channels,
                    f"{crowded:.1%} of the object pixels touch another object (median over images): "
                    + ("crowded, a distance map adds seeds at object centres" if crowded > CROWDED else
                       "contours separate the few touching objects")))
    return out
