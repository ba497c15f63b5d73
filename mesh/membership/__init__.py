"""SWIM + Lifeguard membership, split by concern like hashicorp/memberlist."""

from mesh.membership.config import PROFILES, MembershipConfig, profile
from mesh.membership.meta import NodeMeta
from mesh.membership.state import Member, MemberState, SwimCore

__all__ = ["PROFILES", "MembershipConfig", "profile", "NodeMeta", "Member", "MemberState", "SwimCore"]
