"""The classification workflow (task.py: its Task)."""
