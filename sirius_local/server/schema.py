"""The OpenAI request bodies the server accepts, and how each maps onto LLM.create_completion's keywords.

Fields declare shape (JSON types) and the OpenAI-side defaults only; every range is checked once, by the LLM
(LLM._params), whose InvalidParameterError the server answers with a 400. A field left out of the request is left
out of the call, so the engine's own defaults apply. Fields the server does not know are ignored, as llama.cpp's
server does; OpenAI features it cannot honour are refused (UNSUPPORTED) rather than silently dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict

from ..errors import InvalidParameterError
from ..llm import GenerationOptions

# Sampling when the request names none: llama.cpp's server defaults (OpenAI's own temperature default, 1.0 over
# the full vocabulary, is not a useful default for a small local model).
DEFAULT_TEMPERATURE = 0.8
# OpenAI's documented default for /v1/completions; chat runs to the end of the context unless told.
DEFAULT_COMPLETION_MAX_TOKENS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _Generation(BaseModel):
    """What /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    stop: Union[str, List[str], None] = None
    seed: Optional[int] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    # Refused unless at their neutral value (UNSUPPORTED).
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict] = None
    logprobs: Any = None
    # llama.cpp's server extensions.
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    ignore_eos: Optional[bool] = None
    # Sirius, under the Python API's names.
    mode: Optional[str] = None
    sparsity: Optional[str] = None
    density: Optional[float] = None
    period: Union[int, str, None] = None
    acceptance: Optional[str] = None
    threshold: Optional[float] = None
    accept_temperature: Optional[float] = None
    width: Optional[int] = None
    max_period: Optional[int] = None
    draft_vocab: Optional[int] = None

    # Keywords passed through to LLM.create_completion / create_chat_completion when the request sets them: every
    # generation option but the two with server-side defaults (temperature, max_tokens; see generation_kwargs).
    PASSED: ClassVar[tuple] = tuple(f.name for f in dataclasses.fields(GenerationOptions)
                                    if f.name not in ("temperature", "max_tokens"))

    def _unsupported(self) -> list[str]:
        bad = []
        if self.n != 1:
            bad.append(f"n={self.n} (one choice per request: send n requests)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                bad.append(f"{name}")
        if self.logit_bias:
            bad.append("logit_bias")
        if self.logprobs not in (None, False, 0):
            bad.append("logprobs")
        return bad

    def generation_kwargs(self, default_max_tokens: int | None) -> dict:
        """LLM.create_* keywords for this request (ranges are the LLM's to check)."""
        bad = self._unsupported()
        if bad:
            raise InvalidParameterError(f"not supported by sirius-local serve: {', '.join(bad)}")
        kw = {k: getattr(self, k) for k in self.PASSED if k in self.model_fields_set and getattr(self, k) is not None}
        kw["temperature"] = DEFAULT_TEMPERATURE if self.temperature is None else self.temperature
        kw["max_tokens"] = self._max_tokens(default_max_tokens)
        return kw

    def _max_tokens(self, default: int | None) -> int | None:
        return default if self.max_tokens is None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Generation):
    prompt: Union[str, List[int], List[str], List[List[int]]]
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    def _unsupported(self) -> list[str]:
        bad = super()._unsupported()
        if self.echo:
            bad.append("echo")
        if self.suffix:
            bad.append("suffix (fill-in-the-middle)")
        if self.best_of not in (None, 1):
            bad.append(f"best_of={self.best_of}")
        return bad

    def prompt_value(self) -> str | list[int]:
        """One prompt: text or token ids (a batch of several prompts is refused)."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise InvalidParameterError(f"prompt holds {len(p)} prompts: send one prompt per request")
            p = p[0]
        return p


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[ContentPart], None] = None
    name: Optional[str] = None

    def as_dict(self, i: int) -> dict:
        content = self.content
        if isinstance(content, list):
            kinds = sorted({p.type for p in content if p.type != "text"})
            if kinds:
                raise InvalidParameterError(f"messages[{i}]: content parts of type {', '.join(kinds)} are not "
                                            f"supported (text only)")
            content = "".join(p.text or "" for p in content)
        # OpenAI's newer "developer" role is the system prompt for the chat templates models ship with.
        return {"role": "system" if self.role == "developer" else self.role, "content": content or ""}


class ChatRequest(_Generation):
    messages: List[ChatMessage]
    max_completion_tokens: Optional[int] = None
    tools: Optional[list] = None
    functions: Optional[list] = None
    response_format: Optional[dict] = None

    def _unsupported(self) -> list[str]:
        bad = super()._unsupported()
        if self.tools or self.functions:
            bad.append("tools / function calling")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            bad.append(f"response_format {self.response_format.get('type')!r}")
        return bad

    def _max_tokens(self, default: int | None) -> int | None:
        # OpenAI's newer name wins over the deprecated one.
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return super()._max_tokens(default)

    def message_dicts(self) -> list[dict]:
        if not self.messages:
            raise InvalidParameterError("messages is empty: send at least one message")
        return [m.as_dict(i) for i, m in enumerate(self.messages)]
