"""MatMulNBits weights as shared initializers: used in place, copied only where read at run time."""
import json
import subprocess
import sys

import numpy as np
import pytest

from runtime import graphs, sessions, shared_weights
from runtime.quant import Q4_0, Q8_0, QuantFormat
from skips import linux_only


def _expert(level: int, fmt: QuantFormat, hidden: int = 128, ffn: int = 64):
    shape = type("Shape", (), dict(hidden_size=hidden, expert_ffn_size=ffn))
    graph = shared_weights.share(graphs.expert_graph(shape, level, dict.fromkeys(("gate", "up", "down"), fmt)))
    rng = np.random.default_rng(level * 10 + fmt.bits)
    weights = {}
    for part, n, k in (("gate", ffn, hidden), ("up", ffn, hidden), ("down", hidden, ffn)):
        for suffix, (dtype, dims) in fmt.arrays(n, k).items():
            weights[f"expert/{part}.{suffix}"] = (rng.integers(0, 256, dims, dtype=np.uint8) if dtype == "uint8"
                                                  else rng.random(dims, dtype=np.float32) * 0.02)
    return graph, weights


@pytest.mark.parametrize("level", [1, 4])
@pytest.mark.parametrize("fmt", [Q4_0, Q8_0, QuantFormat(4, 32, True)], ids=["q4", "q8", "q4-mins"])
def test_the_buffers_given_can_be_reused_once_the_session_exists(level, fmt):
    graph, weights = _expert(level, fmt)
    session = sessions.make_session(graph, weights, keep_weights=False)
    h = np.random.default_rng(1).standard_normal((3, 128), dtype=np.float32)
    before = session.run(["y"], {"h": h})[0]
    for array in weights.values():  # the caller reads the next expert into the same buffers
        # (the mins, which feed a Gemm, go as external initializers: ONNX Runtime copies them)
        array[...] = 0 if array.dtype == np.uint8 else np.nan
    assert np.array_equal(session.run(["y"], {"h": h})[0], before)


def test_the_placeholders_of_matmul_weights_become_shared_slots_and_the_rest_stay_external():
    shape = type("Shape", (), dict(hidden_size=64, vocab_size=100, rms_norm_eps=1e-6))
    head = graphs.head_graph(shape, 4)
    shared = shared_weights.share(head)
    assert sessions.initializer_names(shared) == sessions.initializer_names(head)
    assert shared_weights.roles(shared) == {"lm_head.qweight": shared_weights.CONSUMED,
                                            "lm_head.scales": shared_weights.CONSUMED}
    lean = shared_weights.roles(shared_weights.share(graphs.set_accuracy_level(head, 1)))
    assert lean == {"lm_head.qweight": shared_weights.CONSUMED, "lm_head.scales": shared_weights.READ}
    assert shared_weights.roles(head) == {}  # unshared graphs still load as before


CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from test_shared_weights import _expert
from runtime import graphs, memory, sessions
from runtime.quant import Q4_0
memory.configure_allocator(churn=True)
graph, weights = _expert(4, Q4_0, 1536, 768)  # a full-size 4B expert: 2.11 MiB of Q4_0
if sys.argv[2] == "external":  # the weights as external initializers, as before
    graph = graphs.expert_graph(type("Shape", (), dict(hidden_size=1536, expert_ffn_size=768)), 4)
kept = [sessions.make_session(graph, weights, keep_weights=False) for _ in range(3)]
memory.trim_heap()
before = memory.process_rss()
kept += [sessions.make_session(graph, weights, keep_weights=False) for _ in range(40)]
memory.trim_heap()
print(json.dumps((memory.process_rss() - before) / 40 / sum(a.nbytes for a in weights.values())))
"""


@linux_only
def test_a_level_4_session_holds_its_prepacked_weights_and_no_copy_of_them(tmp_path):
    """Measured 1.24x the raw bytes per session; ONNX Runtime's copies made it 1.44x."""
    def per_raw_byte(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", CHILD, str(__import__("pathlib").Path(__file__).parent), mode],
                             check=True, capture_output=True, text=True, timeout=120)
        return json.loads(out.stdout)
    shared, external = per_raw_byte("shared"), per_raw_byte("external")
    assert shared < 1.3 < external, (shared, external)
