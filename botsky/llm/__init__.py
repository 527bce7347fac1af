"""Models: one contract (``base.Model``), one task (``reply``), interchangeable backends.

``make_model`` builds a backend from a bot's config. Vendor SDKs are imported only when a bot
uses them, so a deployment of template bots (or of one vendor) needs no other SDK.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from botsky.config import BotConfig, SimEngineConfig
from botsky.errors import ConfigError
from botsky.llm.base import Completion, Model, Price, Usage
from botsky.llm.reply import (
    REPLY_SCHEMA,
    Candidate,
    Draft,
    ReplyRequest,
    build_prompt,
    write_reply,
)
from botsky.llm.template import TemplateWriter

if TYPE_CHECKING:
    import httpx2

__all__ = [
    "REPLY_SCHEMA",
    "Candidate",
    "Completion",
    "Draft",
    "Model",
    "Price",
    "ReplyRequest",
    "TemplateWriter",
    "Usage",
    "build_prompt",
    "make_model",
    "write_reply",
]

# Local servers (Ollama, vLLM, llama.cpp) ignore the key, but the SDK needs one; passing our own
# placeholder also stops the SDK from sending OPENAI_API_KEY to a third-party base_url.
_NO_KEY = "not-needed"


def _backend(module: str, sdk: str, provider: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != sdk:
            raise
        raise ConfigError(
            f"provider {provider!r} needs the {sdk!r} package: pip install {sdk}"
        ) from exc


def make_model(
    bot: BotConfig | SimEngineConfig,
    *,
    api_key: str | None,
    price: Price,
    http_client: httpx2.AsyncClient | None = None,
) -> Model:
    """Build the model backend for ``bot`` (a bot, or the simulation's user model);
    ``ConfigError`` if a key or an SDK is missing.

    ``api_key`` is the resolved secret (the composition root reads ``bot.default_key_env``).
    """
    who = f"bot {bot.name!r}" if isinstance(bot, BotConfig) else "sim.engine"
    if bot.provider is None or bot.model is None:
        raise ConfigError(f"{who}: set provider and model")
    if bot.provider == "template":
        return TemplateWriter(bot.model)
    key = api_key
    if not key:
        env = bot.default_key_env
        if env:
            raise ConfigError(f"{who} ({bot.provider}): set the environment variable {env}")
        key = _NO_KEY  # openai_compatible without api_key_env: a keyless local server
    if bot.provider == "anthropic":
        module = _backend("botsky.llm.anthropic", "anthropic", bot.provider)
        model: Model = module.AnthropicModel(
            bot.model,
            api_key=key,
            base_url=bot.base_url,
            # Only a temperature the bot sets itself: the 2.x Messages API dropped the parameter.
            temperature=bot.temperature if "temperature" in bot.model_fields_set else None,
            max_tokens=bot.max_tokens,
            price=price,
            http_client=http_client,
        )
        return model
    module = _backend("botsky.llm.openai", "openai", bot.provider)
    model = module.OpenAIModel(
        bot.model,
        api_key=key,
        base_url=bot.base_url,
        provider=bot.provider,
        temperature=bot.temperature,
        max_tokens=bot.max_tokens,
        structured_output=bot.structured_output,
        price=price,
        http_client=http_client,
    )
    return model
