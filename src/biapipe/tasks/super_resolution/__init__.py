"""The super-resolution workflow (task.py: its Task)."""
