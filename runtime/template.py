"""Rendering a conversation to prompt text with the model's own Jinja chat template.

Checkpoints ship their chat template as Jinja source (`tokenizer_config.json` or the GGUF key
`tokenizer.chat_template`). It is data from a download, so it runs in jinja2's immutable
sandbox, configured as Hugging Face `transformers` configures it (trim_blocks, lstrip_blocks,
loop controls, a `raise_exception` helper, a `tojson` that keeps non-ASCII text) so templates
written for it render the same here. Any failure becomes one `BundleError` line.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import BundleError

# ChatML, the format SmallThinker (a Qwen2-tokenizer model) is trained on; used when a bundle
# carries no template of its own.
DEFAULT_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


class TemplateRaised(jinja2.TemplateError):
    """A template called `raise_exception(message)`."""


def _raise_exception(message: str):
    raise TemplateRaised(str(message))


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False):
    """Plain `json.dumps`: jinja2's own tojson escapes <, >, & and ' for HTML, which a prompt
    must not see."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, jinja2.TemplateSyntaxError) and error.lineno:
        text += f" (line {error.lineno})"
    return text


def render_chat(template: str | None, messages: list[dict], *, add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **extra) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]).

    `template` None means `DEFAULT_CHATML`. `extra` reaches the template as variables
    (e.g. `tools=...`). Raises `BundleError("chat template failed: ...")` on any failure."""
    source = DEFAULT_CHATML if template is None else template
    try:
        compiled = _compile(source)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except BundleError:
        raise
    except Exception as error:  # the template is untrusted data: any failure is its fault
        raise BundleError(f"chat template failed: {_one_line(error)}") from None
