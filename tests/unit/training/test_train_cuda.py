"""The CUDA paths: batched augmentation on the GPU, mixed precision, TTA. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from biapipe.data.augment import AugmentDraw, Augmenter
from biapipe.inference.predict import predict_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from biapipe.training.loop import train_model  # noqa: E402

from .test_train import (  # noqa: E402
    ALL_AUGMENTATIONS,
    BinaryTask,
    assert_same_weights,
    config,
    make_pairs,
)


def test_gpu_augmentation_matches_the_cpu_geometry() -> None:
    """Rotation and zoom need no random field: CPU and GPU compute the same resampling."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((4, 1, 12, 48, 48)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 3, (4, 1, 12, 48, 48)))
    draws = [AugmentDraw.of(rotate=a, scale=s) for a, s in ((30, 1.0), (-75, 1.2), (0, 0.8), (140, 1.1))]
    aug = Augmenter.defaults()
    cpu_img, cpu_tgt = aug.apply(images, targets, draws)
    gpu_img, gpu_tgt = aug.apply(images.cuda(), targets.cuda(), draws)
    torch.testing.assert_close(gpu_img.cpu(), cpu_img, atol=1e-4, rtol=1e-4)
    assert (gpu_tgt.cpu() != cpu_tgt).float().mean() < 1e-3  # nearest: rounding ties may differ


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    folder = tmp_path_factory.mktemp("data")
    return {"train": make_pairs(folder, 3, "tr"), "val": make_pairs(folder, 1, "va")}


def cuda_config(**train: Any) -> dict[str, Any]:
    cfg = config(device="cuda", augment=ALL_AUGMENTATIONS, **train)
    return cfg


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_cuda_training_learns_with_gpu_augmentation_and_amp(amp: str, data: dict, tmp_path: Path) -> None:
    cfg = cuda_config(amp=amp, grad_clip=5.0)
    summary = train_model(cfg, BinaryTask(cfg), data["train"], data["val"], tmp_path / "a")
    assert summary["device"].startswith("cuda")
    hist = pd.read_csv(tmp_path / "a" / "history.csv")
    assert hist["train_loss"].iloc[-1] < 0.5 * hist["train_loss"].iloc[0]
    # the same seed on the same GPU gives the same weights (per-patch generators on the device)
    train_model(cfg, BinaryTask(cfg), data["train"], data["val"], tmp_path / "b")
    assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")


def test_tta_on_the_gpu_matches_the_cpu() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    image = np.random.default_rng(0).random((64, 80, 1)).astype(np.float32)
    cfg = {"mode": "tiled", "tile_size": [32, 48], "tta": True, "threads": 1}
    cpu = predict_image(model, image, cfg, lambda y: torch.softmax(y, 1), 4, "cpu")
    gpu = predict_image(model.cuda(), image, cfg, lambda y: torch.softmax(y, 1), 4, "cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
