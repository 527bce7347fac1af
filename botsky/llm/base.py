"""The model contract: one JSON-returning completion, whatever the vendor.

Backends implement only ``complete_json``; prompt building and answer checking live in
``botsky.llm.reply`` so that every backend (and ``botsky.testing.FakeModel``) is held to the same
rules. A backend retries transient failures itself (tenacity, bounded) and translates vendor
exceptions once: ``ModelUnavailable`` when the bound is spent on 429/5xx/timeouts,
``ModelError`` for failures retrying cannot fix (4xx, refusal, unparseable answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["Checkable", "Completion", "Model", "Price", "Usage"]


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call cost: tokens as the vendor reported them, dollars from the price table."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Completion:
    """A parsed JSON object from the model, and what it cost."""

    data: dict[str, Any]
    usage: Usage
    raw: str = ""


@runtime_checkable
class Model(Protocol):
    """A chat model that answers with one JSON object matching ``schema``."""

    provider: str
    model: str

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        """Ask for a JSON object matching ``schema`` (a JSON Schema object)."""

    async def aclose(self) -> None:
        """Release the HTTP client."""


@runtime_checkable
class Checkable(Protocol):
    """A model whose endpoint can be checked without paying for a completion."""

    async def check(self, timeout_s: float) -> bool:
        """Ask the endpoint something free (its list of models) within ``timeout_s``.

        True once the server answered and did not refuse the key; False when there is nothing
        to check (a wrapper around a model without an endpoint). Raises ``ModelUnavailable``
        when nothing answered (refused connection, unknown host, timeout) and
        ``ModelAccessError`` when the key was refused (401, 403). Any other answer (a server
        without the models route, a 5xx) counts as reachable: the calls themselves will tell.
        """
