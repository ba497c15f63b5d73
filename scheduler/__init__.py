"""Placement as pure functions of (spec, view)."""
