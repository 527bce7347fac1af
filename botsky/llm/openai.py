"""OpenAI Chat Completions backend; also serves ``openai_compatible`` servers.

vLLM, Ollama, llama.cpp's server and OpenRouter speak the same API at another ``base_url``, but
differ in what they enforce, hence ``structured_output``:

- ``json_schema``: ``response_format`` with a strict JSON schema (OpenAI, vLLM, recent Ollama);
- ``json_object``: JSON mode, the server guarantees an object but not its keys;
- ``none``: no ``response_format``; the schema goes into the prompt and the answer is parsed
  leniently (``parse_json_object``).

Whatever the mode, the answer goes through the same lenient parser, so a server that wraps its
JSON in a Markdown fence still works; ``reply.write_reply`` checks the keys.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Literal

import httpx2
import openai

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

__all__ = ["OpenAIModel"]

StructuredOutput = Literal["json_schema", "json_object", "none"]


class OpenAIModel:
    """A chat model behind the OpenAI Chat Completions API (``openai`` or ``openai_compatible``)."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        provider: str = "openai",
        temperature: float = 0.7,
        max_tokens: int = 400,
        structured_output: StructuredOutput = "json_schema",
        price: Price = Price(),  # noqa: B008 - Price is frozen, sharing the default is safe
        timeout: float = 30.0,
        max_attempts: int = 4,
        http_client: httpx2.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self.model = model
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._structured_output = structured_output
        self._price = price
        self._max_attempts = max_attempts
        self._sleep = sleep
        options: dict[str, Any] = {}
        if base_url:
            # Only when given: the SDK falls back to OPENAI_BASE_URL, then to api.openai.com.
            options["base_url"] = base_url
        if http_client is not None:
            options["http_client"] = http_client
        # max_retries=0: botsky retries (see _retry.py) so the bound and the accounting are ours.
        self._client = openai.AsyncOpenAI(
            api_key=api_key, max_retries=0, timeout=timeout, **options
        )

    async def aclose(self) -> None:
        """Close the HTTP client (also one passed in as ``http_client``)."""
        await self._client.close()

    async def check(self, timeout_s: float) -> bool:
        """List the server's models (``GET /models``, free) within ``timeout_s``: raises
        ``ModelUnavailable`` when nothing answers, ``ModelAccessError`` for a refused key."""
        where = str(self._client.base_url).rstrip("/")
        try:
            await self._client.models.list(timeout=timeout_s)
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise ModelAccessError(
                    f"{where} refused the API key (HTTP {exc.status_code})"
                ) from exc
        except openai.APITimeoutError as exc:
            raise ModelUnavailable(f"{where} did not answer within {timeout_s:g} s") from exc
        except openai.APIConnectionError as exc:
            raise ModelUnavailable(f"{where} is not reachable ({connection_failure(exc)})") from exc
        return True

    async def complete_json(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> Completion:
        """Ask for one JSON object matching ``schema``; retry transient failures."""
        request = self._request(system=system, user=user, schema=schema, schema_name=schema_name)
        started = time.perf_counter()
        completion, attempts = await call_with_retry(
            lambda: self._attempt(request), max_attempts=self._max_attempts, sleep=self._sleep
        )
        latency_ms = (time.perf_counter() - started) * 1000.0
        data, raw = _answer(completion)
        prompt_tokens = completion.usage.prompt_tokens if completion.usage else 0
        completion_tokens = completion.usage.completion_tokens if completion.usage else 0
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=self._price.cost(prompt_tokens, completion_tokens),
            latency_ms=latency_ms,
            attempts=attempts,
        )
        return Completion(data=data, usage=usage, raw=raw)

    def _request(
        self, *, system: str, user: str, schema: dict[str, Any], schema_name: str
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "temperature": self._temperature}
        # OpenAI deprecated max_tokens for max_completion_tokens (reasoning models reject the
        # old name), while several compatible servers know only the old name.
        tokens_param = "max_completion_tokens" if self.provider == "openai" else "max_tokens"
        request[tokens_param] = self._max_tokens
        if self._structured_output == "json_schema":
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            }
        else:
            # JSON mode is rejected unless the messages say "JSON", and without any
            # response_format the prompt is all the model has: spell out the schema.
            system = (
                f"{system}\n\nAnswer with only a JSON object matching this JSON schema:\n"
                f"{json.dumps(schema, ensure_ascii=False)}"
            )
            if self._structured_output == "json_object":
                request["response_format"] = {"type": "json_object"}
        request["messages"] = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        return request

    async def _attempt(self, request: dict[str, Any]) -> Any:
        try:
            return await self._client.chat.completions.create(**request)
        except openai.APIStatusError as exc:
            # A 429 for an exhausted balance will not clear by waiting.
            if exc.code == "insufficient_quota":
                raise ModelAccessError(f"HTTP {exc.status_code}: {exc.message}") from exc
            raise status_failure(exc.status_code, exc.response.headers, exc.message) from exc
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise Transient(f"{type(exc).__name__}: {connection_failure(exc)}") from exc
        except openai.OpenAIError as exc:
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc


def _answer(completion: Any) -> tuple[dict[str, Any], str]:
    """The JSON object in the first choice, or ModelError for a refusal or a broken answer."""
    if not completion.choices:
        raise ModelError("no choices in the answer")
    choice = completion.choices[0]
    message = choice.message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise ModelError(f"refused: {refusal}")
    if choice.finish_reason == "content_filter":
        raise ModelError("refused: content_filter")
    raw = message.content or ""
    try:
        return parse_json_object(raw), raw
    except ModelError:
        if choice.finish_reason == "length":
            raise ModelError("unparseable answer: cut off at max_tokens") from None
        raise
