"""Data: samples and splits, validation, normalization, patches, augmentation, demo data, lazy volumes."""
