"""`stchat bench --cap`: the measured child really runs in a memory cgroup with the limit set,
and a machine without usable cgroups gets one clear line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_fixtures import bundle
from stchat import cgroup

needs_cgroups = pytest.mark.skipif(
    sys.platform != "linux" or cgroup._memory_hierarchy(Path("/sys/fs/cgroup")) is None,
    reason="no Linux memory cgroup on this platform")

_REPORT = ("import json; from stchat import cgroup; "
           "print(json.dumps({'cgroups': open('/proc/self/cgroup').read(), 'limit': cgroup.current_limit()}))")


@needs_cgroups
def test_a_capped_child_runs_in_its_own_limited_cgroup(monkeypatch, tmp_path):
    monkeypatch.delenv("STCHAT_CGROUP_ROOT", raising=False)
    evicted = tmp_path / "weights.bin"
    evicted.write_bytes(b"x" * 2**20)
    child, peak = cgroup.run([sys.executable, "-c", _REPORT], 300 * 2**20, [evicted])
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    version, mount = cgroup._memory_hierarchy(Path("/sys/fs/cgroup"))
    line = next(l for l in seen["cgroups"].splitlines()
                if (version == 2 and l.startswith("0::")) or (version == 1 and ":memory:" in l))
    group = line.split(":", 2)[2]
    assert Path(group).name.startswith(f"stchat-bench-{os.getpid()}-")
    assert seen["limit"] == 300 * 2**20
    assert peak is None or 0 < peak <= 300 * 2**20
    assert not (mount / group.lstrip("/")).exists()  # removed afterwards
    assert cgroup.current_limit() != 300 * 2**20  # the parent stays outside


@needs_cgroups
def test_bench_cap_measures_the_model_inside_the_cap(stchat_home, monkeypatch):
    monkeypatch.delenv("STCHAT_CGROUP_ROOT", raising=False)
    out = subprocess.run([sys.executable, "-m", "stchat", "bench", "-m", str(bundle("4b")), "--cap", "512MiB",
                          "--runs", "1", "--prompt-tokens", "8", "--gen-tokens", "2", "--threads", "1", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["cap"] == result["memory_budget"] == 512 * 2**20
    run = result["per_run"][0]
    assert run["cgroup_limit"] == 512 * 2**20  # read by the child from its own cgroup
    assert 0 < run["cgroup_peak"] <= 512


def test_cap_without_a_memory_cgroup_is_one_line_and_exit_1(stchat_home, tmp_path, monkeypatch):
    monkeypatch.setenv("STCHAT_CGROUP_ROOT", str(tmp_path))  # nothing mounted there
    monkeypatch.setenv("STCHAT_CACHE", str(tmp_path))  # were a model built, not in the user's cache
    out = subprocess.run([sys.executable, "-m", "stchat", "bench", "--synthetic", "4b", "--cap", "1GiB"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("stchat: error: --cap needs a Linux memory cgroup")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "synthetic").exists()  # refused before building anything


def test_v2_group_is_made_where_the_memory_controller_is_delegated(tmp_path, monkeypatch):
    """cgroup v2 (absent on this machine's kernel setup) on a stand-in tree: the root enables the
    memory controller for its children, the group gets memory.max and no swap."""
    monkeypatch.setenv("STCHAT_CGROUP_ROOT", str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    group = cgroup.create(123 * 2**20)
    assert group.version == 2 and group.path.parent == tmp_path
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory"
    assert (group.path / "memory.max").read_text() == str(123 * 2**20)
    (group.path / "memory.max").unlink()
    group.remove()
    assert not group.path.exists()
