"""Image-to-image translation: any input channels to any target channels (e.g. phase contrast
to three fluorescence stains), all target channels learned by one network together.

Targets have the images' spatial shape and ``targets.image_to_image.channels`` channels (names
settled from the first training target when null); inputs may have any number of channels as
long as all images agree. The rest is the restoration workflows' (restoration/task.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...core.errors import ConfigError, InputError
from ...data.samples import Dataset
from ..restoration.demo import STAINS, image_to_image_demo
from ..restoration.task import RestorationTask, probe_shape


class ImageToImageTask(RestorationTask):
    name: ClassVar[str] = "image_to_image"

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        #: (image, channels) of the first image checked: every other must agree
        self._first_input: tuple[str, int] | None = None

    def channel_names(self) -> list[str]:
        names = self.section["channels"]
        if not names:
            raise ConfigError(f"targets.{self.name}.channels", "unknown: the workflow settles it from the data")
        return [str(n) for n in names]

    def input_channels(self) -> int | None:
        return None

    def settle_channels(self, ds: Dataset) -> Any:
        first = ds.train[0].label
        n = probe_shape(first, self.ndim, self.cfg["data"]["axes"])[-1]
        return [f"channel_{c}" for c in range(n)]

    def demo_channels(self) -> Any:
        return list(STAINS)

    def residual(self, in_channels: int) -> bool:
        return False  # another modality: nothing of the input to keep

    def check_label_header(self, label: str, header_shape: tuple[int, ...], dtype: np.dtype, image: str,
                           image_shape: tuple[int, ...]) -> None:
        if self._first_input is None:
            self._first_input = (image, int(image_shape[-1]))
        elif image_shape[-1] != self._first_input[1]:
            raise InputError(image, f"has {image_shape[-1]} channels but {self._first_input[0]} has "
                                    f"{self._first_input[1]}")
        super().check_label_header(label, header_shape, dtype, image, image_shape)

    def write_demo(self) -> None:
        d = self.cfg["data"]["demo"]
        image_to_image_demo(d["folder"], self.ndim, (d["n_train"], d["n_val"], d["n_test"]), d["size"],
                            self.cfg["seed"])
