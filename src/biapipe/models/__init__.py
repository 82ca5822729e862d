"""Networks described by plain-dict specs (see registry.py), and their checkpoints."""
