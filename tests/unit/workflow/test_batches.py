"""Batches of test images: how many, which image goes where, and that it stays put."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from biapipe.workflow.smk import batch_count, batch_name, plan_batches


@pytest.mark.parametrize(("n", "per_job", "expected"), [
    (10, "auto", 10), (32, "auto", 32), (33, "auto", 4), (300, "auto", 4), (1000, "auto", 8), (1001, "auto", 8), (10_000, "auto", 128), (100_000, "auto", 1024),
    (6, 2, 4), (7, 2, 4), (5, 2, 2), (3, 5, 1), (40, 1, 40),
])
def test_batch_count_is_a_power_of_two_near_n_over_the_batch_size(n, per_job, expected) -> None:
    assert batch_count(n, per_job) == expected


def test_small_datasets_keep_one_job_per_image() -> None:
    assert plan_batches([f"im{i}" for i in range(32)], "auto") == {}
    assert len(plan_batches([f"im{i}" for i in range(33)], "auto")) == 4
    assert plan_batches([f"im{i}" for i in range(50)], 1) == {}


def test_every_image_is_in_exactly_one_batch_of_about_the_asked_size() -> None:
    ids = [f"img_{i:05d}" for i in range(5000)]
    batches = plan_batches(ids, 100)
    assert len(batches) == 64  # 2 ** round(log2(5000 / 100))
    assert sorted(i for members in batches.values() for i in members) == ids
    sizes = [len(m) for m in batches.values()]
    assert 40 < min(sizes) and max(sizes) < 120  # a hash spreads names evenly


def test_an_added_image_leaves_every_other_image_in_its_batch() -> None:
    ids = [f"cell_{i:04d}" for i in range(3000)]
    before = plan_batches(ids, 50)
    after = plan_batches([*ids, "cell_new"], 50)
    assert len(before) == len(after)
    moved = {k for k in after if after[k] != before.get(k)}
    assert moved == {batch_name("cell_new", len(after))}


def test_batch_names_are_stable_text() -> None:
    assert batch_name("a", 128) == batch_name("a", 128) and batch_name("a", 128).startswith("b")
    assert SimpleNamespace(batch=batch_name("x", 4)).batch in {f"b{k:05d}" for k in range(4)}
