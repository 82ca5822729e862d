"""The image-to-image workflow (task.py: its Task)."""
