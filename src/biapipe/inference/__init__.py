"""Inference: loaded models, tiled prediction with blending, test-time augmentation, model export."""
