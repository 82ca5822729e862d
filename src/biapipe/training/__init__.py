"""Training: the loop, one process or data-parallel, schedules, resume state, losses."""
