"""One name per model, and no damaged model used silently: the real CLI in subprocesses.

Issue 10 part 3 as a user meets it: an alias that is not installed says how to pull it; the
same GGUF file is converted once whether `ask -m` or `pull` saw it first (or a copy of it);
the app's default model (settings) is the default of `ask`; `verify`, `list`, `show` and `ask`
on bundles damaged in place or cut short; a truncated GGUF says it is truncated. (Aliases of
pulled models and the Hub's renamed organisation are in `test_pull.py`, against the Hub stand-in.)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GREEDY = ["--temp", "0", "-t", "1", "-n", "6"]


def run(*args: str, **env) -> subprocess.CompletedProcess:
    values = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    values.pop("STCHAT_DEBUG", None)
    values.update(env)
    return subprocess.run([sys.executable, "-m", "stchat", *args], env=values, cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=180)


def errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("stchat: error:")]


def models(home: Path) -> list[str]:
    folder = home / "models"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    from runtime import synthetic

    return synthetic.write_gguf(synthetic.TINY_4B_LIKE, tmp_path_factory.mktemp("gguf") / "x.gguf")


@pytest.fixture
def mine(gguf, tmp_path) -> Path:
    """A private copy of the GGUF file (its own path and mtime)."""
    return Path(shutil.copy(gguf, tmp_path / "mine.gguf"))


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["-m", "env", "show"])
def test_an_alias_not_installed_says_how_to_pull_it(stchat_home, mine, how):
    run("pull", str(mine))     # something else is installed
    done = {"-m": lambda: run("ask", "-m", "4b", "hi"), "env": lambda: run("ask", "hi", STCHAT_MODEL="21b"),
            "show": lambda: run("show", "4b")}[how]()
    alias = "21b" if how == "env" else "4b"
    assert done.returncode == 3, done.stderr
    assert len(errors(done)) == 1 and f"stchat pull {alias}" in errors(done)[0]
    assert done.stdout == ""


def test_ask_then_pull_of_the_same_file_converts_it_once(stchat_home, mine):
    asked = run("ask", "-m", str(mine), *GREEDY, "Hello")
    assert asked.returncode == 0 and "converting" in asked.stderr, asked.stderr
    for _ in range(2):
        pulled = run("pull", str(mine))
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout == "mine\n" and "already installed" in pulled.stderr and "converting" not in pulled.stderr
    assert models(stchat_home) == ["mine"]
    again = run("ask", "-m", str(mine), *GREEDY, "Hello")
    assert again.returncode == 0 and "converting" not in again.stderr and again.stdout == asked.stdout


def test_pull_then_ask_and_copies_elsewhere_reuse_the_conversion(stchat_home, mine, tmp_path):
    pulled = run("pull", str(mine))
    assert pulled.returncode == 0 and "converting" in pulled.stderr, pulled.stderr
    asked = run("ask", "-m", str(mine), *GREEDY, "Hello")
    assert asked.returncode == 0 and "converting" not in asked.stderr, asked.stderr
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    copy = Path(shutil.copy(mine, elsewhere / "renamed.gguf"))   # another path, name and mtime; same bytes
    os.utime(copy, (time.time() + 100, time.time() + 100))
    for args in (("ask", "-m", str(copy), *GREEDY, "Hello"), ("pull", str(copy))):
        done = run(*args)
        assert done.returncode == 0 and "converting" not in done.stderr, done.stderr
    assert models(stchat_home) == ["mine"]


def test_a_different_file_with_the_same_name_is_a_new_model(stchat_home, mine, tmp_path):
    from runtime import synthetic

    assert run("pull", str(mine)).returncode == 0
    (tmp_path / "other").mkdir()
    other = synthetic.write_gguf(synthetic.TINY_4B_LIKE, tmp_path / "other" / "mine.gguf", seed=3)
    done = run("pull", str(other))
    assert done.returncode == 0 and "converting" in done.stderr and done.stdout == "mine-2\n"
    assert models(stchat_home) == ["mine", "mine-2"]


def test_the_apps_default_model_is_the_default_of_ask(stchat_home, mine, tmp_path):
    from runtime import synthetic
    from stchat import settings

    other = synthetic.write_gguf(synthetic.TINY_4B_LIKE, tmp_path / "other.gguf", seed=3)
    assert run("pull", str(mine)).returncode == 0 and run("pull", str(other)).returncode == 0
    undecided = run("ask", *GREEDY, "Hello")
    assert undecided.returncode == 2 and "F4" in errors(undecided)[0]
    (stchat_home / "config").mkdir(exist_ok=True)
    settings.save(settings.Settings(default_model="other"), stchat_home / "config" / settings.FILE_NAME)  # F4, "d"
    chosen = run("ask", "--json", *GREEDY, "Hello")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["model"] == "other"
    overridden = run("ask", "--json", *GREEDY, "Hello", STCHAT_MODEL="mine")
    assert json.loads(overridden.stdout)["model"] == "mine"


# -- damage --------------------------------------------------------------------------------------
def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_verify_passes_a_sound_model_and_names_what_is_damaged(stchat_home, mine):
    assert run("pull", str(mine)).returncode == 0
    sound = run("verify", "mine")
    assert sound.returncode == 0 and sound.stdout.startswith("mine: ok"), sound.stderr
    manifest = json.loads((stchat_home / "models" / "mine" / "manifest.json").read_text())
    stride, per_layer = manifest["experts"]["stride"], manifest["config"]["num_experts"]
    experts = stchat_home / "models" / "mine" / "experts.bin"
    _overwrite(experts, (per_layer + 3) * stride + 100, b"\0" * 64)        # inside layers.1/experts.3, same size
    damaged = run("verify", "mine")
    assert damaged.returncode == 1 and damaged.stdout == ""
    assert len(errors(damaged)) == 1
    assert "experts.bin" in errors(damaged)[0] and "layers.1/experts.3" in errors(damaged)[0]
    asked = run("ask", "-m", "mine", *GREEDY, "Hello")
    assert asked.returncode == 1 and "\0" not in asked.stdout
    assert len(errors(asked)) == 1 and "layers.1/experts.3 is damaged" in errors(asked)[0]
    assert "stchat verify" in errors(asked)[0]
    _overwrite(stchat_home / "models" / "mine" / "dense.bin", 5000, b"\xff" * 8)
    both = run("verify", "mine")
    assert both.returncode == 1 and "dense.bin" in errors(both)[0] and "experts.bin" in errors(both)[0]


def test_list_show_and_verify_flag_a_truncated_bundle(stchat_home, mine):
    assert run("pull", str(mine)).returncode == 0
    clean = run("list")
    assert clean.stdout.splitlines()[1].split()[-1] == "ok" and "warning" not in clean.stderr
    experts = stchat_home / "models" / "mine" / "experts.bin"
    os.truncate(experts, experts.stat().st_size // 2)
    listed = run("list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[-1] == "incomplete"
    assert "mine is incomplete: experts.bin is truncated" in listed.stderr
    shown = run("show", "mine")
    assert "INCOMPLETE: experts.bin is truncated" in shown.stdout and "warning" in shown.stderr
    assert json.loads(run("list", "--json").stdout)[0]["status"] == "incomplete"
    verified = run("verify", "mine")
    assert verified.returncode == 1 and "truncated" in errors(verified)[0]
    (stchat_home / "models" / "mine" / "manifest.json").unlink()        # not even a manifest
    assert "mine is incomplete: no manifest.json" in run("list").stderr
    shown = run("show", "mine")
    assert shown.returncode == 1 and "stchat rm mine" in errors(shown)[0]
    assert run("rm", "-y", "mine").returncode == 0 and models(stchat_home) == []


@pytest.mark.parametrize("keep", [0.5, 0.01])   # cut in the tensor data / in the metadata
def test_a_truncated_gguf_says_it_is_truncated(stchat_home, gguf, tmp_path, keep):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf.read_bytes()[:int(gguf.stat().st_size * keep)])
    for args in (("ask", "-m", str(cut), "hi"), ("pull", str(cut))):
        done = run(*args)
        assert done.returncode == 1 and done.stdout == ""
        assert len(errors(done)) == 1 and "truncated GGUF file" in errors(done)[0]
    assert models(stchat_home) == []


def test_a_powerinfer_only_gguf_is_refused(stchat_home, gguf, tmp_path):
    fused = Path(shutil.copy(gguf, tmp_path / "SmallThinker-4B-Q4_0.powerinfer.gguf"))
    done = run("pull", str(fused))
    assert done.returncode == 2 and "PowerInfer" in errors(done)[0]
    assert models(stchat_home) == []


def test_verify_reports_progress_on_stderr_for_big_files(stchat_home, mine, monkeypatch):
    import io

    from stchat import verify
    from stchat.progress import Reporter

    assert run("pull", str(mine)).returncode == 0
    monkeypatch.setattr(verify, "BIG_FILE", 1 << 16)        # the tiny model's experts.bin counts as big
    for tty in (False, True):
        reporter = Reporter(io.StringIO(), tty=tty)
        verify.verify_bundle("mine", stchat_home / "models" / "mine", reporter)
        text = reporter.stream.getvalue()
        assert "verifying experts.bin" in text and ("100.0%" in text) is tty
