"""Reading OpenAI request bodies: what each field means here, checked before any work is queued.

Fields this server does not know are ignored, as the OpenAI API's clients expect (they send
`user`, `metadata`, `presence_penalty`...). Fields that would change what the answer means
and that it cannot honour (`n` > 1, tools, JSON mode, images, log-probabilities) are refused
with a 400 naming them, rather than silently answering something else. Sampling values are
range-checked by `runtime.SamplingParams` itself, one field at a time so the error names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from runtime import SamplingParams

from .errors import bad_request, unsupported

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4  # OpenAI's limit on stop sequences
# request field -> SamplingParams field (top_k, min_p, repetition_penalty as llama.cpp / vLLM name them)
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                   "repetition_penalty": "repetition_penalty", "repeat_penalty": "repetition_penalty",
                   "seed": "seed"}


@dataclass
class GenerationRequest:
    model: str | None
    messages: list[dict] | None = None  # chat: [{"role", "content"}] with plain-text content
    prompt: str | None = None           # completions: the raw prompt
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None       # None: until the context is full
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def _typed(body: dict, name: str, kinds: tuple, what: str):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise bad_request(f"'{name}' must be {what}, got {type(value).__name__} {value!r}"[:300], param=name,
                          code="invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"'{name}' must be a finite number", param=name, code="invalid_value")
    return value


def _common(body: dict) -> GenerationRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = _typed(body, "model", (str,), "a string")
    count = _typed(body, "n", (int,), "an integer")
    if count is not None and count != 1:
        raise unsupported("n", "more than one choice per request")
    chosen = {}
    for name, target in SAMPLING_FIELDS.items():
        kinds = (int,) if target in ("top_k", "seed") else (int, float)
        value = _typed(body, name, kinds, "an integer" if kinds == (int,) else "a number")
        if value is None:
            continue
        try:
            SamplingParams(**{target: value})
        except ValueError as error:
            raise bad_request(f"'{name}': {error}", param=name, code="invalid_value") from None
        chosen[target] = value
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _typed(body, limit_name, (int,), "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"'{limit_name}' must be at least 1, got {max_tokens}", param=limit_name,
                          code="invalid_value")
    stream = bool(_typed(body, "stream", (bool,), "a boolean"))
    options = _typed(body, "stream_options", (dict,), "an object") or {}
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise bad_request("'stream_options.include_usage' must be a boolean", param="stream_options.include_usage",
                          code="invalid_type")
    return GenerationRequest(model=model, sampling=SamplingParams(**chosen), max_tokens=max_tokens,
                             stop=_stop(body), stream=stream, include_usage=bool(include_usage))


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    if len(stops) > MAX_STOP:
        raise bad_request(f"'stop' holds at most {MAX_STOP} sequences, got {len(stops)}", param="stop",
                          code="invalid_value")
    return tuple(s for s in stops if s)


def _text_content(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{where}' must be a string or a list of content parts", param=where, code="invalid_type")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            what = {"image_url": "image input", "input_audio": "audio input", "file": "file input"}.get(
                kind, f"content part of type {kind!r}")
            raise unsupported(f"{where}[{j}]", what)
        if not isinstance(part.get("text"), str):
            raise bad_request(f"'{where}[{j}].text' must be a string", param=f"{where}[{j}].text", code="invalid_type")
        texts.append(part["text"])
    return "".join(texts)


def parse_chat(body: dict) -> GenerationRequest:
    """A `POST /v1/chat/completions` body."""
    request = _common(body)
    for name in ("tools", "functions"):
        if body.get(name):
            raise unsupported(name, "tool and function calling")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict)
                                        or response_format.get("type", "text") != "text"):
        raise unsupported("response_format", "a response format other than text")
    if body.get("logprobs"):
        raise unsupported("logprobs", "returning log-probabilities")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or []):
        raise unsupported("audio" if body.get("audio") is not None else "modalities", "audio output")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages", param="messages",
                          code="invalid_type" if messages is not None else "missing_required_parameter")
    request.messages = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"'{where}' must be an object with 'role' and 'content'", param=where, code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}"[:300],
                              param=f"{where}.role", code="invalid_value")
        if message.get("tool_calls"):
            raise unsupported(f"{where}.tool_calls", "tool calling")
        content = message.get("content")
        if content is None and role != "assistant":
            raise bad_request(f"'{where}.content' is missing", param=f"{where}.content",
                              code="missing_required_parameter")
        text = "" if content is None else _text_content(content, f"{where}.content")
        request.messages.append({"role": ROLES[role], "content": text})
    return request


def parse_completion(body: dict) -> GenerationRequest:
    """A `POST /v1/completions` body: one raw prompt, no chat template."""
    request = _common(body)
    if (body.get("best_of") or 1) != 1:
        raise unsupported("best_of", "more than one candidate")
    if body.get("echo"):
        raise unsupported("echo", "echoing the prompt")
    if body.get("logprobs") is not None:
        raise unsupported("logprobs", "returning log-probabilities")
    if body.get("suffix"):
        raise unsupported("suffix", "a suffix (fill-in-the-middle)")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise unsupported("prompt", "a list of prompts or of token ids")
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", param="prompt",
                          code="invalid_type" if prompt is not None else "missing_required_parameter")
    request.prompt = prompt
    return request
