"""Topic validation and MQTT-style pattern matching for mesh events (the grammar lives in ``model.topics``,
where ``crdt`` validates subscription records with it too)."""

from __future__ import annotations

from model.topics import MAX_TOPIC_LEN, matches, validate_pattern, validate_topic

__all__ = ["MAX_TOPIC_LEN", "matches", "validate_pattern", "validate_topic"]
