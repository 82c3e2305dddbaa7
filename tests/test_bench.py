"""`stchat bench`: runs on a real (tiny) model in child processes; synthetic models built once."""
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from model_fixtures import bundle
from runtime import synthetic


def _stchat(*args, env=None):
    return subprocess.run([sys.executable, "-m", "stchat", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_bench_json_on_a_model(stchat_home):
    out = _stchat("bench", "-m", str(bundle("21b")), "--runs", "2", "--prompt-tokens", "24",
                  "--gen-tokens", "6", "--threads", "1", "--context", "40", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["runs"] == 2 and len(result["per_run"]) == 2
    for key in ("load_seconds", "ttft_seconds", "prefill_tps", "decode_tps", "peak_rss", "hit_rate",
                "read_per_token", "stall_per_token", "minimum_budget", "always_resident"):
        assert key in result, key
    assert result["prefill_tps"] > 0 and result["decode_tps"] > 0 and result["peak_rss"] > 20
    assert 0.0 <= result["hit_rate"] <= 1.0
    assert 0 < result["always_resident"] < result["minimum_budget"]
    # 40 positions in the global layer, the 8-position window in the three sliding ones
    itemsize = {"float16": 2, "float32": 4}[result["kv_dtype"]]
    assert result["context"] == 40 and result["kv_cache"] == (40 + 3 * 8) * 2 * 2 * 32 * itemsize  # K,V x heads x dim
    assert "run 1/2" in out.stderr


def test_the_warm_prompt_follows_idle_time_building_as_in_the_app(stchat_home):
    # a 2-token first prompt asks for a few experts; idle time builds the rest (the model fits)
    out = _stchat("bench", "-m", str(bundle("4b")), "--runs", "1", "--prompt-tokens", "2", "--gen-tokens", "2", "--json")
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)["per_run"][0]
    assert run["idle_built"] > 0 and run["experts_resident"] == run["experts"]


def test_bench_table_and_tight_budget(stchat_home):
    out = _stchat("bench", "-m", str(bundle("4b")), "--runs", "1", "--prompt-tokens", "8", "--gen-tokens", "2")
    assert out.returncode == 0, out.stderr
    assert "decode" in out.stdout and "tok/s" in out.stdout and "peak RSS" in out.stdout
    assert "always resident" in out.stdout and "smallest budget accepted" in out.stdout
    small = _stchat("bench", "-m", str(bundle("4b")), "--runs", "1", "--memory", "16MiB")
    assert small.returncode == 1 and "too small" in small.stderr and "needs at least" in small.stderr


def test_bench_usage_errors(stchat_home):
    assert _stchat("bench").returncode == 2
    assert _stchat("bench", "--synthetic", "7b").returncode == 2
    assert _stchat("bench", "--synthetic", "4b", "--routing", "zipf").returncode == 2
    too_short = _stchat("bench", "-m", str(bundle("4b")), "--context", "16", "--prompt-tokens", "16")
    assert too_short.returncode == 2 and "cannot hold" in too_short.stderr


def _count_gguf_writes(monkeypatch, tmp_path, full: str, tiny) -> list:
    """The cache in `tmp_path`, synthetic.`full` shrunk to `tiny`; the list gains a 1 per GGUF written."""
    monkeypatch.setenv("STCHAT_CACHE", str(tmp_path))
    monkeypatch.setattr(synthetic, full, replace(tiny))
    built = []
    real_write = synthetic.write_gguf
    monkeypatch.setattr(synthetic, "write_gguf", lambda *a, **k: built.append(1) or real_write(*a, **k))
    return built


def test_synthetic_model_is_built_once(tmp_path, monkeypatch):
    from stchat import bench
    built = _count_gguf_writes(monkeypatch, tmp_path, "FULL_4B", synthetic.TINY_4B_LIKE)
    first = bench.synthetic_bundle("4b", "skewed", log=lambda m: None)
    assert (first / "manifest.json").is_file() and "skewed" in first.name
    assert bench.synthetic_bundle("4b", "skewed", log=lambda m: None) == first
    assert built == [1]
    assert not list(tmp_path.rglob("*.partial"))


def test_skewed_routing_concentrates_on_a_quarter_of_experts():
    import numpy as np

    import runtime
    spec = replace(synthetic.TINY_21B_LIKE, num_experts=16, num_experts_per_tok=2, routing="skewed")
    w = synthetic.make_weights(spec)
    plain = synthetic.make_weights(replace(spec, routing="uniform"))
    layer0 = "model.layers.0.block_sparse_moe.primary_router.weight"
    norms = np.linalg.norm(w[layer0], axis=1) / np.linalg.norm(plain[layer0], axis=1)
    hot = np.isclose(norms, synthetic.HOT_ROUTER_GAIN)
    assert hot.sum() == 4 and np.allclose(norms[~hot], 1.0)
    # on random token streams the hot quarter takes most routing choices
    x = np.random.default_rng(0).standard_normal((2000, spec.hidden_size)).astype(np.float32)
    top = np.argsort(-(x @ w[layer0].T), axis=1)[:, :2]
    share = np.isin(top, np.nonzero(hot)[0]).mean()
    assert share > 0.6


def test_synthetic_gguf_is_kept_and_the_bundle_converts_that_file(tmp_path, monkeypatch):
    from stchat import bench
    built = _count_gguf_writes(monkeypatch, tmp_path, "FULL_21B", synthetic.TINY_21B_LIKE)
    gguf = bench.synthetic_gguf("21b", "skewed", log=lambda m: None)
    assert gguf.is_file() and bench.synthetic_gguf("21b", "skewed", log=lambda m: None) == gguf
    bundle = bench.synthetic_bundle("21b", "skewed", log=lambda m: None)
    assert built == [1] and gguf.is_file()  # converted from the kept file, which stays
    assert json.loads((bundle / "manifest.json").read_text())["source"]["path"] == str(gguf.resolve())
