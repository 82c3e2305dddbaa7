"""`stchat serve` end to end: a real server process on 127.0.0.1, driven by the official `openai` client.

The model is the tiny synthetic 4B-like one with a 4096-token context (`long_context_bundle`:
greedy, it runs for seconds, so the disconnect test acts while it surely still runs). Expected
answers come from the runtime itself in another process (`reference_answer`), so the server
must add nothing and drop nothing.
"""
from __future__ import annotations

import json
import re
import threading

import openai
import pytest

from serve_process import ServerProcess, long_context_bundle
from test_cli_ask import reference_answer

HELLO = [{"role": "user", "content": "Hello"}]
N = 24
LONG = 4000  # tokens: a greedy reply that runs for seconds unless cancelled


@pytest.fixture(scope="module")
def bundle():
    return long_context_bundle()


@pytest.fixture(scope="module")
def server(bundle):
    process = ServerProcess(bundle)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def expected(bundle) -> str:
    return reference_answer(bundle, "Hello", N)


def _chat(server, **options):
    return server.client().chat.completions.create(model="tiny-serve", messages=options.pop("messages", HELLO),
                                                    **options)


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list()] == ["tiny-serve"]
    assert server.client().models.retrieve("tiny-serve").id == "tiny-serve"
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_chat_answers_what_the_runtime_answers(server, expected):
    reply = _chat(server, temperature=0, max_tokens=N)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == N
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + N


def test_streamed_chat_is_the_same_text_with_usage_last(server, expected):
    chunks = list(_chat(server, temperature=0, max_completion_tokens=N, stream=True,
                        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == N


def test_seed_makes_sampling_repeatable(server):
    def sample(seed):
        return _chat(server, temperature=1.0, seed=seed, max_tokens=16,
                     extra_body={"top_k": 0}).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_follow_up_turn_prefills_only_its_new_tokens(server):
    messages = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Tell me a story"}]
    first = _chat(server, messages=messages, temperature=0, max_tokens=N)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And then?"}]
    second = _chat(server, messages=messages, temperature=0, max_tokens=N)
    held = first.usage.prompt_tokens + first.usage.completion_tokens  # the cache after the first turn
    assert second.usage.prompt_tokens_details.cached_tokens == held
    assert second.usage.prompt_tokens > held


def test_completions_take_a_raw_prompt(server):
    client = server.client()
    whole = client.completions.create(model="tiny-serve", prompt="Once upon a time", temperature=0, max_tokens=8)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 8
    streamed = client.completions.create(model="tiny-serve", prompt="Once upon a time", temperature=0,
                                         max_tokens=8, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


@pytest.mark.parametrize("body, param", [
    ({"messages": HELLO, "temperature": "hot"}, "temperature"),
    ({"messages": HELLO, "top_p": 1.5}, "top_p"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "n": 2}, "n"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": HELLO, "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": "Hello"}, "messages"),
])
def test_bad_requests_get_openai_shaped_400s_naming_the_field(server, body, param):
    with pytest.raises(openai.BadRequestError) as raised:
        server.client().chat.completions.create(model="tiny-serve", **body)
    assert raised.value.status_code == 400
    error = raised.value.body
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_json_unknown_routes_and_models(server):
    status, _, body = server.request("POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, _, body = server.request("GET", "/v1/nowhere")
    assert status == 404 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    status, _, body = server.request("GET", "/v1/chat/completions")
    assert status == 405 and "error" in json.loads(body)
    with pytest.raises(openai.NotFoundError) as raised:
        server.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert raised.value.body["code"] == "model_not_found" and "gpt-4o" in raised.value.body["message"]


def test_unknown_fields_are_ignored(server, expected):
    reply = _chat(server, temperature=0, max_tokens=N, user="someone", presence_penalty=0,
                  extra_body={"no_such_field": {"a": 1}})
    assert reply.choices[0].message.content == expected


def test_a_prompt_longer_than_the_context_is_a_400_naming_both_lengths(server):
    with pytest.raises(openai.BadRequestError) as raised:
        _chat(server, messages=[{"role": "user", "content": "many words " * 3000}], max_tokens=4)
    found = re.search(r"(\d+) tokens long but the context holds (\d+)", raised.value.body["message"])
    assert found and int(found.group(1)) > 4096 and int(found.group(2)) == 4096
    assert raised.value.body["code"] == "context_length_exceeded"


def test_raw_sse_framing(server):
    status, headers, body = server.request("POST", "/v1/chat/completions", {
        "messages": HELLO, "temperature": 0, "max_tokens": 5, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["choices"][0]["delta"] == {}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) >= 1


def test_one_log_line_per_request(server):
    start = len(server.lines)
    server.request("GET", "/health")
    _chat(server, temperature=0, max_tokens=3)
    server.request("POST", "/v1/completions", {"prompt": ""})
    assert server.wait_for_line(lambda line: line.startswith("POST /v1/completions"), start=start)
    logged = [line for line in server.lines[start:] if not line.startswith("stchat:")]
    logged = logged[logged.index(next(line for line in logged if line.startswith("GET /health"))):]  # an
    # earlier test's line may land after `start`: a line is written once its response has been sent
    assert len(logged) == 3
    assert re.fullmatch(r"GET /health 200 \d+\.\d{3}s", logged[0])
    assert re.fullmatch(r"POST /v1/chat/completions 200 \d+\+3 tokens( \(\d+ cached\))? \d+\.\d{3}s", logged[1])
    assert re.fullmatch(r"POST /v1/completions 400 \d+\.\d{3}s", logged[2])


def test_a_client_leaving_mid_stream_cancels_its_generation(server, expected):
    start = len(server.lines)
    stream = _chat(server, temperature=0, max_tokens=LONG, stream=True)
    for _, _ in zip(range(3), stream):
        pass
    stream.close()
    line = server.wait_for_line(lambda text: "client disconnected" in text, start=start)
    assert line, server.stderr
    generated = int(re.search(r"\+(\d+) tokens", line).group(1))
    assert 0 < generated < LONG  # cut short, not run to the end
    assert _chat(server, temperature=0, max_tokens=N).choices[0].message.content == expected  # next one served


def test_a_client_leaving_before_its_whole_reply_cancels_it(server):
    start = len(server.lines)
    server.send_only("/v1/chat/completions", {"messages": HELLO, "temperature": 0, "max_tokens": LONG}).close()
    line = server.wait_for_line(lambda text: "client disconnected" in text, start=start)
    assert line, server.stderr
    tokens = re.search(r"\+(\d+) tokens", line)  # absent if it left before its job started
    assert tokens is None or int(tokens.group(1)) < LONG


def test_concurrent_requests_are_served_one_at_a_time_and_all_answered(server, expected):
    answers, errors = [], []

    def ask():
        try:
            answers.append(_chat(server, temperature=0, max_tokens=N).choices[0].message.content)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors and answers == [expected] * 3
