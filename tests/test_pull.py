"""`stchat pull`, `list`, `show` and `rm` end to end: the real CLI against a local Hub stand-in.

Every command runs as `python -m stchat ...` in a subprocess with `HF_ENDPOINT` pointed at
`tests/hub_server.py` on 127.0.0.1 and `HF_HOME` / `STCHAT_HOME` in a temporary folder, so
what is checked is what a user's shell sees (stdout, stderr lines, exit status) and what the
server was asked for (its request log). Kill -9 tests stop the real process mid-download and
mid-conversion.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hub_server
from freeze import frozen_until
from hub_server import GATED, GGUF_4B, GGUF_21B, PLAIN_4B, PLAIN_21B, SLOW, SLOW_FILE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(hub, tmp_path):
    """A private Hugging Face home and stchat home; the server's log and faults start empty."""
    hub.clear_log()
    hub.state.faults.clear()
    hub.state.throttle = None
    values = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), STCHAT_HOME=str(tmp_path / "home"),
                  HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for key in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "STCHAT_MODEL", "STCHAT_DEBUG"):
        values.pop(key, None)
    return values


def run(env: dict, *args: str, timeout: float = 120, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stchat", *args], env=dict(env, **extra), cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


# `python -m stchat` with Python's Ctrl-C handler set: Python leaves SIGINT ignored when its
# parent ignored it, as a shell's `cmd &` without job control does (the suite run that way saw
# the pull finish through the SIGINT and exit 0)
INTERRUPTIBLE = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module('stchat', run_name='__main__', alter_sys=True)")


def start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, *args], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("stchat: error:")]


def listed(env: dict) -> list[str]:
    done = run(env, "list")
    assert done.returncode == 0, done.stderr
    return [line.split()[0] for line in done.stdout.splitlines()[1:]]


def listed_now(env: dict, monkeypatch) -> list[str]:
    """What `stchat list` would show, computed in this process (a subprocess takes longer than the
    conversion it is meant to catch)."""
    from stchat import manage

    monkeypatch.setenv("STCHAT_HOME", env["STCHAT_HOME"])
    return [m.name for m in manage.installed()]


def blobs(env: dict, repo: str) -> list[Path]:
    folder = Path(env["HF_HOME"]) / "hub" / ("models--" + repo.replace("/", "--")) / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def pull_killed_when(env: dict, monkeypatch, spec: str, condition):
    """Start `stchat pull spec`, wait for `condition` (looking only while the pull is stopped, so
    it still holds at the kill), check no half model is listed then, SIGKILL the pull; returns
    what `condition` returned."""
    proc = start(env, "pull", spec)
    try:
        value = frozen_until(proc.pid, condition)                      # the pull is stopped while we look
        assert listed_now(env, monkeypatch) == []                        # mid-pull: no half model
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.communicate()
    return value


# -- the whole life of a model --------------------------------------------------------------
def test_pull_alias_then_ask_list_show_offline_and_rm(hub, env):
    done = run(env, "pull", "4b")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "smallthinker-4b\n"                           # stdout: the name, nothing else
    assert f"chose {PLAIN_4B}" in done.stderr and "Q4_0-imatrix" in done.stderr  # the plain file, saying so
    for stage in ("downloading", "verifying sha256", "converting: layers", "success"):
        assert stage in done.stderr, stage
    assert "\x1b" not in done.stderr and "\r" not in done.stderr         # not a TTY: plain lines
    assert [e.file for e in hub.content_requests()] == [PLAIN_4B]        # no decoy downloaded
    assert not blobs(env, GGUF_4B)                                       # default: the download is not kept

    answer = run(env, "ask", "--temp", "0", "-n", "8", "-t", "1", "Hello")
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
    by_alias = run(env, "ask", "-m", "4b", "--temp", "0", "-n", "8", "-t", "1", "Hello")   # the name it was pulled by
    by_env = run(env, "ask", "--temp", "0", "-n", "8", "-t", "1", "Hello", STCHAT_MODEL="4b")
    for done in (by_alias, by_env):
        assert done.returncode == 0 and done.stdout == answer.stdout, done.stderr
    missing = run(env, "ask", "-m", "21b", "Hello")
    assert missing.returncode == 3 and "stchat pull 21b" in errors(missing)[0]

    rows = run(env, "list").stdout.splitlines()
    assert rows[0].split() == ["NAME", "SOURCE", "QUANT", "SIZE", "DATE", "STATUS"]
    assert rows[1].split()[:4] == ["smallthinker-4b", GGUF_4B, PLAIN_4B, "Q4_0"] and rows[1].split()[-1] == "ok"
    assert run(env, "verify", "4b").stdout.startswith("smallthinker-4b: ok")

    shown = run(env, "show", "4b")                                       # the alias finds the model
    assert shown.returncode == 0, shown.stderr
    for text in ("3 layers", "8 experts per layer, 2 active", "all in RAM", "smallest budget", "dense.bin",
                 "sha256", "verified", "--memory"):
        assert text in shown.stdout, text

    hub.clear_log()
    again = run(env, "pull", "4b")                                       # installed: no network at all
    assert again.returncode == 0 and "already installed" in again.stderr
    offline = run(env, "pull", "4b", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0 and "already installed" in offline.stderr
    assert hub.log == []

    refused = run(env, "rm", "smallthinker-4b")                          # no TTY, no -y: refuse
    assert refused.returncode == 2 and "-y" in errors(refused)[0]
    removed = run(env, "rm", "-y", "smallthinker-4b")
    assert removed.returncode == 0 and listed(env) == []
    assert run(env, "show", "smallthinker-4b").returncode == 3


def test_the_old_organisation_name_is_followed_and_one_file_is_installed_once(hub, env, tmp_path):
    old = GGUF_21B.replace("Tiiny/", "PowerInfer/")
    done = run(env, "pull", old)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "SmallThinker-21B-A3B-Instruct-Q4_0\n"
    assert f"{old} is now called {GGUF_21B}" in done.stderr and f"chose {PLAIN_21B}" in done.stderr
    assert any(e.status == 307 for e in hub.log)
    record = json.loads((Path(env["STCHAT_HOME"]) / "models" / done.stdout.strip() / "stchat-source.json").read_text())
    assert record["repo"] == GGUF_21B
    hub.clear_log()
    by_alias = run(env, "pull", "21b")                      # the same file by its alias: not downloaded again
    assert by_alias.returncode == 0 and "same sha256" in by_alias.stderr and "converting" not in by_alias.stderr
    assert hub.content_requests() == [] and by_alias.stdout == done.stdout
    local = tmp_path / "downloaded-by-a-browser.gguf"       # the same bytes from elsewhere: no conversion
    local.write_bytes(hub.state.repos[GGUF_21B].files[PLAIN_21B].content)
    asked = run(env, "ask", "-m", str(local), "--temp", "0", "-n", "4", "-t", "1", "Hello", HF_HUB_OFFLINE="1")
    assert asked.returncode == 0 and "converting" not in asked.stderr, asked.stderr
    assert listed(env) == ["SmallThinker-21B-A3B-Instruct-Q4_0"]


def test_offline_without_the_model_is_one_clear_error_unless_the_cache_has_it(hub, env):
    done = run(env, "pull", "21b", HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    assert len(errors(done)) == 1 and "HF_HUB_OFFLINE" in errors(done)[0]
    assert hub.log == []
    assert run(env, "pull", "21b", "--keep-source").returncode == 0
    assert run(env, "rm", "-y", "21b").returncode == 0
    hub.clear_log()
    cached = run(env, "pull", "21b", HF_HUB_OFFLINE="1")            # converted again from the cache
    assert cached.returncode == 0, cached.stderr
    assert "from the Hugging Face cache" in cached.stderr and "verifying" in cached.stderr
    assert hub.log == [] and listed(env) == ["smallthinker-21b"]


@pytest.mark.parametrize("spec, code, message", [
    ("7b", 3, "unknown model '7b' (known: 4b, 21b"),
    ("nobody/nothing-GGUF", 3, "repository not found: nobody/nothing-GGUF"),
    (GATED, 1, "is gated"),
    (f"{GGUF_4B}:missing-Q4_0.gguf", 3, "missing-Q4_0.gguf is not in"),
])
def test_errors_are_one_line_with_an_exit_code(env, spec, code, message):
    done = run(env, "pull", spec)
    assert done.returncode == code, done.stderr
    assert len(errors(done)) == 1 and message in errors(done)[0], done.stderr
    assert "Traceback" not in done.stderr


def test_hf_token_and_hf_hub_cache_are_honoured(hub, env, tmp_path):
    cache = tmp_path / "elsewhere"
    done = run(env, "pull", GATED, "--keep-source", HF_TOKEN=hub_server.GRANTED_TOKEN, HF_HUB_CACHE=str(cache))
    assert done.returncode == 0, done.stderr
    assert {e.auth for e in hub.log if "/resolve/" in e.path} == {f"Bearer {hub_server.GRANTED_TOKEN}"}
    assert [p.name for p in (cache / "models--test--Gated-GGUF" / "snapshots").glob("*/*")] == ["gated-Q4_0.gguf"]
    assert not (Path(env["HF_HOME"]) / "hub" / "models--test--Gated-GGUF").exists()


def test_no_network_is_one_clear_error(env):
    with __import__("socket").socket() as probe:   # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run(env, "pull", "4b", HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert len(errors(done)) == 1 and "cannot reach" in errors(done)[0] and "HF_ENDPOINT" in errors(done)[0]


def test_sha256_mismatch_is_refused_and_nothing_is_converted(hub, env):
    hub.state.faults[PLAIN_21B] = [("corrupt",)]
    done = run(env, "pull", "21b")
    assert done.returncode == 1
    assert "sha256 mismatch" in errors(done)[0] and "deleted" in errors(done)[0]
    assert "converting" not in done.stderr
    assert blobs(env, GGUF_21B) == [] and listed(env) == []
    models = Path(env["STCHAT_HOME"]) / "models"
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == []
    retry = run(env, "pull", "21b", "--keep-source")                   # the next pull starts clean
    assert retry.returncode == 0, retry.stderr
    assert [b.name for b in blobs(env, GGUF_21B)] == [hub.state.repos[GGUF_21B].files[PLAIN_21B].sha256]


def test_kill_during_download_then_pull_resumes_from_the_partial_file(hub, env, monkeypatch):
    size = len(hub.state.repos[GGUF_4B].files[PLAIN_4B].content)
    hub.state.throttle = 200_000                                         # ~1.3 s for the whole file
    partial = pull_killed_when(env, monkeypatch, "4b", lambda: next(
        (b for b in blobs(env, GGUF_4B) if b.name.endswith(".incomplete") and b.stat().st_size >= 64 << 10),
        None))
    kept = partial.stat().st_size
    assert 0 < kept < size and listed(env) == []
    hub.state.throttle = None
    # the server logs the killed download when its next write fails: wait for it, or it could
    # land in the log of the resumed pull
    deadline = time.monotonic() + 10
    while not hub.content_requests(PLAIN_4B) and time.monotonic() < deadline:
        time.sleep(0.02)
    (killed,) = hub.content_requests(PLAIN_4B)
    assert killed.sent < size
    hub.clear_log()
    done = run(env, "pull", "4b")
    assert done.returncode == 0, done.stderr
    assert "resuming at" in done.stderr
    (get,) = hub.content_requests(PLAIN_4B)                              # one request, for the rest only
    assert get.range == f"bytes={kept}-" and get.status == 206 and get.sent == size - kept
    assert listed(env) == ["smallthinker-4b"]


def test_kill_during_conversion_then_pull_completes_without_downloading_again(hub, env, monkeypatch):
    name = SLOW_FILE.removesuffix(".gguf")
    staging = Path(env["STCHAT_HOME"]) / "models" / ".pulling"
    pull_killed_when(env, monkeypatch, SLOW, lambda: staging.is_dir() and any(
        ".partial-" in p.name for p in staging.iterdir()))
    assert listed(env) == [] and not (Path(env["STCHAT_HOME"]) / "models" / name).exists()
    hub.clear_log()
    done = run(env, "pull", SLOW)
    assert done.returncode == 0, done.stderr
    assert hub.content_requests() == []                                  # the verified download was reused
    assert listed(env) == [name]
    assert blobs(env, SLOW) == []                                        # and removed once installed
    assert not any(".partial-" in p.name for p in staging.iterdir())


def test_ctrl_c_exits_130_and_keeps_the_partial_download(hub, env):
    hub.state.throttle = 200_000
    proc = start(env, "pull", "4b")
    try:
        frozen_until(proc.pid, lambda: any(b.name.endswith(".incomplete") and b.stat().st_size > 0
                                           for b in blobs(env, GGUF_4B)))
        proc.send_signal(signal.SIGINT)                                  # handled as it resumes, mid-download
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted; run the same pull again to resume" in stderr and "Traceback" not in stderr
    assert [b for b in blobs(env, GGUF_4B) if b.name.endswith(".incomplete")]


def test_import_keeps_the_file_precision_unless_told_otherwise(env, tmp_path):
    import json

    from runtime import synthetic
    from test_precision import SHAPES, q4_k_m
    path = synthetic.write_gguf(SHAPES["21b"], tmp_path / "mix-Q4_K_M.gguf", matrix_type=q4_k_m)
    kept = run(env, "pull", str(path))
    assert kept.returncode == 0 and kept.stdout == "mix-Q4_K_M\n", kept.stderr
    shown = run(env, "show", "mix-Q4_K_M")
    assert "quantization  Q4_K+Q6_K" in shown.stdout
    assert "q4b32m" in shown.stdout and "q8b16" in shown.stdout and "q4b32 " not in shown.stdout

    lossy = run(env, "pull", str(path), "--quantize", "q4_0")
    assert lossy.returncode == 0 and lossy.stdout == "mix-Q4_K_M-q4_0\n", lossy.stderr
    assert "loses the precision" in lossy.stderr
    info = json.loads(run(env, "show", "--json", "mix-Q4_K_M-q4_0").stdout)
    assert list(info["storage"]) == ["q4b32"] and "lossy" in info["quantization"]

    refused = run(env, "pull", str(path), "--quantize", "q3")
    assert refused.returncode == 2 and "--quantize" in errors(refused)[0]
