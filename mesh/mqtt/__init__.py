"""The MQTT bridge between a broker and the mesh event bus (docs/EVENTS.md "MQTT bridge")."""

from mesh.mqtt.bridge import MqttBridge, MqttMetrics

__all__ = ["MqttBridge", "MqttMetrics"]
