"""The denoising workflow (task.py: its Task)."""
