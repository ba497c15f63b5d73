"""Replicated intent on pycrdt: registry, deployments, routes, placement, KV; sync; durable store.

``crdt`` imports neither ``mesh`` nor ``runtime``; ``mesh`` registers :data:`crdt.messages.ALL_MESSAGES`
with its wire envelope and drives :class:`crdt.intent.IntentNode` / :class:`crdt.blob.BlobTransfer`.
"""
