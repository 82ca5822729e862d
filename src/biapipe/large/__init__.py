"""Volumes larger than memory: lazy input, block-wise prediction, post-processing and metrics.

Every function here touches one block (plus a halo) of a volume at a time, so memory is
bounded by the block size chosen from ``predict.memory_gb``, never by the image. Blocks
are aligned to the output Zarr chunks, so blocks can also be written by separate jobs
(``predict.split``) without two writers ever touching the same chunk.
"""

from .blocks import Block, block_grid, choose_block_shape
from .lazy import LazyImage, check_chunk_budget, open_lazy

__all__ = ["Block", "LazyImage", "block_grid", "check_chunk_budget", "choose_block_shape", "open_lazy"]
