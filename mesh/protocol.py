"""Every wire message type of the node, registered in one place.

Membership messages register themselves (``mesh.membership.messages``). The
``crdt`` package must not import ``mesh``, so its message classes only follow
the envelope protocol; this module registers them with :func:`mesh.wire.message`
so :func:`mesh.wire.decode` understands types 20-24 (sync) and 40-42 (blob).
Importing it is idempotent.
"""

from __future__ import annotations

from crdt.messages import ALL_MESSAGES, BLOB_MESSAGES, SYNC_MESSAGES
from mesh.wire import message

SYNC_TYPES: frozenset[int] = frozenset(c.TYPE for c in SYNC_MESSAGES)
BLOB_TYPES: frozenset[int] = frozenset(c.TYPE for c in BLOB_MESSAGES)

for _cls in ALL_MESSAGES:
    message(_cls)

__all__ = ["SYNC_TYPES", "BLOB_TYPES"]
