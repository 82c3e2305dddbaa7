"""llama.cpp, the peer stchat is measured against: its venv, and one measured run of it.

llama-cpp-python is built once from its PyPI sdist into a cache directory, never into the
project's environment, tests or CI: `$STCHAT_PEER_VENV`, default
`~/.cache/stchat-peer/venv-noamx`. The build enables every x86 extension this CPU reports
except AMX: with -DGGML_NATIVE=ON on an AMX Xeon, llama.cpp 0.3.36 crashes in
`ggml_backend_amx_mul_mat` on the first prompt (SmallThinker GGUFs, full-size and small);
the repacked AVX-512 kernels stay. Every run is a fresh process of that venv's Python
running `llama_child.py`; with a cap it runs in a memory cgroup (`stchat.cgroup`, as
`stchat bench --cap`), the GGUF evicted from the page cache first.

    python benchmarks/llama_runner.py GGUF [--prompt-tokens 128] [--gen-tokens 32] [--cap 1GiB] [--no-repack]

prints one JSON object per run (the same keys as `stchat bench --json`'s runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import platformdirs

from stchat import cgroup

PEER_VERSION = "0.3.36"  # llama-cpp-python, the version the issue 11 figures were measured with
CHILD = Path(__file__).with_name("llama_child.py")


# /proc/cpuinfo flag -> ggml CMake option; AMX left out on purpose (see above)
_CPU_OPTIONS = {"avx": "AVX", "avx2": "AVX2", "avx_vnni": "AVX_VNNI", "fma": "FMA", "f16c": "F16C", "bmi2": "BMI2",
                "avx512f": "AVX512", "avx512vbmi": "AVX512_VBMI", "avx512_vnni": "AVX512_VNNI",
                "avx512_bf16": "AVX512_BF16"}


def venv_dir() -> Path:
    return Path(os.environ.get("STCHAT_PEER_VENV") or Path(platformdirs.user_cache_dir("stchat-peer")) / "venv-noamx")


def cmake_args() -> str:
    """This CPU's extensions as explicit ggml options (what GGML_NATIVE would pick), AMX off."""
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    options = [f"-DGGML_{option}={'ON' if flag in flags else 'OFF'}" for flag, option in _CPU_OPTIONS.items()]
    return " ".join(["-DGGML_NATIVE=OFF", *options, "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"])


def llama_python() -> Path:
    """The Python of the llama-cpp-python venv, built on first use (15-25 minutes on 2 cores)."""
    python = venv_dir() / "bin" / "python"
    if python.is_file() and subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return python
    print(f"building llama-cpp-python {PEER_VERSION} from source into {venv_dir()} (once)", file=sys.stderr)
    subprocess.run(["python3", "-m", "venv", str(venv_dir())], check=True)
    env = {**os.environ, "CMAKE_ARGS": cmake_args()}
    subprocess.run([python, "-m", "pip", "install", "--no-cache-dir", "--no-binary", "llama-cpp-python",
                    f"llama-cpp-python=={PEER_VERSION}"], check=True, env=env)
    return python


def child(args: list[str], cap: int | None = None, evict: tuple[Path, ...] = ()) -> dict:
    """`llama_child.py ARGS` in the peer venv; with `cap`, in a memory cgroup of that size."""
    command = [str(llama_python()), str(CHILD), *args]
    if cap is None:
        done, peak = subprocess.run(command, capture_output=True, text=True), None
    else:
        done, peak = cgroup.run(command, cap, evict)
    if done.returncode == -9:
        raise RuntimeError("llama.cpp was killed (out of memory in the cap?)")
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["llama.cpp run failed"])[-1])
    result = json.loads(done.stdout)
    if cap is not None:
        result["cgroup_peak"] = peak / 2**20 if peak is not None else None
    return result


def bench(gguf: Path, prompt_tokens: int, gen_tokens: int, threads: int = 2, cap: int | None = None,
          repack: bool = True) -> dict:
    """One run; `repack=False` is llama-cli's --no-repack (weights served from the mapped file)."""
    options = {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "threads": threads, "repack": repack}
    return child(["bench", str(gguf), json.dumps(options)], cap, (gguf,))


def quantize(src: Path, dst: Path, ftype: str) -> Path:
    child(["quantize", str(src), str(dst), ftype])
    return dst


def logits(gguf: Path, ids: list[int], scratch: Path) -> np.ndarray:
    """llama.cpp's logits for every position of `ids` from an empty context: float32 [S, V]."""
    ids_path, out = scratch / "ids.json", scratch / "llama-logits.npy"
    ids_path.write_text(json.dumps(ids))
    child(["logits", str(gguf), str(ids_path), str(out)])
    return np.load(out)


def main() -> int:
    from stchat.ask import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cap", type=parse_size, help="memory cgroup size, e.g. 1GiB")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-repack", action="store_true", help="weights served from the mapped file")
    args = parser.parse_args()
    for _ in range(args.runs):
        print(json.dumps(bench(args.gguf, args.prompt_tokens, args.gen_tokens, args.threads, args.cap,
                                      not args.no_repack)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
