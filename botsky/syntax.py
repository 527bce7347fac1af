"""Syntax checks for the AT Protocol identifiers botsky reads from the network.

Every ``is_valid_*`` function takes any value and answers ``True`` or ``False``; none of them
raises, because they run on untrusted record fields. ``validate(kind, value)`` raises
``ValueError`` instead, for callers that want a message. Conformance is pinned by the shared
interop vectors (``tests/data/syntax``).

Where they pass those vectors the atproto SDK's own validators are used (DID, handle, NSID,
record key, TID). The others are written here, each with the reason beside it.
"""

from __future__ import annotations

import re
from calendar import isleap
from collections.abc import Callable
from typing import Any, Final

from atproto_client.models import string_formats as _sdk
from atproto_core.nsid import validate_nsid as _sdk_validate_nsid
from pydantic import TypeAdapter

from botsky.events import split_at_uri

__all__ = [
    "KINDS",
    "is_valid_at_identifier",
    "is_valid_at_uri",
    "is_valid_cid",
    "is_valid_datetime",
    "is_valid_did",
    "is_valid_handle",
    "is_valid_language",
    "is_valid_nsid",
    "is_valid_record_key",
    "is_valid_tid",
    "validate",
]

# The SDK checks string formats only when a validation context opts in; a TypeAdapter with that
# context is its public way to run one check on one string.
_STRICT: Final = {"strict_string_format": True}


def _sdk_check(alias: Any) -> Callable[[str], bool]:
    adapter: TypeAdapter[str] = TypeAdapter(alias)

    def check(value: str) -> bool:
        try:
            adapter.validate_python(value, context=_STRICT)
        except ValueError:  # pydantic's ValidationError is a ValueError
            return False
        return True

    return check


_sdk_did = _sdk_check(_sdk.Did)
_sdk_record_key = _sdk_check(_sdk.RecordKey)
_sdk_tid = _sdk_check(_sdk.Tid)


def _plain(value: str) -> bool:
    """ASCII without whitespace or control characters, as every identifier here must be.

    Checked before any SDK call: the SDK's patterns end in ``$``, which in Python also matches
    before a trailing newline, so ``"did:plc:abc\\n"`` would otherwise pass.
    """
    return value.isascii() and value.isprintable() and " " not in value


def is_valid_did(value: object) -> bool:
    """A DID such as ``did:plc:z72i7hdynmk6r22z27h6tvur`` (SDK)."""
    return isinstance(value, str) and _plain(value) and _sdk_did(value)


def is_valid_handle(value: object) -> bool:
    """A handle such as ``alice.bsky.social`` (SDK)."""
    return isinstance(value, str) and _plain(value) and _sdk.is_valid_handle(value)


def is_valid_at_identifier(value: object) -> bool:
    """A DID or a handle: what may stand in the authority of an AT-URI."""
    return is_valid_did(value) or is_valid_handle(value)


def is_valid_nsid(value: object) -> bool:
    """A namespaced identifier such as ``app.bsky.feed.post`` (SDK)."""
    return isinstance(value, str) and _plain(value) and _sdk_validate_nsid(value, soft_fail=True)


def is_valid_record_key(value: object) -> bool:
    """A record key such as ``3jxtb5w2hkt2m`` or ``self`` (SDK)."""
    return isinstance(value, str) and _plain(value) and _sdk_record_key(value)


def is_valid_tid(value: object) -> bool:
    """A timestamp identifier: 13 base32-sortable characters (SDK)."""
    return isinstance(value, str) and _plain(value) and _sdk_tid(value)


_MAX_AT_URI: Final = 8 * 1024


def is_valid_at_uri(value: object) -> bool:
    """A restricted AT-URI: ``at://AUTHORITY[/COLLECTION[/RKEY]]``, no query or fragment.

    Our own: the SDK's pattern admits only ``[a-zA-Z0-9.-]`` after a DID's method, so it refuses
    authorities the DID syntax allows (``did:web:localhost%3A8080``). Composing the part
    validators keeps AT-URIs exactly as strict as the identifiers they hold.
    """
    if not isinstance(value, str) or not _plain(value) or len(value) > _MAX_AT_URI:
        return False
    parts = split_at_uri(value)
    if parts is None or not is_valid_at_identifier(parts[0]):
        return False
    _, collection, rkey = parts
    if collection is not None and not is_valid_nsid(collection):
        return False
    # A record key never holds a slash, so one in the rest refuses a fourth part too.
    return rkey is None or is_valid_record_key(rkey)


# Seconds are required, the separator is an upper-case T and the zone is Z or +hh:mm/-hh:mm:
# the intersection of RFC 3339 and ISO 8601 that the atproto spec asks for.
_DATETIME: Final = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.[0-9]+)?"
    r"(?:Z|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)
_DAYS_IN_MONTH: Final = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_valid_datetime(value: object) -> bool:
    """A datetime such as ``1985-04-12T23:20:50.123Z``, and a real instant (no month 13).

    Our own: the SDK parses with ``datetime.fromisoformat``, which cannot hold the year 0000
    that the spec allows. Semantic checks are done by hand instead; a time that normalizes to
    before 0000-01-01T00:00Z is refused, as the reference implementation does.
    """
    if not isinstance(value, str) or not _plain(value):
        return False
    match = _DATETIME.fullmatch(value)
    if match is None:
        return False
    year, month, day = int(match["y"]), int(match["mo"]), int(match["d"])
    hour, minute, second = int(match["h"]), int(match["mi"]), int(match["s"])
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return False
    days = 29 if month == 2 and isleap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= days:
        return False
    if match["sign"] is None:
        return True
    off_h, off_m = int(match["oh"]), int(match["om"])
    if off_h > 23 or off_m > 59:
        return False
    offset = off_h * 60 + off_m
    if match["sign"] == "-":
        # RFC 3339 uses -00:00 for "offset unknown", which ISO 8601 forbids.
        return offset != 0
    return (year, month, day) != (0, 1, 1) or hour * 60 + minute >= offset


# BCP 47 (RFC 5646 §2.1), except that the primary language subtag must be 2-3 lower-case
# letters, as atproto requires. The regular grandfathered tags (zh-hakka, art-lojban...) already
# fit this grammar; the irregular ones are listed below.
_LANGTAG: Final = re.compile(
    r"[a-z]{2,3}(?:-[A-Za-z]{3}){0,3}"  # language, extlang
    r"(?:-[A-Za-z]{4})?"  # script
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"  # region
    r"(?P<variants>(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*)"
    r"(?P<extensions>(?:-[0-9A-WY-Za-wy-z](?:-[A-Za-z0-9]{2,8})+)*)"
    r"(?:-[xX](?:-[A-Za-z0-9]{1,8})+)?"  # private use
    r"|[xX](?:-[A-Za-z0-9]{1,8})+"  # a private-use tag on its own
)
_IRREGULAR_GRANDFATHERED: Final = frozenset(
    {
        "en-gb-oed",
        "i-ami",
        "i-bnn",
        "i-default",
        "i-enochian",
        "i-hak",
        "i-klingon",
        "i-lux",
        "i-mingo",
        "i-navajo",
        "i-pwn",
        "i-tao",
        "i-tay",
        "i-tsu",
        "sgn-be-fr",
        "sgn-be-nl",
        "sgn-ch-de",
    }
)


def is_valid_language(value: object) -> bool:
    """A BCP 47 language tag such as ``en``, ``pt-BR`` or ``zh-Hant``.

    Our own: the SDK's pattern refuses private-use tags (``X-fr-CH``) and accepts repeated
    variants or extension singletons (``de-DE-1901-1901``), which RFC 5646 §2.2.9 makes invalid.
    """
    if not isinstance(value, str) or not _plain(value):
        return False
    if value.lower() in _IRREGULAR_GRANDFATHERED:
        return True
    match = _LANGTAG.fullmatch(value)
    if match is None:
        return False
    variants = (match["variants"] or "").lower().split("-")[1:]
    singletons = [s for s in (match["extensions"] or "").lower().split("-") if len(s) == 1]
    return len(set(variants)) == len(variants) and len(set(singletons)) == len(singletons)


# Any multibase string of 8-256 characters; decoding it is not this module's business.
_CID: Final = re.compile(r"[A-Za-z0-9+=]{8,256}")


def is_valid_cid(value: object) -> bool:
    """A CIDv1 in multibase text form (syntax only; the bytes are not decoded).

    Our own: the SDK accepts CIDv0 (``Qm...``, bare base58), which atproto does not use.
    No multibase prefix is ``Q``, so the prefix alone tells a CIDv0 apart.
    """
    return (
        isinstance(value, str)
        and _plain(value)
        and _CID.fullmatch(value) is not None
        and not value.startswith("Qm")
    )


KINDS: Final[dict[str, Callable[[object], bool]]] = {
    "did": is_valid_did,
    "handle": is_valid_handle,
    "at_identifier": is_valid_at_identifier,
    "at_uri": is_valid_at_uri,
    "nsid": is_valid_nsid,
    "record_key": is_valid_record_key,
    "tid": is_valid_tid,
    "datetime": is_valid_datetime,
    "language": is_valid_language,
    "cid": is_valid_cid,
}


def validate(kind: str, value: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a valid ``kind`` (a key of ``KINDS``)."""
    check = KINDS.get(kind)
    if check is None:
        raise ValueError(f"unknown identifier kind {kind!r}; known: {', '.join(KINDS)}")
    if not check(value):
        raise ValueError(f"invalid {kind}: {value!r:.200}")
