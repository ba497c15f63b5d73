"""Read-only views of the intent documents as plain dicts: what `module list|show` and `deploy` print.

The offline CLI (on a data dir) and the daemon's control API both answer from these, so a command
prints the same whether it ran against a store or a running node.
"""

from __future__ import annotations

from typing import Any

from crdt.documents import IntentDoc


def modules_view(doc: IntentDoc) -> list[dict[str, Any]]:
    """One object per module: every version, the live ones."""
    out = []
    for name in doc.modules():
        vs = doc.versions(name)
        out.append({"name": name, "versions": [m.version for m in vs], "live": [m.version for m in vs if not m.removed]})
    return out


def module_view(doc: IntentDoc, name: str) -> list[dict[str, Any]]:
    """Every version of module ``name`` (empty when there is none)."""
    return [
        {"version": m.version, "sha256": m.sha256, "size": m.size, "publisher": m.publisher, "created_at": m.created_at,
         "capabilities": m.manifest.capabilities.to_strings() if m.manifest else [],
         "limits": m.manifest.limits.to_payload() if m.manifest else {},
         "abi": m.manifest.abi.value if m.manifest else None,
         "removed": m.removed, "description": m.description}
        for m in doc.versions(name)
    ]


def deployment_view(doc: IntentDoc, name: str) -> dict[str, Any]:
    """The deployment's current spec and active version (raises NotFound)."""
    d = doc.deployment(name)
    spec = d.spec
    return {
        "deployment": d.name,
        "module": spec.module if spec else None,
        "version": spec.version if spec else None,
        "active_version": d.active_version,
        "replicas": spec.replicas if spec else 0,
        "tenant": spec.tenant if spec else None,
        "revision": d.revision,
    }
