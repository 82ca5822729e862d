"""Volumes larger than memory: block-wise prediction, block jobs, label volumes.

Every function here touches one block (plus a halo) of a volume at a time, so memory is
bounded by the block size chosen from ``predict.memory_gb``, never by the image. Blocks are
aligned to the output Zarr chunks, so blocks can also be written by separate jobs
(``predict.split``) without two writers ever touching the same chunk. The per-workflow
parts (watershed seams, point suppression, block-wise scores) live in ``tasks/<name>/``.
"""
