"""Access: who is calling, what they own, and what they may spend."""

from parley.access.principal import ADMIN, OPEN, KeyLimits, Principal, principal_of

__all__ = ["ADMIN", "OPEN", "KeyLimits", "Principal", "principal_of"]
