"""Deterministic discrete-event network simulator that drives the real NodeCore."""
