"""The semantic workflow (task.py: its Task)."""
