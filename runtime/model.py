"""The SmallThinker forward pass on ONNX Runtime: embedding, layers, head; prefill and logits.

Per layer, in the model's order:
    router_logits = x @ router^T            fp32, on the raw layer input (pre-attention router)
    x, h = attention_graph(x, kv cache)     x + attn(rmsnorm(x)), rmsnorm of that
    x = x + sum_a w_a * expert_a(h)         ReGLU experts, one ONNX session per expert
Routing is known before attention runs, which is what lets experts be fetched early.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import hugepages, quant
from .bundle import Bundle
from .decode import DecodeBuffers, bind_cache, decode_step
from .errors import BundleError, InvalidContext
from .expert_levels import full_share, layer_charges
from .experts import ExpertStore, warm_order
from .graphs import set_accuracy_level, with_kv_cache
from .kvcache import KV_DTYPES, KVCache
from .memory import available_memory, configure_allocator, default_budget, trim_heap
from .model_memory import ModelMemory
from .routing import gate_weights, prefer_resident
from .sessions import init_thread_pool, initializer_names, make_session
from .shared_weights import share
from .template import DEFAULT_CHATML


def rope_tables(positions: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [positions, D/2] for NeoX rotate-half RoPE."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [D/2]
    angles = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class Model(ModelMemory):
    def __init__(self, bundle: Bundle, *, threads: int | None = None, accuracy_level: int = 4,
                 context: int | None = None, memory_budget: int | None = None, kv_dtype: str = "auto",
                 fast_routing: float = 0.0):
        configure_allocator()
        self.bundle = bundle
        self.config = cfg = bundle.config
        if context is not None and not 1 <= context <= cfg.context_length:
            raise InvalidContext(f"a context of {context} tokens is not possible: this model was trained "
                                 f"for 1 to {cfg.context_length}")
        if kv_dtype not in (*KV_DTYPES, "auto"):
            raise ValueError(f"kv_dtype must be auto or one of {sorted(KV_DTYPES)}, not {kv_dtype!r}")
        self.threads = init_thread_pool(threads)
        self.accuracy_level = accuracy_level
        if fast_routing < 0:
            raise ValueError(f"fast routing takes a tolerance >= 0 (0: off), not {fast_routing}")
        self.fast_routing = fast_routing  # router-score tolerance for resident experts (runtime/routing.py)
        self.context_asked = context
        self.max_context = context or cfg.context_length  # the budget may lower it (_expert_budget)
        self.memory_budget = memory_budget if memory_budget is not None else default_budget()
        self.kv_dtype = kv_dtype if kv_dtype != "auto" else self._auto_kv_dtype()
        try:
            self.tokenizer = Tokenizer.from_str(bundle.text("tokenizer"))
        except Exception as error:
            raise BundleError(f"{bundle.path}: unreadable tokenizer.json ({error})") from None
        self.chat_template = bundle.text("chat_template") or DEFAULT_CHATML
        self.eos_token_ids = tuple(cfg.eos_token_ids)
        self.embedding_format = bundle.matrix_format("embed_tokens")
        # every trained position, before resident memory is measured (4B: 16 MiB)
        self.rope_cos, self.rope_sin = rope_tables(cfg.context_length, cfg.head_dim, cfg.rope_theta)
        self._rope_values = (ort.OrtValue.ortvalue_from_numpy(self.rope_cos),
                             ort.OrtValue.ortvalue_from_numpy(self.rope_sin))
        self.routers = [np.ascontiguousarray(bundle.tensor(f"layers.{i}/router.weight").T)  # [H, E]
                        for i in range(cfg.num_layers)]
        # The head first, while little else is resident: prepacking it briefly holds its mapped
        # Q4 weights, the prepacked copy and scratch. Mapped pages are dropped after each session,
        # so the load peaks below the minimum budget (full-size 4B: 605 MiB, minimum ~630).
        head_weights = {"norm.weight": bundle.tensor("norm.weight")}
        head_source = "lm_head" if bundle.has_tensor("lm_head.qweight") else "embed_tokens"
        head_weights.update((f"lm_head.{suffix}", array) for suffix, array in bundle.matrix_arrays(head_source).items())
        self.head = make_session(self._graph("head"), head_weights)
        bundle.release_pages()
        trim_heap()
        self.attention = []
        for layer in range(cfg.num_layers):
            self.attention.append(self._session(f"layers.{layer}.attention"))
            bundle.release_pages()
        trim_heap()
        self._kv_caches: weakref.WeakSet[KVCache] = weakref.WeakSet()  # live ones, charged as they fill
        room = self._expert_budget(self.memory_budget)
        # the most asked-for experts at full accuracy level, the rest lean, as the room allows;
        # expert reads bypass the page cache when not all fit at full level, or when the
        # experts and their file would not both fit in the memory available (the full-size 21B
        # at the default budget: its first prompt took 33.5-35.8 s through the page cache, the
        # kernel reclaiming it all the while, and 22.7-24.7 s with direct reads)
        full, lean = layer_charges(bundle, accuracy_level), layer_charges(bundle, accuracy_level, lean=True)
        all_full = sum(full) * cfg.num_experts
        self.experts = ExpertStore(bundle, self._graph, room, accuracy_level,
                                   full_share(room, full, lean, cfg.num_experts),
                                   direct_reads=room is not None and (
                                       room < all_full or all_full + bundle.experts_file_bytes > available_memory()))
        self._heap_settled = False  # `_settle_heap`
        self._trim_due = False  # a prompt's freed blocks not yet given back (`prefill`)
        self._in_huge_pages = False  # `warm_experts`
        self.decode_buffers = DecodeBuffers(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok)

    def _graph(self, name: str, level: int | None = None) -> bytes:
        """The bundle's graph `name` as this model runs it, at accuracy `level` (default: the model's)."""
        graph = self.bundle.graph(name)
        if name.endswith(".attention"):
            graph = with_kv_cache(graph, self.kv_dtype)
        level = self.accuracy_level if level is None else level
        return share(graph if level == 4 else set_accuracy_level(graph, level))

    def _session(self, name: str) -> ort.InferenceSession:
        graph = self._graph(name)
        return make_session(graph, {n: self.bundle.tensor(n) for n in initializer_names(graph)})

    def new_cache(self, capacity: int | None = None) -> KVCache:
        """A KV cache for one sequence of at most `capacity` tokens (default and most: the
        model's context)."""
        return self._cache(min(capacity or self.max_context, self.max_context))

    def _cache(self, capacity: int) -> KVCache:
        cache = KVCache(self.kv_layout(capacity))
        self._kv_caches.add(cache)
        return cache

    # -- forward --------------------------------------------------------------------------
    def embed(self, token_ids: np.ndarray) -> np.ndarray:
        """[S] ids -> [1, S, H] float32 rows of the dequantized embedding."""
        fmt = self.embedding_format
        rows = {suffix: self.bundle.read_rows(f"embed_tokens.{suffix}", token_ids) for suffix in fmt.arrays(1, fmt.block)}
        return quant.dequantize(fmt, rows)[None]

    def route(self, layer: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [S, H] -> (experts [S, A] int, weights [S, A] float32)."""
        cfg = self.config
        logits = x @ self.routers[layer]                                     # [S, E]
        top = np.argpartition(-logits, cfg.num_experts_per_tok - 1, axis=-1)[:, :cfg.num_experts_per_tok]
        if self.fast_routing:
            resident = self.experts.resident_mask(layer)
            top = np.stack([prefer_resident(row, chosen, resident, self.fast_routing) for row, chosen in zip(logits, top)])
        top_logits = np.take_along_axis(logits, top, axis=-1)                # [S, A]
        return top, gate_weights(top_logits, cfg.router_softmax).astype(np.float32)

    def _attend(self, layer: int, x: np.ndarray, cache: KVCache, total: int) -> tuple[np.ndarray, np.ndarray]:
        session = self.attention[layer]
        binding = session.io_binding()
        binding.bind_cpu_input("hidden", x)
        binding.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        binding.bind_cpu_input("total_length", np.array(total, np.int32))
        bind_cache(binding, self, layer, cache)
        binding.bind_output("hidden_out")
        binding.bind_output("normed")
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # present_key, present_value, hidden_out, normed
        hidden_out, normed = outputs[2].numpy(), outputs[3].numpy()
        return hidden_out, normed

    def _moe(self, layer: int, h: np.ndarray, experts: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """h [S, H] -> sum over each token's experts of w * expert(h)  [S, H]. The (token, expert)
        pairs are sorted by expert once, not searched for each expert."""
        flat = experts.ravel()                                               # [S*A]
        order = np.argsort(flat, kind="stable")                              # pairs grouped by expert
        grouped, tokens = flat[order], order // experts.shape[1]
        pair_weights = weights.ravel()[order][:, None]                       # [S*A, 1]
        bounds = [0, *(np.flatnonzero(np.diff(grouped)) + 1).tolist(), len(order)]
        out = np.zeros_like(h)
        for start, end in zip(bounds[:-1], bounds[1:]):
            rows = tokens[start:end]
            y = self.experts.run(layer, int(grouped[start]), h[rows])       # [T, H]
            y *= pair_weights[start:end]
            out[rows] += y
        return out

    def _settle_heap(self) -> None:
        """Once every expert is built, sessions stop coming and going: let glibc keep freed
        blocks (`configure_allocator(churn=False)`), so a prompt's activations reuse pages. Full-
        size 4B, 128-token prompt: 111-116k page faults and 114-115 tok/s, then 60k and 123-126. Not
        before, nor once experts are evicted again: blocks freed by builds would stay (peak RSS
        4.9 GB against 3.6)."""
        settled = len(self.experts.cache) == self.config.num_layers * self.config.num_experts
        if settled != self._heap_settled:
            self._heap_settled, self._in_huge_pages = settled, False
            self._give_back()
            configure_allocator(churn=not settled)

    def _give_back(self) -> None:
        self._trim_due = False
        trim_heap()

    def _forward_chunk(self, token_ids: np.ndarray, cache: KVCache) -> np.ndarray:
        """Run S new tokens through every layer; returns the final residual [S, H]."""
        if len(token_ids) == 1:
            return decode_step(self, int(token_ids[0]), cache)
        self._settle_heap()
        x = self.embed(token_ids)                                            # [1, S, H]
        total = cache.length + len(token_ids)
        self.experts.prompt_running = True
        try:
            for layer in range(self.config.num_layers):
                experts, weights = self.route(layer, x[0])
                self.experts.prefetch(layer, experts)
                hidden_out, normed = self._attend(layer, x, cache, total)
                x = hidden_out + self._moe(layer, normed[0], experts, weights)[None]
        finally:
            self.experts.prompt_running = False
        cache.length = total
        cache.tokens.extend(int(t) for t in token_ids)
        return x[0]

    def head_logits(self, x: np.ndarray) -> np.ndarray:
        """final residual [S, H] -> logits [S, V]"""
        return self.head.run(["logits"], {"x": np.ascontiguousarray(x)})[0]

    def prefill(self, token_ids, cache: KVCache, *, chunk_size: int = 256, all_logits: bool = False) -> np.ndarray:
        """Append `token_ids` to `cache`; logits of the last token [V] (or of all [S, V])."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if len(ids) == 0:
            raise ValueError("prefill needs at least one token")
        if len(ids) > cache.free:
            raise ValueError(f"{len(ids)} tokens do not fit: {cache.free} of {cache.capacity} positions free")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError("token id out of range")
        if self._trim_due and len(ids) > 1:
            self._give_back()
        outputs = []
        for start in range(0, len(ids), chunk_size):
            self._charge_kv(cache, cache.length + len(ids[start:start + chunk_size]))
            x = self._forward_chunk(ids[start:start + chunk_size], cache)
            if all_logits:
                outputs.append(self.head_logits(x))
        # glibc keeps a prompt's freed blocks fragmented across its heaps: without a trim (10-20
        # ms) after each, 24 prompts of 16-400 tokens grew the full-size 4B's RSS by 1.2 GB, with
        # it 0.07. It waits for idle time (`warm_experts`) or the next prompt, not the first token.
        self._trim_due = self._trim_due or (len(ids) > 1 and self._heap_settled)
        if all_logits:
            return np.concatenate(outputs)
        return self.head_logits(x[-1:])[0]

    def logits(self, token_ids) -> np.ndarray:
        """float32 [S, V]: logits at every position, from an empty cache of its own sized to
        the input (up to the trained length, whatever the model's context)."""
        if not 1 <= len(token_ids) <= self.config.context_length:
            raise ValueError(f"{len(token_ids)} tokens: logits take 1 to {self.config.context_length}")
        cache = self._cache(len(token_ids))
        return self.prefill(token_ids, cache, all_logits=True)

    def warm_experts(self, usage=None, cancelled=lambda: False) -> int:
        """Build expert sessions before they are asked for, within the free part of the memory
        budget, until `cancelled()`: for idle time, so a first reply does not wait for builds.
        `usage`: [layers, experts] counts from earlier runs (`expert_usage`), hottest built
        first; without it, layer by layer. Once every expert is built, the rest of the idle time
        moves the settled weights into huge pages (`runtime/hugepages.py`). Returns how many were built."""
        cfg = self.config
        if usage is not None and np.shape(usage) == self.experts.requests.shape:
            self.experts.prior = np.asarray(usage, np.float64)  # also decides which are built at full level
        built = self.experts.warm(warm_order(usage, cfg.num_layers, cfg.num_experts), cancelled)
        self._settle_heap()  # gives a prompt's blocks back when it settles the heap...
        if self._trim_due:    # ...and here when it was settled already
            self._give_back()
        if self._heap_settled and not self._in_huge_pages and not cancelled():
            hugepages.collapse_resident(cancelled)
            self._in_huge_pages = not cancelled()
        return built

    def expert_usage(self) -> np.ndarray:
        """int64 [layers, experts]: how often the router asked for each expert since load."""
        return self.experts.requests.copy()

    def close(self) -> None:
        self.experts.close()


def load(bundle: str | Path, *, memory_budget: int | None = None, threads: int | None = None,
         accuracy_level: int = 4, context: int | None = None, kv_dtype: str = "auto",
         fast_routing: float = 0.0) -> Model:
    """Open a bundle directory and build its sessions.

    `memory_budget` bounds the process's resident memory in bytes; None means a share of the
    memory available now (`runtime.memory.DEFAULT_SHARE`). Experts beyond it stay on disk.
    `context` is the most tokens a sequence may hold; None: the trained length, or under a
    budget the longest whose KV cache takes at most a quarter of the room. `kv_dtype` stores
    keys and values in "float16" or "float32"; "auto": float32 when the budget runs the model
    with a float32 cache of 4096 tokens (or the context asked for), else float16
    (`_auto_kv_dtype`). `fast_routing` > 0 lets the router prefer resident experts among
    near-tied scores (within that many standard deviations of a token's router scores;
    `runtime/routing.py`): fewer expert loads when offloading, at a measured cost in fidelity.
    0, the default, is exact."""
    return Model(Bundle(bundle), threads=threads, accuracy_level=accuracy_level, context=context,
                 memory_budget=memory_budget, kv_dtype=kv_dtype, fast_routing=fast_routing)
