"""Random-weight SmallThinker checkpoints in the real file layouts, for tests and benchmarks.

Real checkpoints are gigabytes behind a download; tests need something small, offline and
deterministic that still exercises every path of the converters and the runtime. This module
writes a Hugging Face directory (config.json, sharded bf16 safetensors, tokenizer files) or a
llama.cpp GGUF file for any shape, tiny to full 21B. Each tensor is generated on its own from
(name, seed), so full-size files stream to disk without the model ever sitting in memory.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import GGML_QUANT_SIZES, dequantize, quant_shape_to_byte_shape, quantize
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TOKENIZER_SIZE = 512  # 256 byte tokens + 253 merges + 3 specials
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@dataclass(frozen=True)
class SyntheticSpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    expert_ffn_size: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    router_softmax: bool
    rope_layout: tuple[int, ...]            # per layer: 1 RoPE, 0 NoPE
    sliding_window_layout: tuple[int, ...]  # per layer: 1 sliding window, 0 global
    sliding_window_size: int
    tie_word_embeddings: bool
    has_lm_head: bool = True
    routing: str = "uniform"  # or "skewed": a hot quarter of experts takes most routing choices

    def hf_config(self, tokenizer: Tokenizer | None = None, dtype: str = "bfloat16") -> dict:
        """The config.json of this shape, with the real SmallThinker key names."""
        ids = special_ids(tokenizer or make_tokenizer())
        return {
            "architectures": ["SmallThinkerForCausalLM"], "model_type": "smallthinker",
            "num_hidden_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "moe_num_primary_experts": self.num_experts,
            "moe_num_active_primary_experts": self.num_experts_per_tok,
            "moe_ffn_hidden_size": self.expert_ffn_size,
            "moe_primary_router_apply_softmax": self.router_softmax,
            "rope_layout": list(self.rope_layout),
            "sliding_window_layout": list(self.sliding_window_layout),
            "sliding_window_size": self.sliding_window_size, "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": self.context_length,
            "vocab_size": self.vocab_size, "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|endoftext|>"], ids["<|im_end|>"]],
            "hidden_act": "relu", "torch_dtype": dtype, "transformers_version": "4.53.3"}


TINY_4B_LIKE = SyntheticSpec(
    hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=32, num_experts=8,
    num_experts_per_tok=2, expert_ffn_size=64, vocab_size=TOKENIZER_SIZE, context_length=512,
    rope_theta=10000.0, rms_norm_eps=1e-6, router_softmax=True, rope_layout=(1, 1, 1),
    sliding_window_layout=(0, 0, 0), sliding_window_size=0, tie_word_embeddings=True)
TINY_21B_LIKE = replace(   # layer 0 global NoPE, layers 1-3 RoPE + sliding window of 8
    TINY_4B_LIKE, num_layers=4, num_experts_per_tok=3, router_softmax=False, rope_layout=(0, 1, 1, 1),
    sliding_window_layout=(0, 1, 1, 1), sliding_window_size=8, tie_word_embeddings=False)
FULL_4B = SyntheticSpec(
    hidden_size=1536, num_layers=32, num_heads=12, num_kv_heads=2, head_dim=128, num_experts=32,
    num_experts_per_tok=4, expert_ffn_size=768, vocab_size=151936, context_length=32768,
    rope_theta=1.5e6, rms_norm_eps=1e-6, router_softmax=False, rope_layout=(1,) * 32,
    sliding_window_layout=(0,) * 32, sliding_window_size=0, tie_word_embeddings=True)
_EVERY_4TH_GLOBAL = tuple(int(i % 4 != 0) for i in range(52))   # 0: global NoPE, 1: RoPE + sliding
FULL_21B = replace(
    FULL_4B, hidden_size=2560, num_layers=52, num_heads=28, num_kv_heads=4, num_experts=64,
    num_experts_per_tok=6, context_length=16384, rope_layout=_EVERY_4TH_GLOBAL,
    sliding_window_layout=_EVERY_4TH_GLOBAL, sliding_window_size=4096, tie_word_embeddings=False)


def weight_shapes(spec: SyntheticSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of the HF checkpoint in file order, as (name, numpy shape [out, in])."""
    H, F, V = spec.hidden_size, spec.expert_ffn_size, spec.vocab_size
    q_dim, kv_dim = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    shapes = [("model.embed_tokens.weight", (V, H))]
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (H,)),
                   (p + "self_attn.q_proj.weight", (q_dim, H)),
                   (p + "self_attn.k_proj.weight", (kv_dim, H)),
                   (p + "self_attn.v_proj.weight", (kv_dim, H)),
                   (p + "self_attn.o_proj.weight", (H, q_dim)),
                   (p + "post_attention_layernorm.weight", (H,)),
                   (p + "block_sparse_moe.primary_router.weight", (spec.num_experts, H))]
        for j in range(spec.num_experts):
            e = f"{p}block_sparse_moe.experts.{j}."
            shapes += [(e + "gate.weight", (F, H)), (e + "up.weight", (F, H)),
                       (e + "down.weight", (H, F))]
    shapes.append(("model.norm.weight", (H,)))
    if spec.has_lm_head:
        shapes.append(("lm_head.weight", (V, H)))
    return shapes


def make_tensor(name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """One random float32 tensor, a function of (name, seed) only, scaled to keep activations O(1)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1:                       # RMSNorm weights: 1 +- 0.1
        return out * np.float32(0.1) + np.float32(1.0)
    # gain / sqrt(fan_in): q/k/v/gate/up keep unit rms; o/down make residual updates smaller than
    # the stream; router and lm_head logits get std ~3 (well separated top-k, peaked outputs)
    gain = 3.0 if ("primary_router" in name or "lm_head" in name) else \
        0.5 if ("o_proj" in name or ".down." in name) else 1.0
    std = 1.0 if "embed_tokens" in name else gain / np.sqrt(shape[-1])   # embedding: stream rms ~1
    out *= np.float32(std)
    return out


HOT_ROUTER_GAIN = 4.5  # "skewed": router rows of a hot quarter of experts scaled by this


def spec_tensor(spec: SyntheticSpec, name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """`make_tensor`, plus the routing skew the spec asks for.

    With `routing="skewed"`, a random quarter of each layer's experts (seeded per layer) get
    router rows `HOT_ROUTER_GAIN` times longer, so they win most top-k choices, as the
    SmallThinker report measured on the real models (a hot quarter, a long cold tail)."""
    tensor = make_tensor(name, shape, seed)
    if spec.routing == "skewed" and "primary_router" in name:
        layer = int(name.split(".")[2])
        hot = np.random.default_rng([seed, layer, 7]).permutation(shape[0])[: max(1, shape[0] // 4)]
        tensor[hot] *= np.float32(HOT_ROUTER_GAIN)
    return tensor


def iter_weights(spec: SyntheticSpec, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, float32 array) one tensor at a time, in file order."""
    for name, shape in weight_shapes(spec):
        yield name, spec_tensor(spec, name, shape, seed)


def make_weights(spec: SyntheticSpec, seed: int = 0) -> dict[str, np.ndarray]:
    return dict(iter_weights(spec, seed))


# English, code and non-ASCII text for the BPE trainer (it allows ~420 merges; 253 are kept).
_CORPUS = """The quick brown fox jumps over the lazy dog. Hello, world! How are you today?
I think that this is a small model, and it runs on the CPU without a network connection.
Please write a short story about a robot who learns to cook pasta with tomato sauce.
What is the capital of France? The capital of France is Paris, a city on the Seine river.
We're testing the tokenizer: it's small, but they'll see that you've got what you'd need.
Numbers like 3.14159, 2025, 42 and 1e-6 appear in questions about math and physics.
Café au lait, naïve résumé, piñata, Straße, Ünïcödé; 日本語のテキスト、中文文本，한국어 문장.
Emoji: 🙂 🚀 🎉 👍 — quotes “like this” and ‘that’ … done.
def forward(self, hidden_states, attention_mask=None):
    for layer in self.layers:
        hidden_states = layer(self.norm(hidden_states)) + hidden_states
x = np.zeros((4, 8), dtype=np.float32)  # shape [batch, hidden]
for (int i = 0; i < n; ++i) { total += values[i] * weights[i]; }
"""


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_SIZE - len(SPECIAL_TOKENS), show_progress=False, min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))   # appended: ids at the end of the vocab
    assert tok.get_vocab_size() == TOKENIZER_SIZE, tok.get_vocab_size()
    return tok.to_str()


def make_tokenizer() -> Tokenizer:
    """A small deterministic Qwen2-style byte-level BPE (fresh object on every call)."""
    return Tokenizer.from_str(_tokenizer_json())


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even. No NaNs expected."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    round_half_even = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return ((u + round_half_even) >> np.uint32(16)).astype(np.uint16)


_ST_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


def _write_safetensors(path: Path, names_shapes: list, tensors: Iterator[np.ndarray],
                       dtype: str) -> None:
    """Safetensors file: u64 header length, JSON header (8-byte padded), then the raw data."""
    st_dtype, itemsize = _ST_DTYPES[dtype]
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in names_shapes:
        size = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for arr in tensors:
            flat = arr.reshape(-1)
            for start in range(0, flat.size, 1 << 24):   # in slices: no full-size temporaries
                part = flat[start:start + (1 << 24)]
                f.write((bf16_bits(part) if dtype == "bfloat16" else part.astype(dtype)).tobytes())


def write_hf_dir(spec: SyntheticSpec, path, *, seed: int = 0, dtype: str = "bfloat16", shards: int = 2,
                 tokenizer: Tokenizer | None = None, weights: dict | None = None) -> Path:
    """A Hugging Face checkpoint directory. shards == 1 writes a single model.safetensors."""
    path, tokenizer = Path(path), tokenizer or make_tokenizer()
    path.mkdir(parents=True, exist_ok=True)
    shapes = [(n, w.shape) for n, w in weights.items()] if weights else weight_shapes(spec)
    sizes = [int(np.prod(s)) * _ST_DTYPES[dtype][1] for _, s in shapes]
    total, cumulative, groups = sum(sizes), 0, [[] for _ in range(shards)]
    for entry, size in zip(shapes, sizes):   # contiguous split into ~equal byte ranges
        groups[min(shards - 1, cumulative * shards // total)].append(entry)
        cumulative += size
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = (weights[n] if weights else spec_tensor(spec, n, s, seed) for n, s in group)
        _write_safetensors(path / fname, group, tensors, dtype)
        weight_map.update({n: fname for n, _ in group})
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config = spec.hf_config(tokenizer, dtype)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save(str(path / "tokenizer.json"))
    ids = special_ids(tokenizer)
    flags = dict.fromkeys(("lstrip", "normalized", "rstrip", "single_word"), False)
    tokenizer_config = {
        "add_bos_token": False, "add_prefix_space": False, "errors": "replace", "unk_token": None,
        "added_tokens_decoder": {str(i): {"content": t, **flags, "special": True}
                                 for t, i in ids.items()},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "chat_template": CHATML_TEMPLATE,
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "model_max_length": spec.context_length, "tokenizer_class": "Qwen2Tokenizer"}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                  "transformers_version": config["transformers_version"]}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return path


_GGUF_LAYER_NAMES = {  # llama.cpp name -> HF name inside a layer
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_gate_inp": "block_sparse_moe.primary_router"}


# fp16 scale fields (byte offsets in a block) of the types `gguf` cannot quantize: random codes
# with these scales set make valid blocks, and `gguf.quants.dequantize` says what they hold
_RANDOM_BLOCK_SCALES = {GGMLQuantizationType.Q4_K: (0, 2), GGMLQuantizationType.Q5_K: (0, 2),
                        GGMLQuantizationType.Q6_K: (208,)}


def random_quant_blocks(shape: tuple[int, ...], qtype: GGMLQuantizationType, rms: float, seed) -> np.ndarray:
    """Valid blocks of a K-quant type for a float tensor of `shape`: random codes and sub-block
    scales, the fp16 super-block scales set so the weights' root mean square is about `rms`."""
    byte_shape = quant_shape_to_byte_shape(shape, qtype)
    raw = np.random.default_rng(seed).integers(0, 256, size=byte_shape, dtype=np.uint8)
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    blocks = raw.reshape(-1, block_bytes)
    for scale in (1.0, None):  # unit scales first, then rescaled to the wanted rms
        if scale is None:
            got = dequantize(raw, qtype)
            scale = rms / max(float(np.sqrt(np.mean(np.square(got, dtype=np.float64)))), 1e-30)
        for offset in _RANDOM_BLOCK_SCALES[qtype]:
            blocks[:, offset:offset + 2] = np.full((len(blocks), 1), scale, np.float16).view(np.uint8)
    return raw


def _quantize_tensor(data: np.ndarray, qtype: GGMLQuantizationType, name: str, seed: int) -> np.ndarray:
    if qtype in _RANDOM_BLOCK_SCALES:
        rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
        return random_quant_blocks(data.shape, qtype, rms, [seed, zlib.crc32(name.encode())])
    return quantize(data.astype(np.float32, copy=False), qtype)


def _gguf_plan(spec: SyntheticSpec, hf: dict, matrix_type, include_output: bool) -> list:
    """[(gguf name, [HF names stacked into it], numpy shape, ggml type)] in file order.
    Norms and routers stay F32; expert tensors stack to [E, out, in] (GGUF ne = [in, out, E])."""
    pairs = [("token_embd", ["model.embed_tokens.weight"])]
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        pairs += [(f"blk.{i}.{g}", [f"{p}{h}.weight"]) for g, h in _GGUF_LAYER_NAMES.items()]
        for part in ("gate", "up", "down"):
            experts = [f"{p}block_sparse_moe.experts.{j}.{part}.weight" for j in range(spec.num_experts)]
            pairs.append((f"blk.{i}.ffn_{part}_exps", experts))
    pairs.append(("output_norm", ["model.norm.weight"]))
    if include_output and "lm_head.weight" in hf:
        pairs.append(("output", ["lm_head.weight"]))
    plan = []
    for gname, names in pairs:
        shape = hf[names[0]] if len(names) == 1 else (len(names), *hf[names[0]])
        f32 = len(shape) == 1 or "primary_router" in names[0]
        qtype = matrix_type(gname + ".weight") if callable(matrix_type) else matrix_type
        plan.append((gname + ".weight", names, shape, GGMLQuantizationType.F32 if f32 else qtype))
    return plan


def write_gguf(spec: SyntheticSpec, path, *, seed: int = 0,
               matrix_type: GGMLQuantizationType = GGMLQuantizationType.Q4_0,
               tokenizer: Tokenizer | None = None, weights: dict | None = None,
               gating_func: bool = True, include_output: bool = True, progress=None) -> Path:
    """A llama.cpp GGUF file of arch smallthinker; tensors are generated and written one by one.
    `matrix_type` is one type for every matrix, or a function of the GGUF tensor name (K-quant
    types get random valid blocks: the `gguf` package cannot quantize them). `progress(done,
    total)` is called after each tensor."""
    path, tokenizer = Path(path), tokenizer or make_tokenizer()
    w = GGUFWriter(path, "smallthinker")
    arch = "smallthinker."
    w.add_name("SmallThinker synthetic")
    w.add_file_type(0 if callable(matrix_type) else {GGMLQuantizationType.F16: 1, GGMLQuantizationType.Q4_0: 2,
                                                     GGMLQuantizationType.Q8_0: 7}.get(matrix_type, 0))
    w.add_quantization_version(2)
    for key, value in {
            "context_length": spec.context_length, "embedding_length": spec.hidden_size,
            "block_count": spec.num_layers, "feed_forward_length": spec.expert_ffn_size,
            "attention.head_count": spec.num_heads, "attention.head_count_kv": spec.num_kv_heads,
            "attention.key_length": spec.head_dim, "attention.value_length": spec.head_dim,
            "expert_count": spec.num_experts, "expert_used_count": spec.num_experts_per_tok,
            "expert_feed_forward_length": spec.expert_ffn_size}.items():
        w.add_uint32(arch + key, value)
    w.add_float32(arch + "attention.layer_norm_rms_epsilon", spec.rms_norm_eps)
    w.add_float32(arch + "rope.freq_base", spec.rope_theta)
    if gating_func:
        w.add_uint32(arch + "expert_gating_func", 1 if spec.router_softmax else 2)
    if any(spec.sliding_window_layout):
        w.add_uint32(arch + "attention.sliding_window", spec.sliding_window_size)
    # tokenizer: ids beyond the tokenizer's own vocab are padding tokens, as llama.cpp's converter does
    vocab = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    specials = special_ids(tokenizer)
    tokens = [vocab.get(i, f"[PAD{i}]") for i in range(spec.vocab_size)]
    types = [TokenType.CONTROL if t in specials else TokenType.NORMAL if i in vocab
             else TokenType.UNUSED for i, t in enumerate(tokens)]
    merges = json.loads(tokenizer.to_str())["model"]["merges"]   # [a, b] pairs (or "a b" strings)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(specials["<|endoftext|>"])
    w.add_eos_token_id(specials["<|im_end|>"])
    w.add_pad_token_id(specials["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    hf_shapes = {n: arr.shape for n, arr in weights.items()} if weights else dict(weight_shapes(spec))
    plan = _gguf_plan(spec, hf_shapes, matrix_type, include_output)
    for gname, _, shape, qtype in plan:   # all infos first: the header precedes the data
        byte_shape = quant_shape_to_byte_shape(shape, qtype)
        w.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                          raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for index, (gname, names, shape, qtype) in enumerate(plan):
        parts = [weights[n] if weights else spec_tensor(spec, n, hf_shapes[n], seed) for n in names]
        data = np.stack(parts) if len(parts) > 1 else parts[0]
        w.write_tensor_data(_quantize_tensor(data, qtype, gname, seed))
        del parts, data
        if progress is not None:
            progress(index + 1, len(plan))
    w.close()
    return path
