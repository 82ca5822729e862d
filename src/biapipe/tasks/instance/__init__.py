"""The instance workflow (task.py: its Task)."""
