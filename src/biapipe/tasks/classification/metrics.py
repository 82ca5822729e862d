"""Image-classification metrics: confusion matrix, accuracy, balanced accuracy, per-class P/R/F1.

Everything is derived from one K x K confusion matrix (rows: true class, columns:
predicted class), so the per-image table can be aggregated by simply counting, and
the figures for any subset of images are consistent with each other.

Conventions for ratios that have no data (chosen so averages stay meaningful on small
or incomplete test sets, and documented here because libraries disagree):

- A class *occurs* when it is a true class or a predicted class of at least one image.
- Per-class precision, recall and F1 of a class that does not occur are NaN, and the
  macro averages (plain means over classes) skip them: a test set without any image
  of class c says nothing about c.
- For a class that occurs, an undefined ratio counts as 0 (e.g. recall of a class that
  was predicted but never true, precision of a class that was true but never
  predicted): the model got that class wrong, and averaging must show it.
- Balanced accuracy is the mean recall over the classes present in the ground truth
  (the usual definition), so it equals accuracy when every class has the same number
  of images and is not inflated by a majority class otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...core.imageio import atomic_path


def confusion_matrix(true_index: Sequence[int], predicted_index: Sequence[int], n_classes: int) -> np.ndarray:
    """K x K counts, ``cm[t, p]`` = images of true class t predicted as p."""
    true_index = np.asarray(true_index, dtype=np.int64)
    predicted_index = np.asarray(predicted_index, dtype=np.int64)
    if true_index.shape != predicted_index.shape:
        raise ValueError(f"{true_index.size} true classes but {predicted_index.size} predictions")
    for name, values in (("true", true_index), ("predicted", predicted_index)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} class index outside 0..{n_classes - 1}")
    flat = true_index * n_classes + predicted_index
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_scores(cm: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (rows in class-index order)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    true_count = cm.sum(axis=1)
    pred_count = cm.sum(axis=0)
    occurs = (true_count + pred_count) > 0
    precision = _ratio(tp, pred_count, occurs)
    recall = _ratio(tp, true_count, occurs)
    f1 = _ratio(2 * tp, true_count + pred_count, occurs)
    return pd.DataFrame({"precision": precision, "recall": recall, "f1": f1,
                         "support": true_count.astype(np.int64), "occurs": occurs})


def _ratio(numerator: np.ndarray, denominator: np.ndarray, occurs: np.ndarray) -> np.ndarray:
    """numerator / denominator; 0 where undefined for an occurring class, NaN where the class does not occur."""
    out = np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64),
                    where=denominator > 0)
    out[~occurs] = np.nan
    return out


def classification_metrics(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Dataset-level figures from a confusion matrix, as one flat row.

    Keys: n_images, accuracy, balanced_accuracy, macro_precision, macro_recall,
    macro_f1, then precision_<c>, recall_<c>, f1_<c>, support_<c> per class name c.
    """
    cm = np.asarray(cm)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {len(class_names)} classes")
    total = int(cm.sum())
    scores = per_class_scores(cm)
    present = scores["support"].to_numpy() > 0
    row: dict[str, float] = {
        "n_images": total,
        "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        "balanced_accuracy": float(scores["recall"].to_numpy()[present].mean()) if present.any() else float("nan"),
        "macro_precision": _nanmean(scores["precision"]),
        "macro_recall": _nanmean(scores["recall"]),
        "macro_f1": _nanmean(scores["f1"]),
    }
    for name, s in zip(class_names, scores.itertuples(index=False)):
        row.update({f"precision_{name}": float(s.precision), f"recall_{name}": float(s.recall),
                    f"f1_{name}": float(s.f1), f"support_{name}": int(s.support)})
    return row


def _nanmean(values: pd.Series) -> float:
    arr = values.to_numpy(dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# --------------------------------------------------------------------------- tables and figures


def confusion_table(cm: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """The matrix as a CSV-ready table: column ``true_class``, then one column per predicted class."""
    table = pd.DataFrame(np.asarray(cm, dtype=np.int64), columns=list(class_names))
    table.insert(0, "true_class", list(class_names))
    return table


def plot_confusion_matrix(path: str | Path, cm: np.ndarray, class_names: Sequence[str], title: str = "") -> None:
    """PNG of the matrix: colour is the share of each true class (row-normalized), text the count.

    Row normalization keeps a rare class readable next to a common one; object-oriented
    matplotlib only, as pyplot's global state is not thread-safe (jobs run as threads).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure


    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    k = len(class_names)
    edge = 2.5 + 0.6 * k
    fig = Figure(figsize=(edge + 1.0, edge), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="share of true class")
    for t in range(k):
        for p in range(k):
            ax.text(p, t, str(cm[t, p]), ha="center", va="center",
                    color="white" if share[t, p] > 0.5 else "black")
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
