"""The detection workflow (task.py: its Task)."""
