"""The command line as a newcomer meets it: no terminal, failures that leave stdout clean,
option names in errors, help without type tags, -V, shell completion, `rm` of several models,
no lock files left behind. Each runs `python -m stchat` in a subprocess on a tiny model."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from model_fixtures import gguf_file
from test_cli_ask import ROOT, _env, _error_lines, run_cli


@pytest.fixture
def two_models(stchat_home, tmp_path):
    """Two installed tiny models, `alpha` and `beta` (imported with `pull`; different files, since
    a file already converted is recognised by its content)."""
    for name, layout in (("alpha", "4b"), ("beta", "21b")):
        shutil.copy(gguf_file(layout), tmp_path / f"{name}.gguf")
        done = run_cli("pull", str(tmp_path / f"{name}.gguf"))
        assert done.returncode == 0, done.stderr
    return stchat_home / "models"


def test_the_app_without_a_terminal_says_so_in_one_line_and_exits_2(stchat_home):
    done = subprocess.run([sys.executable, "-m", "stchat"], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60, env=_env(), cwd=ROOT)
    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr.decode().splitlines() == [
        "stchat: error: the chat app needs a terminal (stdin and stdout); for scripts use `stchat ask PROMPT`"]


def test_a_failed_ask_writes_nothing_to_stdout(two_models):
    experts = two_models / "alpha" / "experts.bin"  # damaged: found when the first expert is read
    data = bytearray(experts.read_bytes())
    data[:] = bytes(len(data))
    experts.write_bytes(bytes(data))
    done = run_cli("ask", "-m", "alpha", "hello")
    assert done.returncode == 1 and done.stdout == b""
    assert len(_error_lines(done.stderr)) == 1, done.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "--seed must be an integer >= 0, got -1"),
    ("--repeat-penalty", "0", "--repeat-penalty must be a finite number > 0 (1 disables it), got 0.0"),
    ("--temp", "-1", "--temp must be a finite number >= 0, got -1.0"),
])
def test_sampling_errors_name_the_option(stchat_home, option, value, message):
    done = run_cli("ask", option, value, "hi")
    assert done.returncode == 2 and done.stdout == b""
    assert _error_lines(done.stderr) == [f"stchat: error: {message}"]


def test_usage_errors_are_one_line(stchat_home):
    done = run_cli("ask", "-n", "0", "hi")
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [
        "stchat: error: Invalid value for '-n' / '--max-tokens': Input should be greater than or equal to 1 "
        "(see stchat ask -h)"]


@pytest.mark.parametrize("command", [[], ["ask"], ["pull"], ["rm"], ["show"], ["bench"], ["list"]])
def test_help_shows_no_type_tags(command):
    done = run_cli(*command, "--help", COLUMNS="200")
    assert done.returncode == 0
    assert b"<" not in done.stdout, done.stdout.decode()


def test_dash_capital_v_prints_the_version():
    from stchat import __version__

    for flag in ("-V", "--version"):
        done = run_cli(flag)
        assert (done.returncode, done.stdout) == (0, f"stchat {__version__}\n".encode())


def test_shell_completion_of_commands_and_installed_models(two_models):
    # typed in bash, as users do: Typer finds the shell among the process's ancestors (a test
    # run detached from any shell, e.g. started with `( ... &)`, has none; `; exit` keeps bash
    # from replacing itself with the command)
    script = subprocess.run(["bash", "-c", f"'{sys.executable}' -m stchat --show-completion; exit $?"],
                            capture_output=True, env=_env(), cwd=ROOT, stdin=subprocess.DEVNULL, timeout=180)
    assert script.returncode == 0 and b"_STCHAT_COMPLETE" in script.stdout, script.stderr
    commands = run_cli(_STCHAT_COMPLETE="complete_bash", COMP_WORDS="stchat pu", COMP_CWORD="1")
    assert commands.stdout.split() == [b"pull"]
    names = run_cli(_STCHAT_COMPLETE="complete_bash", COMP_WORDS="stchat rm b", COMP_CWORD="2")
    assert names.stdout.split() == [b"beta"]


def test_rm_takes_several_names_and_removes_none_when_one_is_unknown(two_models):
    refused = run_cli("rm", "-y", "alpha", "nosuch")
    assert refused.returncode == 3 and "nosuch" in _error_lines(refused.stderr)[0]
    assert sorted(p.name for p in two_models.iterdir() if not p.name.startswith(".")) == ["alpha", "beta"]
    done = run_cli("rm", "-y", "alpha", "beta")
    assert done.returncode == 0, done.stderr
    assert done.stderr.decode().splitlines() == ["removed alpha", "removed beta"]
    assert [p.name for p in two_models.iterdir() if not p.name.startswith(".")] == []


def test_pulls_leave_no_lock_files(two_models, tmp_path):
    again = run_cli("pull", str(tmp_path / "alpha.gguf"))  # already installed: does nothing
    assert again.returncode == 0
    assert list(two_models.rglob("*.lock")) == []


def test_the_install_lock_still_keeps_a_second_pull_out(stchat_home):
    from stchat.exitcodes import StchatError
    from stchat.install import name_lock

    with name_lock("same"):
        with pytest.raises(StchatError, match="another stchat pull of same is running"):
            with name_lock("same"):
                pass
    with name_lock("same"):  # released, and its file gone: taken again at once
        pass


def test_show_bench_and_the_refusal_give_one_minimum_budget(two_models):
    import json

    from runtime.memory import format_bytes

    shown = run_cli("show", "alpha", "--json")
    minimum = json.loads(shown.stdout)["memory"]["minimum"]
    benched = run_cli("bench", "-m", "alpha", "--runs", "1", "--prompt-tokens", "8", "--gen-tokens", "2",
                      "--threads", "1", "--json")
    assert benched.returncode == 0, benched.stderr
    assert json.loads(benched.stdout)["minimum_budget"] == minimum
    refused = run_cli("ask", "-m", "alpha", "--memory", str(minimum - 1), "hi")
    assert refused.returncode == 1
    assert f"it needs at least {format_bytes(minimum)}" in _error_lines(refused.stderr)[0]
    accepted = run_cli("ask", "-m", "alpha", "--memory", str(minimum), "-n", "2", "hi")
    assert accepted.returncode == 0, accepted.stderr
