"""Anthropic Messages backend.

Structured output is one tool whose ``input_schema`` is the schema, forced with
``tool_choice={"type": "tool", "name": ...}``: the answer arrives as the ``tool_use`` block's
already-parsed ``input``. We do not set the tool's ``strict`` flag, which not every model
accepts; ``reply.write_reply`` validates the keys anyway.

The Messages API of anthropic 2.x has no sampling parameters (``temperature`` is gone from
``messages.create``), so a temperature is sent only when one is given explicitly, through
``extra_body``; a model that rejects it answers 400, which surfaces as ``ModelError``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anthropic
import httpx2

from botsky.errors import ModelAccessError, ModelError, ModelUnavailable
from botsky.llm._retry import (
    Sleep,
    Transient,
    call_with_retry,
    connection_failure,
    status_failure,
)
from botsky.llm.base import Completion, Price, Usage
from botsky.llm.parse import parse_json_object

__all__ = ["AnthropicModel"]


class AnthropicModel:
    """A Claude model behind the Anthropic Messages API."""

    provider = "anthropic"

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int = 400,
        price: Price = Price(),  # noqa: B008 - Price is frozen, sharing the default is safe
        timeout: float = 30.0,
        max_attempts: int = 4,
        http_client: httpx2.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.model = model
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._price = price
        self._max_attempts = max_attempts
        self._sleep = sleep
        # max_retries=0: botsky retries (see _retry.py) so the bound and the accounting are ours.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        """Close the HTTP client (also one passed in as ``http_client``)."""
        await self._client.close()

    async def check(self, timeout_s: float) -> bool:
        """List the models (``GET /v1/models``, free) within ``timeout_s``: raises
        ``ModelUnavailable`` when nothing answers, ``ModelAccessError`` for a refused key."""
        where = str(self._client.base_url).rstrip("/")
        try:
            await self._client.models.list(limit=1, timeout=timeout_s)
        except anthropic.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise ModelAccessError(
                    f"{where} refused the API key (HTTP {exc.status_code})"
                ) from exc
        except anthropic.APITimeoutError as exc:
            raise ModelUnavailable(f"{where} did not answer within {timeout_s:g} s") from exc
        except anthropic.APIConnectionError as exc:
            raise ModelUnavailable(f"{where} is not reachable ({connection_failure(exc)})") from exc
        return True

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        """Ask for one JSON object matching ``schema`` via a forced tool call."""
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self._max_tokens,
            "system": system,
            "messages": [{"role": "user", "content": user}],
            "tools": [
                {
                    "name": schema_name,
                    "description": "Give your answer by calling this tool.",
                    "input_schema": schema,
                }
            ],
            "tool_choice": {"type": "tool", "name": schema_name},
        }
        if self._temperature is not None:
            request["extra_body"] = {"temperature": self._temperature}
        started = time.perf_counter()
        message, attempts = await call_with_retry(
            lambda: self._attempt(request), max_attempts=self._max_attempts, sleep=self._sleep
        )
        latency_ms = (time.perf_counter() - started) * 1000.0
        data, raw = _answer(message, schema_name)
        u = message.usage
        # input_tokens excludes cached prompt tokens; they were still sent, so count them.
        prompt_tokens = (
            u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0)
        )
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=u.output_tokens,
            cost_usd=self._price.cost(prompt_tokens, u.output_tokens),
            latency_ms=latency_ms,
            attempts=attempts,
        )
        return Completion(data=data, usage=usage, raw=raw)

    async def _attempt(self, request: dict[str, Any]) -> Any:
        try:
            return await self._client.messages.create(**request)
        except anthropic.APIStatusError as exc:
            raise status_failure(exc.status_code, exc.response.headers, exc.message) from exc
        except anthropic.APIConnectionError as exc:  # includes APITimeoutError
            raise Transient(f"{type(exc).__name__}: {connection_failure(exc)}") from exc
        except anthropic.AnthropicError as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc


def _answer(message: Any, tool_name: str) -> tuple[dict[str, Any], str]:
    """The tool call's input; else a JSON object in the text; else ModelError."""
    if message.stop_reason == "refusal":
        raise ModelError("refused")
    for block in message.content:
        if block.type == "tool_use" and block.name == tool_name and isinstance(block.input, dict):
            return dict(block.input), json.dumps(block.input, ensure_ascii=False)
    # A forced tool call should always come back as tool_use; a proxy or an old model may
    # answer in text instead, which is still worth a lenient parse.
    raw = "".join(block.text for block in message.content if block.type == "text")
    try:
        return parse_json_object(raw), raw
    except ModelError:
        if message.stop_reason == "max_tokens":
            raise ModelError("unparseable answer: cut off at max_tokens") from None
        raise
