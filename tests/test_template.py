"""Chat templates: HF-compatible rendering in a sandbox, one-line errors."""
from __future__ import annotations

import pytest

from runtime.errors import BundleError
from runtime.template import DEFAULT_CHATML, _compile, render_chat

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi 日本"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Again"},
]

# Block tags on their own indented lines, as real templates write them: lstrip_blocks removes
# the indentation before a block tag and trim_blocks the newline after it; expressions keep both.
INDENTED = """{% for message in messages %}
    {% if message['role'] == 'user' %}
{{ message['content'] }}
    {% else %}
  [{{ message['role'] }}]
    {% endif %}
{% endfor %}
"""


def test_default_chatml_renders_exactly():
    assert render_chat(DEFAULT_CHATML, CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi 日本<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = render_chat(None, CONVERSATION[:2], add_generation_prompt=False)
    assert no_prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 日本<|im_end|>\n"


def test_whitespace_control_matches_hugging_face():
    assert render_chat(INDENTED, CONVERSATION) == "  [system]\nHi 日本\n  [assistant]\nAgain\n"


def test_variables_tojson_and_loop_controls():
    template = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
                "{{ m | tojson }}{% endfor %}{{ tools | tojson(indent=1) }}{{ eos_token }}")
    out = render_chat(template, CONVERSATION[:2], bos_token="<s>", eos_token="</s>", tools=[{"name": "a<b"}])
    assert out == '<s>{"role": "user", "content": "Hi 日本"}[\n {\n  "name": "a<b"\n }\n]</s>'


def test_raise_exception_becomes_a_one_line_bundle_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate\\nuser/assistant') }}{% endif %}"
    with pytest.raises(BundleError, match=r"^chat template failed: Conversation roles must alternate user/assistant$"):
        render_chat(template, CONVERSATION)
    assert render_chat(template, CONVERSATION[1:]) == ""


@pytest.mark.parametrize("template, fragment", [
    ("{% for m in messages %}", "line 1"),  # syntax error: unclosed block
    ("{{ messages[0].content + 1 }}", "chat template failed: "),  # TypeError inside the template
    ("{{ messages.pop() }}", "chat template failed: "),  # the sandbox forbids mutation
    ("{{ ''.__class__.__mro__ }}", "chat template failed: "),  # and private attributes
])
def test_template_failures_are_bundle_errors(template, fragment):
    with pytest.raises(BundleError) as caught:
        render_chat(template, [dict(m) for m in CONVERSATION])
    message = str(caught.value)
    assert message.startswith("chat template failed: ") and fragment in message and "\n" not in message


def test_messages_are_not_modified_and_templates_are_cached():
    messages = [dict(m) for m in CONVERSATION]
    render_chat(None, messages)
    assert messages == CONVERSATION
    assert _compile(DEFAULT_CHATML) is _compile(DEFAULT_CHATML)
