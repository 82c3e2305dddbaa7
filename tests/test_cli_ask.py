"""`stchat ask` end to end: the real CLI in a subprocess, on tiny synthetic SmallThinker models.

Each run is `python -m stchat ask ...` with STCHAT_HOME in a temporary folder, so what is
checked is what a user's shell sees: the bytes on stdout, the lines on stderr, the exit status.
The expected answer comes from the runtime itself, run in a separate process with the same
greedy settings, so the CLI must add nothing to it and drop nothing from it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stchat.ask import parse_size

ROOT = Path(__file__).resolve().parents[1]
JSON_KEYS = {"text", "prompt_tokens", "generated_tokens", "prompt_seconds", "generation_seconds",
             "prompt_tps", "generation_tps", "load_seconds", "finish_reason", "model"}
GREEDY = ["--temp", "0", "-t", "1"]
PROMPT = "Hello"
N = 24


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("STCHAT_DEBUG", None)
    env.update(extra)
    return env


def run_cli(*args: str, input: bytes | None = None, timeout: float = 180, **env) -> subprocess.CompletedProcess:
    """`python -m stchat ARGS`; stdin is /dev/null unless `input` is given (never a TTY)."""
    return subprocess.run([sys.executable, "-m", "stchat", *args], input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, env=_env(**env), cwd=ROOT)


_REFERENCE = """
import json, sys
import runtime
bundle, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = runtime.load(bundle, threads=1)
session = runtime.ChatSession(model, sampling=runtime.SamplingParams(temperature=0.0), max_tokens=n)
text = "".join(e.text for e in session.send(prompt) if isinstance(e, runtime.TextDelta))
sys.stdout.write(json.dumps(text))
"""


def reference_answer(bundle: Path, prompt: str = PROMPT, n: int = N) -> str:
    """The greedy answer computed by the runtime directly, in its own process."""
    done = subprocess.run([sys.executable, "-c", _REFERENCE, str(bundle), prompt, str(n)],
                          capture_output=True, timeout=180, env=_env(), cwd=ROOT, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def cli_models(tmp_path_factory):
    """{gguf, bundle, long_bundle}: the tiny 4B-like model as a GGUF file and as a bundle, plus a
    bundle of the same shape with a 4096-token context (long enough to interrupt generation)."""
    from runtime import convert, synthetic

    root = tmp_path_factory.mktemp("cli-models")
    gguf = synthetic.write_gguf(synthetic.TINY_4B_LIKE, root / "tiny-4b.gguf", seed=0)
    long_spec = replace(synthetic.TINY_4B_LIKE, context_length=4096)
    long_gguf = synthetic.write_gguf(long_spec, root / "tiny-4b-long.gguf", seed=0)
    return {"gguf": gguf, "bundle": convert(gguf, root / "tiny-4b"),
            "long_bundle": convert(long_gguf, root / "tiny-4b-long")}


@pytest.fixture(scope="module")
def expected(cli_models) -> str:
    return reference_answer(cli_models["bundle"])


def _stdout_of(text: str) -> bytes:
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _error_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.startswith("stchat: error:")]


# -- no model needed --------------------------------------------------------------------------
def test_help_imports_nothing_heavy():
    done = run_cli("--help")
    assert done.returncode == 0 and b"ask" in done.stdout
    probe = ("import sys; from stchat import cli; "
             "print(sorted(m for m in ('runtime', 'numpy', 'onnxruntime', 'textual') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, env=_env(), cwd=ROOT, check=True)
    assert loaded.stdout.strip() == b"[]"


def test_ask_help_lists_the_options():
    done = run_cli("ask", "--help", COLUMNS="200")
    assert done.returncode == 0
    for option in ("--model", "--system", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                   "--seed", "--max-tokens", "--threads", "--memory", "--json", "--verbose"):
        assert option.encode() in done.stdout, option


@pytest.mark.parametrize("text, size", [("1000", 1000), ("2G", 2 << 30), ("1GiB", 1 << 30), ("512MB", 512_000_000),
                                        ("512mib", 512 << 20), ("1.5g", 3 << 29), ("64k", 65536), ("10 KB", 10_000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "1.2.3G", "5X"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("stdin", [None, b"", b"\n\n"])
def test_no_prompt_is_a_usage_error(stchat_home, stdin):
    done = run_cli("ask", input=stdin)
    assert done.returncode == 2
    assert done.stdout == b""
    assert len(_error_lines(done.stderr)) == 1


def test_blank_prompt_is_a_usage_error(stchat_home):
    assert run_cli("ask", "   ").returncode == 2


def test_unknown_model_lists_installed_ones(stchat_home, cli_models):
    shutil.copytree(cli_models["bundle"], stchat_home / "models" / "installed-one")
    done = run_cli("ask", "-m", "nosuch", PROMPT)
    assert done.returncode == 3 and done.stdout == b""
    [line] = _error_lines(done.stderr)
    assert "nosuch" in line and "installed-one" in line


def test_missing_gguf_file_is_model_not_found(stchat_home, tmp_path):
    done = run_cli("ask", "-m", str(tmp_path / "missing.gguf"), PROMPT)
    assert done.returncode == 3 and "missing.gguf" in done.stderr.decode()


def test_no_model_installed(stchat_home):
    done = run_cli("ask", PROMPT)
    assert done.returncode == 3
    assert "no model installed" in done.stderr.decode()


# -- on the synthetic model -------------------------------------------------------------------
def test_stdout_is_exactly_the_answer(stchat_home, cli_models, expected):
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "-n", str(N), PROMPT)
    assert done.returncode == 0, done.stderr.decode()
    assert expected, "the synthetic model should say something"
    assert done.stdout == _stdout_of(expected)
    if "\x1b" not in expected:
        assert b"\x1b" not in done.stdout  # no colours or cursor moves added by the CLI
    assert b"t/s" not in done.stderr and done.stderr.strip() == b""


@pytest.mark.parametrize("bad", [["--temp", "-1"], ["--top-p", "2"], ["--top-k", "-3"], ["-n", "0"],
                                 ["--memory", "lots"], ["-t", "0"], ["--seed", "x"]])
def test_bad_option_values_are_usage_errors(stchat_home, cli_models, bad):
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *bad, PROMPT)
    assert done.returncode == 2, done.stderr.decode()
    assert done.stdout == b""


def test_verbose_prints_stats_on_stderr_only(stchat_home, cli_models, expected):
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "-n", str(N), "--verbose", PROMPT)
    assert done.returncode == 0
    assert done.stdout == _stdout_of(expected)
    err = done.stderr.decode()
    assert re.search(r"^\[ Prompt: [\d.]+ t/s \| Generation: [\d.]+ t/s \]$", err, re.M), err
    for label in ("load duration:", "prompt eval count:", "prompt eval rate:", "eval count:", "eval rate:"):
        assert label in err


# -- the context -------------------------------------------------------------------------------
LONG_PROMPT = "word " * 30  # 106 tokens in the chat template of the tiny model


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_prompt_that_cannot_fit_is_refused_with_both_numbers(stchat_home, cli_models, how):
    args, env = (["--context", "64"], {}) if how == "option" else ([], {"STCHAT_CONTEXT": "64"})
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, *args, LONG_PROMPT, **env)
    assert done.returncode == 2 and done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("stchat: error: "), err
    assert "106 tokens" in err and "context of 64" in err and "--context" in err and "512" in err


def test_max_tokens_beyond_the_context_stops_when_it_is_full(stchat_home, cli_models):
    """`-n` is a most: 106 prompt tokens leave 128 - 106 positions, and the last token sampled
    is never fed back, so 23 tokens come out, finish reason "length"."""
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "--context", "128", "-n", "1000", "--json",
                   LONG_PROMPT)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["prompt_tokens"] == 106 and result["finish_reason"] in ("length", "stop")
    if result["finish_reason"] == "length":
        assert result["generated_tokens"] == 128 - 106 + 1


@pytest.mark.parametrize("bad, env", [(["--context", "513"], {}), (["--context", "0"], {}),
                                      ([], {"STCHAT_CONTEXT": "lots"})])
def test_impossible_contexts_are_usage_errors(stchat_home, cli_models, bad, env):
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *bad, PROMPT, **env)
    assert done.returncode == 2 and done.stdout == b"", done.stderr.decode()


def _json_run(cli_models, *args, input=None) -> dict:
    done = run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "-n", str(N), "--json", *args, input=input)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.count(b"\n") == 1  # one JSON object, nothing else
    return json.loads(done.stdout)


def test_json_output(stchat_home, cli_models, expected):
    result = _json_run(cli_models, PROMPT)
    assert set(result) == JSON_KEYS
    assert result["text"] == expected
    assert result["model"] == cli_models["bundle"].name
    assert result["finish_reason"] in ("stop", "length")
    assert 0 < result["generated_tokens"] <= N and result["prompt_tokens"] > 0
    for key in ("prompt_seconds", "generation_seconds", "prompt_tps", "generation_tps", "load_seconds"):
        assert isinstance(result[key], (int, float)) and result[key] >= 0


def test_stdin_is_placed_before_the_prompt(stchat_home, cli_models, expected):
    alone = _json_run(cli_models, PROMPT)
    piped = _json_run(cli_models, PROMPT, input=b"The quick brown fox jumps over the lazy dog.\n")
    assert piped["prompt_tokens"] > alone["prompt_tokens"]
    stdin_only = run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "-n", str(N), input=PROMPT.encode())
    assert stdin_only.returncode == 0
    assert stdin_only.stdout == _stdout_of(expected)  # stdin alone is the whole prompt


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_corrupt_bundle_is_a_runtime_error(stchat_home, cli_models, tmp_path, damage):
    bundle = shutil.copytree(cli_models["bundle"], tmp_path / "broken")
    if damage == "delete":
        (bundle / "manifest.json").unlink()
    else:
        (bundle / "manifest.json").write_text("{ this is not json")
    done = run_cli("ask", "-m", str(bundle), PROMPT)
    assert done.returncode == 1, done.stderr.decode()
    assert done.stdout == b""
    assert len(_error_lines(done.stderr)) == 1 and "Traceback" not in done.stderr.decode()


def test_gguf_is_converted_once_then_reused(stchat_home, cli_models, expected, tmp_path):
    gguf = shutil.copy2(cli_models["gguf"], tmp_path / "my-model.gguf")
    args = [*GREEDY, "-n", str(N), PROMPT]
    first = run_cli("ask", "-m", str(gguf), *args)
    assert first.returncode == 0, first.stderr.decode()
    assert b"converting" in first.stderr
    assert (stchat_home / "models" / "my-model" / "manifest.json").is_file()
    assert first.stdout == _stdout_of(expected)
    again = run_cli("ask", "-m", str(gguf), *args)
    assert again.returncode == 0 and b"converting" not in again.stderr
    assert again.stdout == first.stdout
    by_name = run_cli("ask", "-m", "my-model", *args)        # the installed name
    by_default = run_cli("ask", *args)                         # the only installed model
    by_env = run_cli("ask", *args, STCHAT_MODEL="my-model")    # named by the environment
    for done in (by_name, by_default, by_env):
        assert done.returncode == 0 and done.stdout == first.stdout and b"converting" not in done.stderr
    os.utime(gguf, (time.time() + 60, time.time() + 60))      # touched, same bytes: the sha256 says so
    touched = run_cli("ask", "-m", str(gguf), *args)
    assert touched.returncode == 0 and b"converting" not in touched.stderr
    from runtime import synthetic

    synthetic.write_gguf(synthetic.TINY_4B_LIKE, gguf, seed=1)   # other weights, same size: convert again
    changed = run_cli("ask", "-m", str(gguf), *args)
    assert changed.returncode == 0 and b"converting" in changed.stderr and changed.stdout != first.stdout
    assert sorted(p.name for p in (stchat_home / "models").iterdir() if not p.name.startswith(".")) == ["my-model"]


def test_ctrl_c_stops_generation_and_exits_130(stchat_home, cli_models):
    command = [sys.executable, "-m", "stchat", "ask", "-m", str(cli_models["long_bundle"]), *GREEDY,
               "-n", "100000", "--verbose", PROMPT]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    try:
        first = os.read(process.stdout.fileno(), 1)   # generation has started
        assert first, "no output before the end of the generation"
        process.send_signal(signal.SIGINT)
        rest, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err.decode()
    out = first + rest
    assert out.endswith(b"\n") and len(out) > 1
    generated = int(re.search(r"^eval count:\s+(\d+)", err.decode(), re.M).group(1))
    assert generated < 4000  # the 4096-token context was far from filled: it really stopped
    assert b"interrupted" in err


def test_expert_usage_is_kept_between_runs(stchat_home, cli_models):
    """Each run adds its router counts to the model's record (the old one halved), which the app
    uses to build the hottest experts first."""
    import json

    run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "-n", "4", PROMPT)
    (record,) = (stchat_home / "usage").glob("*.json")
    first = np.array(json.loads(record.read_text())["counts"])
    assert first.sum() > 0
    run_cli("ask", "-m", str(cli_models["bundle"]), *GREEDY, "-n", "4", PROMPT)
    second = np.array(json.loads(record.read_text())["counts"])
    np.testing.assert_allclose(second, first / 2 + first)  # the same greedy run asks the same
