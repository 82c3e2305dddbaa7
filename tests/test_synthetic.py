"""The synthetic checkpoints (runtime/synthetic.py) and the float reference (tests/reference.py)."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import jinja2
import ml_dtypes
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize, quantize
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from reference import dequantized_q4_weights, reference_logits  # noqa: E402

from runtime.synthetic import (  # noqa: E402
    CHATML_TEMPLATE, FULL_4B, FULL_21B, TINY_4B_LIKE, TINY_21B_LIKE, bf16_bits, iter_weights,
    make_tokenizer, make_weights, special_ids, weight_shapes, write_gguf, write_hf_dir)

Q4_0 = GGMLQuantizationType.Q4_0
TEXT = "Hello, world! Café, naïve 日本語 🙂🚀\n\tdef f(x):  return x * 42  # ok\r\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return make_tokenizer()


@pytest.fixture(scope="module")
def weights_21b() -> dict:
    return make_weights(TINY_21B_LIKE, seed=1)


@pytest.fixture(scope="module")
def prompt(tokenizer) -> list[int]:
    text = ("<|im_start|>user\nTell me about the capital of France, then write a short story "
            "about a robot who cooks pasta.<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.encode(text).ids
    assert len(ids) > 3 * TINY_21B_LIKE.sliding_window_size
    return ids


# ---------------------------------------------------------------- specs and weights

def test_spec_shapes_and_config():
    for spec in (TINY_4B_LIKE, TINY_21B_LIKE, FULL_4B, FULL_21B):
        assert len(spec.rope_layout) == len(spec.sliding_window_layout) == spec.num_layers
        assert spec.hidden_size % 32 == 0 and spec.expert_ffn_size % 32 == 0
        cfg = spec.hf_config()
        assert cfg["model_type"] == "smallthinker"
        assert cfg["architectures"] == ["SmallThinkerForCausalLM"]
        assert cfg["moe_num_primary_experts"] == spec.num_experts
        assert cfg["eos_token_id"] == [509, 511] and cfg["bos_token_id"] == 509
    assert TINY_21B_LIKE.rope_layout == (0, 1, 1, 1) == TINY_21B_LIKE.sliding_window_layout
    params = {spec: sum(int(np.prod(s)) for _, s in weight_shapes(spec)) for spec in (FULL_4B, FULL_21B)}
    assert 4.0e9 < params[FULL_4B] < 4.5e9
    assert 21e9 < params[FULL_21B] < 22.5e9
    assert FULL_21B.rope_layout[:5] == (0, 1, 1, 1, 0) and FULL_21B.sliding_window_size == 4096


def test_weights_are_deterministic_and_shaped():
    a, b = make_weights(TINY_4B_LIKE), make_weights(TINY_4B_LIKE)
    assert list(a) == [name for name, _ in weight_shapes(TINY_4B_LIKE)]
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == np.float32 for k in a)
    assert dict(weight_shapes(TINY_4B_LIKE)) == {k: v.shape for k, v in a.items()}
    other = dict(iter_weights(TINY_4B_LIKE, seed=5))
    assert not np.array_equal(a["model.norm.weight"], other["model.norm.weight"])
    assert "lm_head.weight" in a
    from dataclasses import replace
    assert "lm_head.weight" not in make_weights(replace(TINY_4B_LIKE, has_lm_head=False))


def test_bf16_rounding_matches_ml_dtypes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32),
                        np.array([1.0, -2.5, 1 + 2**-8, 1 + 3 * 2**-8, 3.4e38, -1e-40, 0.0],
                                 np.float32)])
    expected = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(bf16_bits(x), expected)


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_roundtrip_and_specials(tokenizer):
    assert tokenizer.get_vocab_size() == 512
    ids = special_ids(tokenizer)
    assert ids == {"<|endoftext|>": 509, "<|im_start|>": 510, "<|im_end|>": 511}
    assert tokenizer.decode(tokenizer.encode(TEXT).ids) == TEXT
    for token, token_id in ids.items():
        assert tokenizer.encode(f"a{token}b").ids[1] == token_id
        assert tokenizer.encode(token).ids == [token_id]
    # every byte is in the alphabet: arbitrary text never needs an unknown token
    weird = bytes(range(1, 256)).decode("latin-1") + "\U0001F9EA\u200b"
    assert tokenizer.decode(tokenizer.encode(weird).ids) == weird
    # merges make common words shorter than their bytes
    assert len(tokenizer.encode(" the capital of France").ids) < len(" the capital of France")


def test_tokenizer_is_deterministic(tokenizer):
    assert make_tokenizer().to_str() == tokenizer.to_str()
    assert make_tokenizer() is not make_tokenizer()


def test_chat_template_renders_chatml():
    env = jinja2.Environment()
    text = env.from_string(CHATML_TEMPLATE).render(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")


# ---------------------------------------------------------------- GGUF

def _fields(reader: GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def test_gguf_q4_0_layout_and_values(tmp_path, tokenizer, weights_21b):
    spec = TINY_21B_LIKE
    path = write_gguf(spec, tmp_path / "m.gguf", weights=weights_21b)
    reader = GGUFReader(path)
    meta = _fields(reader)
    assert meta["general.architecture"] == "smallthinker"
    a = "smallthinker."
    expected = {"context_length": 512, "embedding_length": 64, "block_count": 4,
                "feed_forward_length": 64,
                "attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 32,
                "attention.value_length": 32, "expert_count": 8, "expert_used_count": 3,
                "expert_feed_forward_length": 64, "expert_gating_func": 2, "attention.sliding_window": 8}
    assert {k: meta[a + k] for k in expected} == expected
    assert meta[a + "rope.freq_base"] == pytest.approx(1e4)
    assert meta[a + "attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    tokens = meta["tokenizer.ggml.tokens"]
    assert tokens == [tokenizer.id_to_token(i) for i in range(512)]
    types = meta["tokenizer.ggml.token_type"]
    assert types[509:] == [TokenType.CONTROL] * 3 and set(types[:509]) == {TokenType.NORMAL}
    merges = meta["tokenizer.ggml.merges"]
    assert len(merges) == 253 and all(len(m.split(" ")) == 2 for m in merges)
    assert meta["tokenizer.ggml.bos_token_id"] == 509 and meta["tokenizer.ggml.eos_token_id"] == 511
    assert meta["tokenizer.chat_template"] == CHATML_TEMPLATE

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 4 * 10
    deq = dequantized_q4_weights(weights_21b)
    emb = tensors["token_embd.weight"]
    assert emb.tensor_type == Q4_0 and list(emb.shape) == [64, 512]    # GGUF ne order
    assert np.array_equal(dequantize(emb.data, Q4_0), deq["model.embed_tokens.weight"])
    assert np.array_equal(dequantize(tensors["output.weight"].data, Q4_0), deq["lm_head.weight"])
    p = "model.layers.2."
    assert np.array_equal(dequantize(tensors["blk.2.attn_output.weight"].data, Q4_0),
                          deq[p + "self_attn.o_proj.weight"])
    router = tensors["blk.2.ffn_gate_inp.weight"]
    assert router.tensor_type == GGMLQuantizationType.F32 and list(router.shape) == [64, 8]
    assert np.array_equal(router.data, weights_21b[p + "block_sparse_moe.primary_router.weight"])
    norm = tensors["blk.2.ffn_norm.weight"]
    assert norm.tensor_type == GGMLQuantizationType.F32
    assert np.array_equal(norm.data, weights_21b[p + "post_attention_layernorm.weight"])
    down = tensors["blk.2.ffn_down_exps.weight"]
    assert down.tensor_type == Q4_0 and list(down.shape) == [64, 64, 8]   # [F, H, E] in ne order
    stacked = np.stack([deq[f"{p}block_sparse_moe.experts.{j}.down.weight"] for j in range(8)])
    assert np.array_equal(dequantize(down.data, Q4_0), stacked)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16,
                                   GGMLQuantizationType.F32])
def test_gguf_other_matrix_types(tmp_path, qtype):
    weights = make_weights(TINY_4B_LIKE)
    path = write_gguf(TINY_4B_LIKE, tmp_path / "m.gguf", matrix_type=qtype, gating_func=False,
                      include_output=False)
    reader = GGUFReader(path)
    meta = _fields(reader)
    assert "smallthinker.expert_gating_func" not in meta
    assert "smallthinker.attention.sliding_window" not in meta
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors and "output_norm.weight" in tensors
    gate = tensors["blk.1.ffn_gate_exps.weight"]
    assert gate.tensor_type == qtype and list(gate.shape) == [64, 64, 8]
    expected = np.stack([weights[f"model.layers.1.block_sparse_moe.experts.{j}.gate.weight"]
                         for j in range(8)])
    expected = dequantize(quantize(expected, qtype), qtype)
    got = dequantize(np.ascontiguousarray(gate.data), qtype).reshape(expected.shape)
    assert np.array_equal(got, expected)


def test_gguf_softmax_gating_key(tmp_path):
    meta = _fields(GGUFReader(write_gguf(TINY_4B_LIKE, tmp_path / "m.gguf")))
    assert meta["smallthinker.expert_gating_func"] == 1


# ---------------------------------------------------------------- Hugging Face directory

def _read_bf16_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse a safetensors file by hand (safetensors.numpy cannot read BF16)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "BF16"
        start, end = info["data_offsets"]
        bits = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=np.uint16)
        out[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
    return out


def test_hf_dir_bf16(tmp_path, tokenizer, weights_21b):
    spec = TINY_21B_LIKE
    path = write_hf_dir(spec, tmp_path / "hf", weights=weights_21b, shards=3)
    config = json.loads((path / "config.json").read_text())
    assert config == spec.hf_config(tokenizer)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert set(index["weight_map"]) == set(weights_21b)
    loaded = {}
    for name in files:
        with safe_open(path / name, framework="numpy") as f:   # the official parser accepts it
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == name}
        loaded.update(_read_bf16_safetensors(path / name))
    assert index["metadata"]["total_size"] == 2 * sum(w.size for w in weights_21b.values())
    for name, w in weights_21b.items():
        assert np.array_equal(loaded[name], w.astype(ml_dtypes.bfloat16).astype(np.float32)), name
    assert Tokenizer.from_file(str(path / "tokenizer.json")).to_str() == tokenizer.to_str()
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHATML_TEMPLATE and tok_cfg["eos_token"] == "<|im_end|>"
    assert tok_cfg["added_tokens_decoder"]["511"]["content"] == "<|im_end|>"
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [509, 511]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_hf_dir_single_file(tmp_path, dtype):
    path = write_hf_dir(TINY_4B_LIKE, tmp_path / "hf", dtype=dtype, shards=1)
    assert not (path / "model.safetensors.index.json").exists()
    loaded = load_file(path / "model.safetensors")
    weights = make_weights(TINY_4B_LIKE)
    assert set(loaded) == set(weights)
    for name, w in weights.items():
        assert loaded[name].dtype == np.dtype(dtype)
        assert np.array_equal(loaded[name], w.astype(dtype))
    assert json.loads((path / "config.json").read_text())["torch_dtype"] == dtype


# ---------------------------------------------------------------- the float reference

def test_reference_is_causal(weights_21b, prompt):
    cfg = TINY_21B_LIKE.hf_config()
    full = reference_logits(weights_21b, cfg, prompt)
    assert full.shape == (len(prompt), 512) and full.dtype == np.float32
    assert np.all(np.isfinite(full)) and 0.5 < full.std() < 20
    changed = list(prompt)
    changed[20:] = [(t + 7) % 500 for t in changed[20:]]
    other = reference_logits(weights_21b, cfg, changed)
    np.testing.assert_allclose(other[:20], full[:20], rtol=0, atol=1e-5)
    assert not np.allclose(other[20:], full[20:], atol=1e-2)
    np.testing.assert_allclose(reference_logits(weights_21b, cfg, prompt[:12]), full[:12], atol=1e-5)


def test_reference_sliding_window_matters(weights_21b, prompt):
    cfg = TINY_21B_LIKE.hf_config()
    window = cfg["sliding_window_size"]
    no_window = dict(cfg, sliding_window_layout=[0] * 4)
    slid = reference_logits(weights_21b, cfg, prompt)
    full = reference_logits(weights_21b, no_window, prompt)
    # a position below the window sees every earlier key either way
    np.testing.assert_allclose(slid[:window], full[:window], atol=1e-5)
    assert np.abs(slid[window:] - full[window:]).max(axis=-1).min() > 1e-3


def test_reference_router_and_rope_flags_matter(weights_21b, prompt):
    cfg = TINY_21B_LIKE.hf_config()
    base = reference_logits(weights_21b, cfg, prompt)
    softmax = reference_logits(weights_21b, dict(cfg, moe_primary_router_apply_softmax=True), prompt)
    assert np.abs(base - softmax).max() > 1e-2
    all_rope = reference_logits(weights_21b, dict(cfg, rope_layout=[1] * 4), prompt)
    assert np.abs(base[1:] - all_rope[1:]).max() > 1e-2
    np.testing.assert_allclose(base[0], all_rope[0], atol=1e-5)   # position 0: RoPE is identity


def test_reference_tied_head_falls_back_to_embedding(weights_21b, prompt):
    cfg = TINY_21B_LIKE.hf_config()
    untied = {k: v for k, v in weights_21b.items() if k != "lm_head.weight"}
    tied = dict(untied, **{"lm_head.weight": untied["model.embed_tokens.weight"]})
    np.testing.assert_array_equal(reference_logits(untied, cfg, prompt[:6]),
                                  reference_logits(tied, cfg, prompt[:6]))


def test_dequantized_q4_weights(weights_21b, prompt):
    deq = dequantized_q4_weights(weights_21b)
    router = "model.layers.0.block_sparse_moe.primary_router.weight"
    assert deq[router] is weights_21b[router]
    assert deq["model.norm.weight"] is weights_21b["model.norm.weight"]
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.3.self_attn.q_proj.weight",
                 "model.layers.3.block_sparse_moe.experts.5.down.weight"):
        w, d = weights_21b[name], deq[name]
        assert d.shape == w.shape and d.dtype == np.float32 and not np.array_equal(d, w)
        assert np.abs(d - w).max() < 0.2 * np.abs(w).max()
        # Q4_0: at most 16 distinct values per block of 32
        assert len(np.unique(d[0, :32])) <= 16
    # the quantized model is a perturbation of the float one, not a different model
    cfg = TINY_21B_LIKE.hf_config()
    a, b = reference_logits(weights_21b, cfg, prompt), reference_logits(deq, cfg, prompt)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8
