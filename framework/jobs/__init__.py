"""Recurring jobs: the daily training runner (lock, catch-up, exactly-once day commits)."""
