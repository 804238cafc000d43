"""Delivery: lifecycle, release (fan-out), outbox, workers, retry policy, rate limits, scheduler."""
