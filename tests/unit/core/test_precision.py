"""Average precision against precision-recall curves worked out by hand."""

import numpy as np
import pytest

from biapipe.core.precision import average_precision, monotone, precision_recall

# Five predictions, ranked 0.9 > 0.8 > 0.7 > 0.6 > 0.5, against 4 true objects (one never found):
#   rank      1     2     3     4     5
#   matched   yes   no    yes   yes   no
#   precision 1     1/2   2/3   3/4   3/5
#   recall    1/4   1/4   2/4   3/4   3/4
#   envelope  1     3/4   3/4   3/4   3/5   (best precision at this or a later rank)
SCORES = [0.6, 0.9, 0.5, 0.8, 0.7]  # given out of order: ranking is by score
MATCHED = [True, True, False, False, True]


def test_the_curve_follows_the_ranking():
    precision, recall = precision_recall(SCORES, MATCHED, 4)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 4, 1 / 4, 2 / 4, 3 / 4, 3 / 4])
    np.testing.assert_allclose(monotone(precision), [1, 3 / 4, 3 / 4, 3 / 4, 3 / 5])


def test_all_point_interpolation_is_the_area_under_the_envelope():
    # recall steps 1/4 (at precision 1), 1/4 (3/4) and 1/4 (3/4); the last quarter is never reached
    assert average_precision(SCORES, MATCHED, 4, "all") == pytest.approx(0.25 * 1 + 0.25 * 0.75 + 0.25 * 0.75)


def test_coco_101_point_interpolation():
    # recalls 0.00..0.25 (26 points) read precision 1, 0.26..0.75 (50 points) read 3/4, 0.76..1 (25) read 0
    assert average_precision(SCORES, MATCHED, 4) == pytest.approx((26 * 1 + 50 * 0.75) / 101)


def test_edge_cases():
    assert np.isnan(average_precision([0.5], [False], 0))  # nothing to find: undefined
    assert average_precision([], [], 3) == 0.0  # things to find, nothing predicted
    assert average_precision([0.9, 0.1], [True, True], 2) == pytest.approx(1.0)
    # a perfect detector that ranks its false positive first loses precision at every recall
    assert average_precision([0.9, 0.8], [False, True], 1, "all") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="NaN"):
        average_precision([np.nan], [True], 1)
