"""The contract every workflow fulfils: one Task subclass per folder under ``tasks/``.

Everything that differs between workflows is a method or attribute declared here, with
the common behaviour as its default, so nothing outside ``tasks/<name>/`` asks which
workflow it runs: samples ask the task what a label is, training asks it for datasets,
a network spec and a loss, prediction for the activation, the workflow for the outputs
and the extra tables. Task modules import torch only inside the methods that need it:
the workflow builds a task at every parse (docs/architecture.md, "start-up cost").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ..core import imageio
from ..core.errors import BiapipeError, ConfigError, InputError
from ..core.imageio import IMAGE_SUFFIXES
from ..data.demo import demo_ids, make_demo_data
from ..data.lazy import open_lazy
from ..data.samples import Dataset, Sample, list_images, pair_split, split_validation
from ..data.validate import check_label_image, probe
from .gallery import GalleryHooks

if TYPE_CHECKING:
    import torch

    from ..data.patches import PatchData
    from ..data.sources import PathPair


class Task(GalleryHooks):
    """Workflow-specific behaviour, configured by the validated experiment config."""

    #: value of the config's ``workflow`` key
    name: ClassVar[str]
    #: folder under results/{experiment}/ holding post-processed outputs, and one output's suffix
    output_dir: ClassVar[str]
    output_suffix: ClassVar[str]
    #: suffix of the output of an image processed block by block; None: no block-wise path
    large_output_suffix: ClassVar[str | None] = None
    #: extra per-image outputs of post-processing: name -> path under results/{experiment}/ with {image}
    side_outputs: ClassVar[dict[str, str]] = {}
    #: what a sample's label is: ``image`` (a label image), ``table`` (a CSV of points) or ``class`` (a name)
    label_kind: ClassVar[str] = "image"
    #: file suffixes of label files
    label_suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    #: one forward pass per whole (resized) image instead of tiles
    whole_image: ClassVar[bool] = False
    #: whether ``train.monitor: iou | f1`` applies (patches with foreground maps)
    scores_patches: ClassVar[bool] = True
    #: bytes per voxel post-processing of a whole image holds besides the prediction (with it:
    #: whether an image fits ``predict.memory_gb``)
    postprocess_bytes_per_voxel: ClassVar[int] = 16
    #: automatic planning (``train.plan: auto``) may choose the normalization and the zoom and
    #: intensity augmentations (False: the workflow learns a fixed intensity map)
    plans_appearance: ClassVar[bool] = True
    #: a training image too large to prepare whole is prepared block by block (the task's targets
    #: come from label regions with :meth:`target_halo`); False: always whole
    prepares_by_block: ClassVar[bool] = True
    #: large images split across jobs are also segmented by one job per block, then merged
    splits_segmentation: ClassVar[bool] = False
    #: experiment-level tables made from every test image's output: name -> file under results/{experiment}/
    outputs_tables: ClassVar[dict[str, str]] = {}
    #: experiment-level figures made from metrics.csv: name -> file under results/{experiment}/
    metrics_tables: ClassVar[dict[str, str]] = {}
    #: per-image details beside metrics/{image}.csv, as metrics/{image}_{details_name}.csv (e.g. the
    #: scored matches that average precision ranks over the whole data set); None: no details
    details_name: ClassVar[str | None] = None
    #: outputs are objects of a measurable size: training images are brought to ``train.object_diameter``
    #: and test images to the model's scale (``predict.rescale``; docs/architecture.md, "object scale")
    measures_objects: ClassVar[bool] = False
    #: the per-image column of metrics.csv that ranks test images for the report (higher is better)
    main_metric: str = ""
    #: the summary.csv column that is a run's headline score, and what it measures, in words
    main_score: str = ""
    main_score_name: str = ""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.ndim: int = cfg["ndim"]

    @property
    def labels_are_files(self) -> bool:
        return self.label_kind != "class"

    # ------------------------------------------------------------------ samples (parse time: no torch)
    def split_samples(self, split: str, spec: dict[str, Any]) -> list[Sample]:
        """The samples of ``data.<split>``: images paired with label files by name."""
        return pair_split(split, spec, label_required=split != "test", label_suffixes=self.label_suffixes)

    def sheet_label_column(self) -> str:
        """The sample-sheet column holding each image's label."""
        return "label"

    def label_companions(self, label: str) -> list[str]:
        """Files read with a label file (an instance class image): inputs of the jobs that read it."""
        return []

    def demo_samples(self) -> list[Sample]:
        """The samples the demo-data rule will write, known before the files exist."""
        demo = self.cfg["data"]["demo"]
        root = Path(demo["folder"])
        labels, suffix = self.demo_label_folder()
        return [Sample(i, str(root / s / "images" / f"{i}.tif"), str(root / s / labels / f"{i}{suffix}"), s)
                for s, names in demo_ids(demo["n_train"], demo["n_val"], demo["n_test"]).items() for i in names]

    def demo_label_folder(self) -> tuple[str, str]:
        """(folder, suffix) of the demo labels this workflow learns from."""
        return "labels", ".tif"

    def write_demo(self) -> None:
        """Write the demo data that :meth:`demo_samples` announced."""
        d = self.cfg["data"]["demo"]
        make_demo_data(d["folder"], self.ndim, d["n_train"], d["n_val"], d["n_test"], d["size"], self.cfg["seed"])

    def finish_dataset(self, ds: Dataset) -> None:
        """Checks and settings that need all samples (e.g. the class names); none by default."""

    def split_validation(self, train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
        """Hold out whole images for validation when ``data.val`` is absent."""
        return split_validation(train, fraction, seed)

    def settled_config(self, ds: Dataset) -> dict[str, Any]:
        """The config every job receives, with what discovery settled (e.g. class names)."""
        return self.cfg

    # ------------------------------------------------------------------ ground truth and targets
    def check_label_header(self, label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                           image_shape: tuple[int, ...]) -> None:
        """Parse-time check of one label file from its header (``header_shape``, ``dtype``)
        against its image's canonical (Z)YXC ``image_shape``; raises InputError naming the file.
        Default: a label image (``label_kind`` image) of the image's spatial shape."""
        check_label_image(label, header_shape, dtype, image, image_shape[:-1], self.ndim)

    def training_input(self, image: np.ndarray, image_id: str) -> np.ndarray:
        """A raw training/validation image (Z)YXC -> the raw image the network learns from, in
        the targets stage; itself by default (super-resolution from high-resolution images only
        degrades it here)."""
        return image

    def network_input(self, image: Any) -> Any:
        """A normalized (Z)YXC image (array or lazy view) -> what the network sees; itself by
        default (super-resolution upsamples it to the output grid, lazily for large images)."""
        return image

    def prediction_input(self, image: Any, path: str | Path) -> Any:
        """The network input of the test image at ``path``; self-supervision corrupts it first."""
        return self.network_input(image)

    def upsampling(self) -> tuple[int, ...] | None:
        """Per (Z)YX axis, the factor by which :meth:`network_input` enlarges an image (an exported
        model upsamples its input by it, with the same cubic kernel); None: not at all."""
        return None

    def network_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The (Z)YXC shape :meth:`network_input` gives an image of (Z)YXC ``shape`` (header only)."""
        factors = self.upsampling() or (1,) * (len(shape) - 1)
        return tuple(int(s) * int(f) for s, f in zip(shape[:-1], factors)) + (int(shape[-1]),)

    def read_label(self, path: str | Path, image_shape: tuple[int, ...] | None) -> Any:
        """Read one ground-truth file for an image of spatial shape ``image_shape`` (unchecked
        when None); raises InputError naming ``path`` when it does not fit the image."""
        label = imageio.read_label(path, self.ndim)
        if image_shape is not None and tuple(label.shape) != tuple(image_shape):
            raise InputError(path, f"label shape {tuple(label.shape)} does not match its image of shape "
                                   f"{tuple(image_shape)}")
        return label

    def read_label_region(self, path: str | Path, region: tuple[slice, ...], image_shape: tuple[int, ...]) -> Any:
        """The ground truth of one region of an image too large to prepare whole (large/prepare.py)."""
        label = open_lazy(path, self.ndim)
        if tuple(label.shape[:-1]) != tuple(image_shape) or label.shape[-1] != 1:
            raise InputError(path, f"label of shape {tuple(label.shape)} does not match its image of shape "
                                   f"{tuple(image_shape)}")
        return imageio.label_values(label[region][..., 0], path)

    def target_halo(self) -> tuple[int, ...]:
        """Voxels of label context a target voxel depends on, per (Z)YX axis (block-wise preparation)."""
        return (0,) * self.ndim

    def check_label(self, path: str | Path, image_shape: tuple[int, ...]) -> None:
        """Read a test label and check that the task can score it (values, shape), naming the
        file; before training, so a bad test label costs no compute."""
        self.make_targets(self.read_label(path, image_shape), path)

    def out_channels(self) -> int:
        """Number of channels the model outputs (logits)."""
        raise NotImplementedError

    def make_targets(self, label: Any, path: str | Path | None = None) -> np.ndarray:
        """What read_label returned -> the (Z)YXC training target (class maps int, -1 ignored; else float maps)."""
        raise NotImplementedError

    def foreground(self, target: np.ndarray) -> np.ndarray:
        """Boolean (Z)YX mask of pixels worth centring a training patch on."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def build_datasets(self, train_pairs: Sequence[PathPair], val_pairs: Sequence[PathPair],
                       augment_on_device: bool = False) -> PatchData:
        """Training and validation data: random foreground-biased patches by default."""
        from ..data.patches import build_datasets

        return build_datasets(self.cfg, self, train_pairs, val_pairs, augment_on_device)

    def model_spec(self, in_channels: int) -> dict[str, Any]:
        """The network to train: a U-Net from ``train.model`` by default."""
        from ..models.registry import divisor_per_axis
        from ..models.unet import unet_spec

        tcfg = self.cfg["train"]
        spec = unet_spec(tcfg["model"], self.ndim, in_channels, self.out_channels(), self.cfg["data"]["voxel_size"],
                         tcfg["patch_size"])
        per_axis = divisor_per_axis(spec)
        if any(int(p) % d for p, d in zip(tcfg["patch_size"], per_axis)):
            raise ConfigError("train.patch_size", f"{list(tcfg['patch_size'])} must be a multiple of {list(per_axis)} "
                                                  f"per axis for a network of depth {spec['depth']}")
        return spec

    def loss(self) -> torch.nn.Module:
        """Loss taking (logits N,C,(Z)YX, target N,Ct,(Z)YX) and returning a scalar."""
        raise NotImplementedError

    def object_counts(self, prediction: np.ndarray, target: np.ndarray) -> tuple[int, int, int] | None:
        """(TP, FP, FN) objects at IoU 0.5 of one activated (Z)YXC validation patch against its
        target, for ``train.monitor: f1``; None when the workflow has no objects to count."""
        return None

    # ------------------------------------------------------------------ prediction
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits N,C,(Z)YX -> the quantities that are blended across tiles and stored."""
        raise NotImplementedError

    def activation_spec(self) -> list[list[Any]]:
        """:meth:`activate` as plain data, for an exported model (models.packaged.ActivatedNet)."""
        raise ConfigError("workflow", f"models of the {self.name} workflow cannot be exported yet")

    def output_channel_names(self) -> list[str]:
        """Names of the stored prediction channels (exported models name them)."""
        return [f"channel_{c}" for c in range(self.out_channels())]

    def for_model(self, meta: dict[str, Any]) -> Task:
        """This task set up for the trained model whose checkpoint holds ``meta`` (its spec under
        ``model``), e.g. with the target normalization a restoration model was trained with;
        itself by default."""
        return self

    def predict_whole(self, predictor: Any, image: np.ndarray) -> np.ndarray:
        """Whole-image tasks (``whole_image``): the prediction of one normalized image by a loaded
        predictor (``inference.predictor.Predictor``)."""
        raise NotImplementedError(f"the {self.name} workflow predicts by tiles")

    def prediction_attrs(self) -> dict[str, Any]:
        """What a stored prediction records about the task besides the model and tiles; none by default."""
        return {}

    # ------------------------------------------------------------------ object scale (measures_objects)
    def label_diameter(self, label: Any, path: str | Path | None = None) -> float | None:
        """Typical object diameter of a ground truth (read_label's), in smallest-voxel units; None: nothing."""
        return None

    def prediction_diameter(self, prediction: np.ndarray) -> float | None:
        """Typical object diameter in one activated (Z)YXC prediction, from the objects its
        post-processing finds with the configured (never the tuned) thresholds; None: none found."""
        return None

    def image_diameter(self, image: np.ndarray) -> float | None:
        """Of one normalized (Z)YXC image, from its intensities alone (rescale's check); None: no measure."""
        return None

    # ------------------------------------------------------------------ planning (train.plan: auto)
    def label_stats(self, label: np.ndarray, path: str | Path | None = None) -> dict[str, float] | None:
        """Planning's measures of one (Z)YX crop of the label file ``path`` (``data.scale.object_stats``)."""
        return None

    def planned(self, fingerprint: dict[str, Any] | None, cfg: dict[str, Any],
                has_validation: bool) -> list[tuple[str, Any, str]]:
        """The workflow's planned (key, value, why) from the fingerprint (None: demo data) and the plan so far."""
        return []

    # ------------------------------------------------------------------ post-processing
    def postprocess(self, prediction: np.ndarray) -> Any:
        """A (Z)YXC prediction -> the final output (mask, labels, points, class)."""
        raise NotImplementedError

    def write_output(self, path: str | Path, output: Any) -> None:
        raise NotImplementedError

    def read_output(self, path: str | Path) -> Any:
        raise NotImplementedError

    def output_value(self, output: Any) -> Any:
        """What ``biapipe.predict`` returns for a post-processed output: the output itself by
        default (masks, label images), a table where the workflow writes one (points)."""
        return output

    def write_side_outputs(self, paths: dict[str, str], output: Any, image: np.ndarray | None,
                           prediction: np.ndarray | None = None) -> None:
        """Write the files named in ``side_outputs`` (e.g. a per-object table with each object's
        score from the ``prediction``); none by default."""

    def tuning_file(self) -> str | None:
        """Path of the tuned-thresholds JSON that post-processing needs, or None."""
        return None

    def tune_files(self, prediction_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                   out_json: str | Path) -> dict[str, Any]:
        """Search post-processing thresholds on validation predictions; write them to ``out_json``."""
        raise NotImplementedError(f"the {self.name} workflow has no threshold tuning")

    def tuned_postprocess(self, tuned: dict[str, Any]) -> dict[str, Any]:
        """The ``postprocess`` keys that the contents of a tuning file (as :meth:`tune_files` wrote
        it, and a model carries it) stand for, with tuning off: how a run that predicts with the
        model uses them (``tasks.from_model``)."""
        raise ConfigError(f"postprocess.{self.name}", "has no tuned thresholds")

    # ------------------------------------------------------------------ large images (block by block)
    def postprocess_large(self, pred_zarr: str | Path, out_path: str | Path, side: dict[str, str] | None,
                          image_path: str | None, segmented: tuple[str, list[str]] | None) -> None:
        """Post-process a prediction made block by block, with memory bounded by blocks."""
        raise ConfigError("predict.large_voxels", f"the {self.name} workflow has no block-wise path for large images")

    def segment_block_ids(self, image_shape: Sequence[int]) -> list[int]:
        """With ``splits_segmentation``: the segmentation blocks of an image of (Z)YXC shape."""
        raise NotImplementedError

    def create_segment_store(self, pred_zarr: str | Path, store: str | Path) -> None:
        """With ``splits_segmentation``: the empty store that segmentation block jobs fill."""
        raise NotImplementedError

    def segment_block(self, pred_zarr: str | Path, store: str | Path, block: int, record: str | Path) -> None:
        """With ``splits_segmentation``: segment one block into ``store``; what the merge needs to ``record``."""
        raise NotImplementedError

    def evaluate_large(self, output_path: str | Path, label_path: str | Path) -> dict[str, float]:
        """Scores of a block-wise output against a ground truth that may exceed memory."""
        raise ConfigError("predict.large_voxels", f"the {self.name} workflow cannot score large images")

    # ------------------------------------------------------------------ metrics
    def evaluate(self, output: Any, label: Any, path: str | Path | None = None) -> dict[str, Any]:
        """Metrics of one image: post-processed output against what read_label returned."""
        raise NotImplementedError

    def details(self, output: Any, label: Any, side: Mapping[str, str] | None = None) -> pd.DataFrame | None:
        """The per-image details named by :attr:`details_name` (None: none); ``side`` holds the
        paths of this image's side outputs, already written (e.g. the object scores)."""
        return None

    def details_path(self, metrics_csv: str | Path) -> Path | None:
        """Where the details of the image scored in ``metrics_csv`` go (None: the task has none)."""
        if self.details_name is None:
            return None
        path = Path(metrics_csv)
        return path.with_name(f"{path.stem}_{self.details_name}.csv")

    def summarize(self, metrics: pd.DataFrame, details: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
        """Dataset-level figures from the per-image table (default: mean of numeric columns); ``details``
        maps images to their details, for figures that rank all images' objects (average precision)."""
        numeric = metrics.select_dtypes("number")
        row = {"n_images": len(metrics)}
        row.update({f"mean_{c}": float(numeric[c].mean()) for c in numeric.columns})
        return pd.DataFrame([row])

    def for_outputs(self, pred_dir: str | Path) -> Task:
        """This task set up to read the outputs in ``pred_dir`` (``biapipe evaluate``); itself by default."""
        return self

    @classmethod
    def classes_config(cls, values: Sequence[str]) -> dict[str, Any]:
        """The config that ``biapipe evaluate --classes V [V ...]`` stands for."""
        raise BiapipeError(f"--classes: the {cls.name} workflow takes no class list")

    def for_ndim(self, ndim: int) -> Task:
        """This task for images of ``ndim`` spatial dimensions (``biapipe evaluate`` reads each
        pair's own); a voxel size given for 3D applies its Y and X to 2D files."""
        if ndim == self.ndim:
            return self
        voxel = self.cfg["data"]["voxel_size"]
        if voxel is not None and len(voxel) < ndim:
            raise BiapipeError(f"--voxel-size: {len(voxel)} values are too few for {ndim}D files")
        data = self.cfg["data"].replace(voxel_size=None if voxel is None else list(voxel)[-ndim:])
        return self.__class__(self.cfg.replace(ndim=ndim, data=data))

    def label_ndim(self, path: str | Path) -> int:
        """Spatial dimensionality of a ground-truth file, from its header (singleton axes dropped)."""
        shape, _ = probe(path)
        return min(max(sum(s != 1 for s in shape), 2), 3)

    def score_folders(self, pred_dir: str | Path, gt_dir: str | Path,
                      ndim: int | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """Per-image scores of outputs against ground truth folders paired by name, and the details
        (``biapipe evaluate``); each pair in its own ndim unless ``ndim`` is given, side outputs beside pred_dir."""
        suffixes = IMAGE_SUFFIXES if self.output_suffix in IMAGE_SUFFIXES else (self.output_suffix,)
        preds = list_images(pred_dir, suffixes)
        gts = list_images(gt_dir, self.label_suffixes)
        missing = sorted(set(gts) - set(preds))
        if missing:
            raise InputError(pred_dir, f"no prediction for ground truth '{missing[0]}' ({len(missing)} missing)")
        root = Path(pred_dir).parent
        rows, details = [], {}
        for image_id, path in gts.items():
            task = self.for_ndim(ndim or self.label_ndim(path))
            output, label = task.read_output(preds[image_id]), task.read_label(path, None)
            rows.append({"image": image_id, **task.evaluate(output, label, path)})
            side = {k: str(root / v.format(image=image_id)) for k, v in self.side_outputs.items()}
            found = task.details(output, label, {k: v for k, v in side.items() if Path(v).is_file()})
            if found is not None:
                details[image_id] = found
        return pd.DataFrame(rows), details

    def write_outputs_tables(self, per_image_outputs: Sequence[str | Path], paths: dict[str, str]) -> None:
        """Write :attr:`outputs_tables` from every test image's output."""

    def write_metrics_tables(self, metrics_csv: str | Path, paths: dict[str, str]) -> None:
        """Write :attr:`metrics_tables` from metrics.csv."""
