"""Identity: DID → handle, for the ``@handle`` text of a mention.

The contract is in ``base``; ``MemoryIdentity`` (``memory``) learns handles from the stream and
configuration, ``ResolvingIdentity`` (``resolving``) resolves and verifies them on the network.
"""

from __future__ import annotations

from botsky.identity.base import Identity
from botsky.identity.memory import MemoryIdentity
from botsky.identity.resolving import ResolvingIdentity, VerifyMethod

__all__ = ["Identity", "MemoryIdentity", "ResolvingIdentity", "VerifyMethod"]
