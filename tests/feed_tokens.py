"""Service JWTs signed like a PDS signs them (ES256K, low-S, compact), for the feed's tests.

``Signer`` holds one secp256k1 key per DID and answers key look-ups like a DID document would
(``did:key`` of the public key), so ``botsky.feed.auth.DidKeys(resolve=signer.resolve)`` checks
real signatures without a PLC directory.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
from atproto_crypto.did import format_did_key
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = ["Signer", "b64url"]

_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Signer:
    """Per-DID secp256k1 keys; ``token`` mints a service JWT, ``resolve`` serves the keys."""

    def __init__(self) -> None:
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.lookups = 0

    def key(self, did: str) -> ec.EllipticCurvePrivateKey:
        if did not in self.keys:
            self.keys[did] = ec.generate_private_key(ec.SECP256K1())
        return self.keys[did]

    def did_key(self, did: str) -> str:
        raw = (
            self.key(did)
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        return format_did_key("ES256K", raw)

    async def resolve(self, did: str, fresh: bool) -> str:
        self.lookups += 1
        if did not in self.keys:
            raise LookupError(f"no DID document for {did}")
        return self.did_key(did)

    def token(
        self,
        iss: str,
        aud: str,
        lxm: str | None,
        *,
        exp_in: int = 60,
        header: dict[str, Any] | None = None,
        sign_as: str | None = None,
        **extra: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iat": now, "iss": iss, "aud": aud, "exp": now + exp_in}
        if lxm is not None:
            payload["lxm"] = lxm
        payload.update(extra)
        head = header or {"typ": "JWT", "alg": "ES256K"}
        signing_input = f"{b64url(orjson.dumps(head))}.{b64url(orjson.dumps(payload))}"
        der = self.key(sign_as or iss).sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        s = min(s, _ORDER - s)  # low-S, as atproto requires
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{b64url(sig)}"
