"""The peer: identity, wire, SWIM membership, Vivaldi coordinates, node assembly, CLI."""
