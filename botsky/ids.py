"""Identifiers botsky makes itself: TIDs, and CID-shaped names for records no server hashed.

- ``tid(time_us, clock_id)``: the atproto timestamp identifier (record keys, revisions), 64 bits
  (a zero bit, 53 bits of microseconds since the epoch, a 10-bit clock id) written as 13
  characters of ``BASE32_SORTABLE``, most significant first, so TIDs sort like their times.
  The one TID encoder: bot replies' record keys (``posting.reply_rkey``), the simulated
  network's posts and the test fakes all use it.
- ``synthetic_cid(seed)``: a deterministic string shaped like a dag-cbor CIDv1 (``bafyrei``
  and 52 base32 characters) for records that exist only in the simulation or a test; not a
  hash of the record, and never sent to a server.

Plain string work with no imports beyond the standard library: decoders, the simulation and the
test fakes may all import it cheaply (``syntax`` loads the atproto SDK's models).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["BASE32_SORTABLE", "synthetic_cid", "tid"]

BASE32_SORTABLE: Final = "234567abcdefghijklmnopqrstuvwxyz"
"""atproto's base32-sortable alphabet: in ASCII order, so encoded numbers sort as strings."""


def tid(time_us: int, clock_id: int = 0) -> str:
    """The TID of ``time_us`` with ``clock_id`` (its low 10 bits) as the last bits."""
    n = (time_us << 10) | (clock_id & 0x3FF)
    return "".join(BASE32_SORTABLE[(n >> (5 * i)) & 31] for i in range(12, -1, -1))


def synthetic_cid(seed: str) -> str:
    """A CID-shaped string determined by ``seed`` (see the module docstring)."""
    bits = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    return "bafyrei" + "".join(BASE32_SORTABLE[(bits >> (5 * i)) & 31] for i in range(52))
