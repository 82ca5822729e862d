"""Self-supervised pre-training: reconstruct unlabelled images from masked or degraded copies."""
