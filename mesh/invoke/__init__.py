"""Invocation across the mesh: wire messages, traceparent, circuit breakers, target choice (sans-IO)."""
