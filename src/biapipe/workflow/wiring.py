"""The rules' input functions, parameters and stage arguments, from the parse-time plan.

Snakemake hands rules its ``wildcards``, ``input`` and ``output`` objects; these methods only
read their attributes, so they are plain Python, unit-tested without Snakemake. Training and
validation images are looked up apart from test images: a test image may share a training
image's name (their outputs live in different folders).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from ..data.samples import Sample
from . import smk


class Wiring:
    """What the rules of one parsed experiment need, named once."""

    def __init__(self, plan: smk.Plan) -> None:
        self.plan = plan
        self.cfg, self.task, self.out = plan.cfg, plan.task, plan.out
        self.train_samples, self.test_samples = plan.train_samples, plan.test_samples
        self.test_ids = plan.ids("test")
        self.scored = set(plan.scored_ids)
        self.large = set(plan.large_ids)
        self.batches = plan.batches
        batched = {i for ids in self.batches.values() for i in ids}
        self.unbatched = [i for i in self.test_ids if i not in batched]
        self.axes = self.cfg["data"]["axes"]
        self.side = {name: f"{self.out}/{path}" for name, path in self.task.side_outputs.items()}

    # ------------------------------------------------------------------ paths
    def prediction(self, image_id: str) -> str:
        return f"{self.out}/predictions/{image_id}.zarr"

    def metrics(self, image_id: str) -> str:
        return f"{self.out}/metrics/{image_id}.csv"

    def output(self, image_id: str) -> str:
        return smk.output_path(self.plan, image_id, image_id in self.large)

    def sides(self, image_id: str) -> dict[str, str]:
        return {name: path.format(image=image_id) for name, path in self.side.items()}

    def batch_outputs(self, image_id: str) -> list[str]:
        """What one batched image leaves (its batch's job writes them; Snakemake sees the marker)."""
        return [self.output(image_id), self.metrics(image_id), *self.sides(image_id).values()]

    def markers(self, stage: str) -> list[str]:
        return [smk.batch_marker(self.plan, stage, name) for name in self.batches]

    def reopen_incomplete_batches(self) -> None:
        """A batch whose marker exists but one of whose images lacks an output runs again."""
        smk.drop_incomplete_batches(self.plan, lambda n: smk.batch_marker(self.plan, "postprocess", n),
                                    self.batch_outputs)
        smk.drop_incomplete_batches(self.plan, lambda n: smk.batch_marker(self.plan, "predict", n),
                                    lambda i: [self.prediction(i)])

    # ------------------------------------------------------------------ input functions
    def _label_file(self, sample: Sample) -> str | list[str]:
        """A label as an input file; none when labels are values (class names)."""
        return sample.label if sample.label is not None and self.task.labels_are_files else []

    def _companions(self, sample: Sample) -> list[str]:
        """Files read with a label (a class image): inputs too, so that editing one reruns its jobs."""
        return self.task.label_companions(sample.label) if self._label_file(sample) else []

    def train_companions_of(self, wildcards: Any) -> list[str]:
        return self._companions(self.train_samples[wildcards.image])

    def companions_of(self, wildcards: Any) -> list[str]:
        return self._companions(self.test_samples[wildcards.image])

    def train_image_of(self, wildcards: Any) -> str:
        return self.train_samples[wildcards.image].image

    def train_label_of(self, wildcards: Any) -> str | list[str]:
        return self._label_file(self.train_samples[wildcards.image])

    def train_label_value(self, wildcards: Any) -> str | None:
        """What stages receive as the label: its file, or the class name."""
        return self.train_samples[wildcards.image].label

    def image_of(self, wildcards: Any) -> str:
        return self.test_samples[wildcards.image].image

    def label_of(self, wildcards: Any) -> str | list[str]:
        return self._label_file(self.test_samples[wildcards.image])

    def label_value(self, wildcards: Any) -> str | None:
        return self.test_samples[wildcards.image].label

    def batch_images(self, wildcards: Any) -> list[str]:
        """A batch's images as input files only when a rule makes them (demo data): else Snakemake
        would look for a producer of every image, which costs planning time per image; their
        :meth:`batch_digest` (a parameter) reruns the batch when one of them changes."""
        if not self.cfg["data"]["demo"]:
            return []
        return [self.test_samples[i].image for i in self.batches[wildcards.batch]]

    def batch_labels(self, wildcards: Any) -> list[str]:
        if not self.cfg["data"]["demo"]:
            return []
        return [f for i in self.batches[wildcards.batch] for s in [self.test_samples[i]] if self._label_file(s)
                for f in [s.label, *self._companions(s)]]

    def batch_digest(self, wildcards: Any, labels: bool = False) -> str:
        """Names, sizes and modification times of a batch's images (and labels): what reruns the
        batch when an image is changed, added or removed, at one ``stat`` per file."""
        if self.cfg["data"]["demo"]:
            return ""
        parts = []
        for image_id in self.batches[wildcards.batch]:
            sample = self.test_samples[image_id]
            files = [sample.image] + ([sample.label, *self._companions(sample)] if labels and self._label_file(sample)
                                      else [])
            for path in files:
                st = os.stat(path)
                parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def batch_label_digest(self, wildcards: Any) -> str:
        return self.batch_digest(wildcards, labels=True)

    def batch_ids(self, wildcards: Any) -> list[str]:
        return self.batches[wildcards.batch]

    def batch_label_values(self, wildcards: Any) -> list[str | None]:
        return [self.test_samples[i].label for i in self.batches[wildcards.batch]]

    def segmented_of(self, wildcards: Any) -> list[str]:
        """Split images segmented by block jobs: the id store and the block records the merge reads."""
        ids = self.plan.segment_blocks.get(wildcards.image)
        if ids is None:
            return []
        base = f"{self.out}/large/{wildcards.image}"
        return [f"{base}/segments.zarr"] + [f"{base}/segment/{b}.npz" for b in ids]

    def block_markers(self, wildcards: Any) -> list[str]:
        """Split large images: one marker per prediction block job (rules/large.smk)."""
        return [f"{self.out}/large/{wildcards.image}/predict/{b}.done"
                for b in self.plan.blocks.get(wildcards.image, [])]

    # ------------------------------------------------------------------ parameters
    def label_param(self, batch: bool = False) -> dict[str, Any]:
        """A class name is no file, so it reruns a job as a param; label files are inputs already."""
        if self.task.labels_are_files:
            return {}
        return {"labels": self.batch_label_values} if batch else {"label": self.label_value}

    # ------------------------------------------------------------------ stage arguments
    @staticmethod
    def _stats(input: Any) -> str | None:
        """The dataset normalization statistics among a job's inputs (normalize.scope: dataset)."""
        stats = input.get("stats", [])
        return stats[0] if stats else None

    def prepare(self, input: Any, output: Any, wildcards: Any) -> dict[str, Any]:
        return dict(image=input.image, label=self.train_label_value(wildcards), image_out=output.image,
                    targets_out=output.targets, task=self.task, axes=self.axes, normalize=self.cfg["normalize"],
                    memory_gb=self.cfg["train"]["memory_gb"], patch_size=self.cfg["train"]["patch_size"],
                    stats=self._stats(input), object_diameter=self.cfg["train"]["object_diameter"])

    def predict(self, input: Any, output: Any, wildcards: Any, threads: int) -> dict[str, Any]:
        return dict(model=input.model, image=input.image, out=output[0], task=self.task, axes=self.axes,
                    normalize=self.cfg["normalize"], predict=self.cfg["predict"], threads=threads,
                    stats=self._stats(input), large=wildcards.image in self.large,
                    echo=wildcards.image in self.large)  # a line per block on the console

    def report(self, output: Any) -> dict[str, Any]:
        return dict(task=self.task, results=self.plan.out, samples=self.plan.ds.test,
                    outputs=smk.test_outputs(self.plan), html_out=output.html, gallery=output.gallery,
                    config_out=output.config)

    def postprocess(self, input: Any, output: Any, wildcards: Any) -> dict[str, Any]:
        segmented = list(input.get("segmented", []))
        return dict(prediction=input.prediction, out=output.main, task=self.task, axes=self.axes,
                    image=self.image_of(wildcards), side={name: output[name] for name in self.side},
                    label=self.label_value(wildcards), metrics=output.metrics, image_id=wildcards.image,
                    segmented=(segmented[0], segmented[1:]) if segmented else None)

    def predict_batch(self, input: Any, output: Any, wildcards: Any, threads: int) -> dict[str, Any]:
        ids = self.batches[wildcards.batch]
        return dict(model=input.model, images=[self.test_samples[i].image for i in ids],
                    outs=[self.prediction(i) for i in ids], marker=output[0], task=self.task, axes=self.axes,
                    normalize=self.cfg["normalize"], predict=self.cfg["predict"], threads=threads,
                    stats=self._stats(input))

    def postprocess_batch(self, output: Any, wildcards: Any) -> dict[str, Any]:
        ids = self.batches[wildcards.batch]
        return dict(predictions=[self.prediction(i) for i in ids], outs=[self.output(i) for i in ids],
                    metrics=[self.metrics(i) for i in ids], images=[self.test_samples[i].image for i in ids],
                    labels=[self.test_samples[i].label for i in ids], sides=[self.sides(i) for i in ids],
                    image_ids=ids, marker=output[0], task=self.task, axes=self.axes)
