"""Mesh-native events: topics, subscriptions that run a deployment, at-least-once delivery.

* :mod:`mesh.events.topics`: topic validation and MQTT-style patterns (``+``, trailing ``#``);
* :mod:`mesh.events.delivery`: the sans-IO core (per-subscription bounded queues, retry schedule,
  dead letters, backpressure, storm shedding); time and a seeded ``random.Random`` are inputs;
* :mod:`mesh.events.store`: the durable queue (sqlite in the data dir, fsync before an ack);
* :mod:`mesh.events.bus`: :class:`~mesh.events.bus.EventBus`, the trio driver the daemon runs
  (``daemon.bus``). See docs/EVENTS.md.
"""

from mesh.events.event import Backpressure, Event

__all__ = ["Backpressure", "Event"]
