"""GGUF files as people download them: mixed tensor types, each computed at its stored precision.

Each file below mixes types the way llama.cpp's quantizer does (a Q4_0 file keeps the output in
Q6_K and k/v in Q8_0; Q4_K_M mixes Q4_K with Q6_K; Q5_K_M with the older Q4_1/Q5_0/Q5_1).
K-quant blocks are built directly (random codes, sane scales): the `gguf` package cannot
quantize them, but its dequantization says what they hold. The reference forward then runs on
exactly those dequantized weights, so any precision the runtime drops shows up as an error.
"""
from dataclasses import replace

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants

import runtime
from model_fixtures import LAYOUTS, prompt_ids
from reference import gguf_file_weights, reference_logits
from runtime import synthetic
from runtime.model_memory import KV_GRANULE

# K-quants need rows of 256: a tiny model with hidden and expert widths of 256
SHAPES = {layout: replace(spec, hidden_size=256, num_heads=4, num_kv_heads=2, head_dim=64, expert_ffn_size=256)
          for layout, spec in LAYOUTS.items()}
def q4_0_mix(name: str) -> T:  # what `llama-quantize ... Q4_0` writes
    return T.Q6_K if name == "output.weight" else T.Q8_0 if ("attn_k" in name or "attn_v" in name) else T.Q4_0


def q4_k_m(name: str) -> T:  # Q4_K, with Q6_K for the output, attn_v and half of ffn_down
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    wide = name == "output.weight" or "attn_v" in name or ("ffn_down" in name and layer % 2 == 0)
    return T.Q6_K if wide else T.Q4_K


def q5_mix(name: str) -> T:  # Q5_K and the legacy types with a min or an offset
    for part, qtype in (("attn_q", T.Q5_1), ("attn_output", T.Q4_1), ("ffn_up", T.Q5_0), ("output.", T.Q6_K)):
        if part in name:
            return qtype
    return T.Q5_K


MIXES = {"q4_0-mix": q4_0_mix, "q4_k_m": q4_k_m, "q5-mix": q5_mix}


@pytest.fixture(scope="module", params=[(mix, layout) for mix in MIXES for layout in SHAPES], ids=lambda p: "-".join(p))
def converted(request, tmp_path_factory):
    mix, layout = request.param
    spec = SHAPES[layout]
    root = tmp_path_factory.mktemp(f"{mix}-{layout}")
    # the 4B-like file has no output tensor: the (K-quant) embedding is the head
    path = synthetic.write_gguf(spec, root / "m.gguf", matrix_type=MIXES[mix], include_output=layout != "4b")
    return spec, path, runtime.convert(path, root / "bundle")


def _reference(spec, path, ids):
    return reference_logits(gguf_file_weights(path), spec.hf_config(synthetic.make_tokenizer()), ids)


def test_every_matrix_keeps_the_precision_of_the_file(converted):
    spec, path, bundle = converted
    ids = prompt_ids()[:40]
    got = runtime.load(bundle, accuracy_level=0).logits(ids)
    ref = _reference(spec, path, ids)
    # fp32 arithmetic on exactly the file's weights: float rounding only
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_fast_path_agrees_with_the_reference(converted):
    """Accuracy level 4 (int8 activations, as llama.cpp's quantized dot products) on mixed files."""
    spec, path, bundle = converted
    ids = prompt_ids()[:40]
    got = runtime.load(bundle).logits(ids)
    ref = _reference(spec, path, ids)
    relative = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert np.median(relative) < 0.03, np.median(relative)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_manifest_records_each_matrix_and_nothing_is_lossy(converted):
    _, path, bundle = converted
    b = runtime.bundle.Bundle(bundle)
    source = b.manifest["source"]
    assert source["lossy"] is False and source["quantization"] == "as stored"
    stored = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert b.manifest["matrices"]["embed_tokens"]["source_type"] == stored["token_embd.weight"]
    for layer in range(b.config.num_layers):
        formats = b.expert_formats(layer)
        for matrix, qtype in (("gate", stored[f"blk.{layer}.ffn_gate_exps.weight"]),
                              ("down", stored[f"blk.{layer}.ffn_down_exps.weight"])):
            assert formats[matrix] == runtime.quant.EXACT[T[qtype]], (layer, matrix)


def test_experts_rebuilt_from_disk_stay_exact(converted):
    """With room for one layer's experts, every expert is read again into a reused buffer and
    rebuilt: the per-block mins must not alias that buffer."""
    _, _, bundle = converted
    roomy = runtime.load(bundle, accuracy_level=0)
    tight = runtime.load(bundle, accuracy_level=0, context=KV_GRANULE)  # token 1 charges the whole KV cache
    cache_a, cache_b = roomy.new_cache(), tight.new_cache()
    for step, token in enumerate(prompt_ids()[:16]):
        np.testing.assert_array_equal(roomy.prefill([token], cache_a), tight.prefill([token], cache_b))
        if step == 0:  # room for one token's experts of one layer: every token evicts
            tight.experts.set_budget(tight.config.num_experts_per_tok * tight.experts.charge)
    assert tight.experts.cache.stats.evictions > 16


def test_float_matrices_in_a_gguf_keep_eight_bits(tmp_path):
    spec = SHAPES["21b"]
    path = synthetic.write_gguf(spec, tmp_path / "f16.gguf", matrix_type=T.F16)
    b = runtime.bundle.Bundle(runtime.convert(path, tmp_path / "b"))
    assert {info["format"] for info in b.manifest["matrices"].values()} == {"q8b32"}
    assert b.manifest["source"]["lossy"] is True  # 16 -> 8 bits, recorded
    ids = prompt_ids()[:24]
    through_q8_0 = {name: quants.dequantize(quants.quantize(w.astype(np.float32), T.Q8_0), T.Q8_0)
                    if w.ndim == 2 and "primary_router" not in name else w for name, w in gguf_file_weights(path).items()}
    ref = reference_logits(through_q8_0, spec.hf_config(synthetic.make_tokenizer()), ids)
    got = runtime.load(b.path, accuracy_level=0).logits(ids)
    np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max(), rtol=0)


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(runtime.errors.ConversionError, match="unknown quantization"):
        runtime.convert(tmp_path / "x.gguf", tmp_path / "b", quantize="q3")


def test_format_1_bundles_still_load(tmp_path):
    """Bundles converted before formats existed (every matrix Q4_0, one graph `expert`) still run."""
    import json
    import shutil

    from model_fixtures import bundle
    old = tmp_path / "old"
    shutil.copytree(bundle("21b"), old)
    manifest = json.loads((old / "manifest.json").read_text())
    (layout,) = manifest["experts"]["layouts"].values()
    (old / "graphs" / f"{layout['graph']}.onnx").rename(old / "graphs" / "expert.onnx")
    manifest["graphs"] = {k: v for k, v in manifest["graphs"].items() if not k.startswith("expert.")}
    manifest["graphs"]["expert"] = "graphs/expert.onnx"
    manifest["files"]["graphs/expert.onnx"] = manifest["files"].pop(f"graphs/{layout['graph']}.onnx")
    manifest["experts"] = {"file": "experts.bin", "stride": manifest["experts"]["stride"], "arrays": layout["arrays"]}
    del manifest["matrices"]
    manifest["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    ids = prompt_ids()[:12]
    np.testing.assert_array_equal(runtime.load(old).logits(ids), runtime.load(bundle("21b")).logits(ids))
