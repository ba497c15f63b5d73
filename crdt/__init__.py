"""Replicated intent on pycrdt: registry, deployments, routes, placement, KV; sync; durable store."""
