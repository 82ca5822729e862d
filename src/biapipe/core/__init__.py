"""Foundations every layer uses: errors, config sections, image I/O, axes, OME-Zarr, devices."""
