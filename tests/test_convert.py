"""Conversion: both sources, both layouts, identical bytes for identical weights, clear errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, quants

import runtime
from model_fixtures import LAYOUTS, bundle, gguf_file, hf_config, hf_dir, prompt_ids, weights
from reference import dequantized_q4_weights, reference_logits
from runtime import synthetic
from runtime.bundle import ALIGN, Bundle
from runtime.errors import BundleError, ConversionError


def _assert_nothing_left(dest: Path):
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.partial-*"))


@pytest.mark.parametrize("layout", ["4b", "21b"])
def test_gguf_and_safetensors_give_identical_bundles_and_logits(layout):
    from_gguf, from_hf = Bundle(bundle(layout, "gguf")), Bundle(bundle(layout, "hf"))
    assert from_gguf.config == from_hf.config
    for name in ("dense.bin", "experts.bin"):
        assert from_gguf.manifest["files"][name]["sha256"] == from_hf.manifest["files"][name]["sha256"], name
    ids = prompt_ids()[:24]
    a = runtime.load(from_gguf.path).logits(ids)
    b = runtime.load(from_hf.path).logits(ids)
    np.testing.assert_array_equal(a, b)


def test_layouts_are_read_from_the_checkpoint():
    for source in ("gguf", "hf"):
        cfg4, cfg21 = Bundle(bundle("4b", source)).config, Bundle(bundle("21b", source)).config
        assert all(cfg4.rope_layers) and not any(cfg4.sliding_layers) and cfg4.sliding_window == 0
        spec = LAYOUTS["21b"]
        assert cfg21.rope_layers == tuple(bool(v) for v in spec.rope_layout)
        assert cfg21.sliding_layers == tuple(bool(v) for v in spec.sliding_window_layout)
        assert cfg21.sliding_window == spec.sliding_window_size
        assert not cfg21.rope_layers[0] and cfg21.sliding_layers[1]


def test_bundle_manifest_and_alignment():
    b = Bundle(bundle("21b"))
    cfg = b.config
    assert b.manifest["format_version"] == 2
    files = b.manifest["files"]
    for required in ("dense.bin", "experts.bin", "tokenizer.json", "chat_template.jinja", f"graphs/expert.{'-'.join(['q4b32'] * 3)}.onnx",
                     "graphs/head.onnx", *(f"graphs/layers.{i}.attention.onnx" for i in range(cfg.num_layers))):
        assert required in files, required
    assert b.expert_stride % ALIGN == 0
    assert all(spec["offset"] % ALIGN == 0 for layout in b.expert_layouts.values() for spec in layout["arrays"].values())
    assert all(t["offset"] % ALIGN == 0 for t in b.manifest["tensors"].values())
    assert os.path.getsize(b.path / "experts.bin") == cfg.num_layers * cfg.num_experts * b.expert_stride
    b.verify()


def test_expert_record_round_trips_the_checkpoint_weights():
    """One expert read on its own from experts.bin dequantizes to the Q4_0 of the source floats."""
    b = Bundle(bundle("4b"))
    ref = dequantized_q4_weights(weights("4b"))
    from runtime.quant import Q4_0, dequantize
    arrays = b.expert(1, 5)
    got = dequantize(Q4_0, {"qweight": arrays["down.qweight"], "scales": arrays["down.scales"]})
    np.testing.assert_array_equal(got, ref["model.layers.1.block_sparse_moe.experts.5.down.weight"])


def test_verify_detects_corruption(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle("4b"), copy)
    with open(copy / "experts.bin", "r+b") as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sha256"):
        Bundle(copy).verify()


def _rounded(w: dict, round_matrix, round_all=None) -> dict:
    """The float weights a converter actually sees after the source format's own rounding."""
    out = {}
    for name, value in w.items():
        if round_all is not None:
            value = round_all(value)
        if value.ndim == 2 and "primary_router" not in name and round_matrix is not None:
            value = round_matrix(value)
        out[name] = value
    return out


def _bf16(x):
    return (synthetic.bf16_bits(x).astype(np.uint32) << 16).view(np.float32)


def _f16(x):
    return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("dtype,rounding", [("bfloat16", _bf16), ("float16", _f16)])
def test_half_precision_checkpoints_convert(tmp_path, dtype, rounding):
    src = synthetic.write_hf_dir(LAYOUTS["4b"], tmp_path / "hf", weights=weights("4b"), dtype=dtype)
    model = runtime.load(runtime.convert(src, tmp_path / "b"), accuracy_level=0)
    ids = prompt_ids()[:16]
    seen = _rounded(weights("4b"), None, rounding)  # every tensor, router and norms too, is stored in half
    ref = reference_logits(dequantized_q4_weights(seen), hf_config("4b"), ids)
    np.testing.assert_allclose(model.logits(ids), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def _through(qtype):
    return lambda x: quants.dequantize(quants.quantize(x, qtype), qtype).astype(np.float32)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16, GGMLQuantizationType.F32])
def test_quantize_q4_0_requantizes_on_request(tmp_path, qtype):
    """`quantize="q4_0"`: matrices stored as Q8_0/F16/F32 are dequantized then quantized to Q4_0
    with llama.cpp's rounding, and the bundle records that it lost precision."""
    path = synthetic.write_gguf(LAYOUTS["4b"], tmp_path / "m.gguf", weights=weights("4b"), matrix_type=qtype)
    b = runtime.convert(path, tmp_path / "b", quantize="q4_0")
    ids = prompt_ids()[:16]
    seen = _rounded(weights("4b"), _through(qtype))
    ref = reference_logits(dequantized_q4_weights(seen), hf_config("4b"), ids)
    got = runtime.load(b, accuracy_level=0).logits(ids)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
    source = json.loads((b / "manifest.json").read_text())["source"]
    assert qtype.name in source["source_types"] and source["lossy"] and source["quantization"] == "Q4_0"


def test_gating_function_and_tied_head(tmp_path):
    from dataclasses import replace
    spec = replace(LAYOUTS["4b"], router_softmax=True)
    w = synthetic.make_weights(spec)
    gguf_path = synthetic.write_gguf(spec, tmp_path / "s.gguf", weights=w, include_output=False)
    cfg = Bundle(runtime.convert(gguf_path, tmp_path / "b1")).config
    assert cfg.router_softmax
    no_gating = synthetic.write_gguf(LAYOUTS["4b"], tmp_path / "n.gguf", weights=weights("4b"), gating_func=False)
    assert not Bundle(runtime.convert(no_gating, tmp_path / "b2")).config.router_softmax  # sigmoid default
    # no `output` tensor: the head falls back to the embedding
    ids = prompt_ids()[:12]
    tied = {k: v for k, v in w.items() if k != "lm_head.weight"}
    ref = reference_logits(dequantized_q4_weights(tied), spec.hf_config(synthetic.make_tokenizer()), ids)
    got = runtime.load(tmp_path / "b1", accuracy_level=0).logits(ids)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def test_tokenizer_and_template_survive_conversion():
    tok = synthetic.make_tokenizer()
    text = "Hello <|im_start|>user\ncafé 日本語 🎉 x = 42<|im_end|>"
    for source in ("gguf", "hf"):
        model = runtime.load(bundle("4b", source))
        assert model.tokenizer.encode(text, add_special_tokens=False).ids == tok.encode(text, add_special_tokens=False).ids
        assert "<|im_start|>" in model.chat_template
        ids = synthetic.special_ids(tok)
        assert ids["<|im_end|>"] in model.eos_token_ids


# -- bad inputs: one clear error, nothing left behind -------------------------------------------

def test_not_smallthinker_gguf(tmp_path):
    path = tmp_path / "llama.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("x", np.zeros((4, 32), np.float32))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConversionError, match="architecture is 'llama'"):
        runtime.convert(path, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_garbage_and_missing_sources(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ConversionError, match="not a readable GGUF"):
        runtime.convert(junk, tmp_path / "out")
    with pytest.raises(ConversionError, match="no such file"):
        runtime.convert(tmp_path / "absent.gguf", tmp_path / "out")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ConversionError, match="no config.json"):
        runtime.convert(empty_dir, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_truncated_gguf(tmp_path):
    data = gguf_file("4b").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ConversionError, match="truncated|not a readable"):
        runtime.convert(path, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_truncated_safetensors_shard(tmp_path):
    src = tmp_path / "hf"
    shutil.copytree(hf_dir("4b"), src)
    shard = sorted(src.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(ConversionError, match="truncated"):
        runtime.convert(src, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_missing_and_misshapen_tensors(tmp_path):
    missing = dict(weights("4b"))
    del missing["model.layers.2.block_sparse_moe.experts.3.up.weight"]
    src = synthetic.write_hf_dir(LAYOUTS["4b"], tmp_path / "a", weights=missing, dtype="float32", shards=1)
    with pytest.raises(ConversionError, match=r"model\.layers\.2\.block_sparse_moe\.experts\.3\.up\.weight is missing"):
        runtime.convert(src, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")
    bad = dict(weights("4b"))
    bad["model.layers.1.self_attn.o_proj.weight"] = bad["model.layers.1.self_attn.o_proj.weight"][:, :32]
    src = synthetic.write_hf_dir(LAYOUTS["4b"], tmp_path / "b", weights=bad, dtype="float32", shards=1)
    with pytest.raises(ConversionError, match=r"o_proj\.weight has shape"):
        runtime.convert(src, tmp_path / "out")
    _assert_nothing_left(tmp_path / "out")


def test_existing_destination_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        runtime.convert(gguf_file("4b"), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_interrupted_conversion_leaves_no_bundle(tmp_path):
    def interrupt(stage, done, total):
        if stage == "layers" and done == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        runtime.convert(gguf_file("4b"), tmp_path / "out", progress=interrupt)
    _assert_nothing_left(tmp_path / "out")


def test_killed_conversion_leaves_no_bundle_and_next_one_completes(tmp_path):
    """SIGKILL in the middle of writing: no bundle appears; converting again cleans up and succeeds."""
    dest = tmp_path / "out"
    script = ("import sys, runtime\n"
              "def stuck(stage, done, total):\n"
              "    print(stage, done, flush=True); sys.stdin.readline()  # never answered: waits for the kill\n"
              "runtime.convert(sys.argv[1], sys.argv[2], progress=stuck)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(gguf_file("21b")), str(dest)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdout.readline().startswith("layers")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dest.exists()
    assert list(tmp_path.glob(".out.partial-*")), "the killed run should have left its partial directory"
    runtime.convert(gguf_file("21b"), dest)
    assert (dest / "manifest.json").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))


def test_load_refuses_broken_bundles(tmp_path):
    with pytest.raises(BundleError, match="no manifest"):
        runtime.load(tmp_path)
    copy = tmp_path / "b"
    shutil.copytree(bundle("4b"), copy)
    with open(copy / "experts.bin", "r+b") as handle:
        handle.truncate(4096)
    with pytest.raises(BundleError, match="experts.bin: missing or truncated"):
        runtime.load(copy)
    (copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        runtime.load(copy)
