"""A server's first request: how long until its first token, sent at once or after idle time.

`stchat serve` builds the model's expert sessions while no request waits (most used first), so
a first request that comes after some idle time finds them built, and one sent the moment the
server is ready waits for the builds its prompt needs. This script starts `stchat serve` on a
bundle (default: the full-size synthetic 4B, skewed), waits IDLE seconds after it says it is
ready, streams one chat request (a 100-word message, 4 tokens of reply) and times its first
token; a fresh server (and data directory) per measurement, for each idle time given.

    python benchmarks/serve_first_request.py [--bundle DIR] [--idle 0 8]

Appends a table to benchmarks/SERVE-FIRST-REQUEST.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from report import append_table  # noqa: E402  (a sibling: this directory is on the path)

OUT = ROOT / "benchmarks" / "SERVE-FIRST-REQUEST.md"
DEFAULT = Path.home() / ".cache" / "stchat" / "synthetic" / "4b-skewed"
PORT = 8391


def first_token_seconds(bundle: Path, idle: float) -> float:
    home = tempfile.TemporaryDirectory()  # no expert usage record from earlier runs: a first start
    server = subprocess.Popen([sys.executable, "-m", "stchat", "serve", "-m", str(bundle), "--port", str(PORT)],
                              cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                              env=dict(os.environ, STCHAT_HOME=home.name))
    try:
        for line in server.stderr:  # "... http://127.0.0.1:PORT/v1 ..." once loaded and listening
            if "http://" in line:
                break
        else:
            raise RuntimeError(f"the server did not start (port {PORT} taken?)")
        time.sleep(idle)
        words = random.Random(0).choices(["alpha", "beta", "gamma", "delta", "omega", "zeta"], k=100)
        body = {"messages": [{"role": "user", "content": " ".join(words)}], "max_tokens": 4, "stream": True}
        request = urllib.request.Request(f"http://127.0.0.1:{PORT}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            for line in response:
                if line.startswith(b"data: {"):
                    delta = json.loads(line[6:])["choices"]
                    if delta and delta[0]["delta"].get("content"):
                        return time.perf_counter() - started
        raise RuntimeError("the reply had no text")
    finally:
        server.terminate()
        server.wait()
        home.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT)
    parser.add_argument("--idle", type=float, nargs="+", default=[0, 8])
    args = parser.parse_args()
    rows = []
    for idle in args.idle:
        rows.append(f"| {idle:g} s | {first_token_seconds(args.bundle, idle):.2f} s |")
        print(rows[-1], flush=True)
    append_table(OUT, "A server's first request (benchmarks/serve_first_request.py)",
                 f"{args.bundle.name}, a 100-word chat message, one fresh server per row",
                 ["idle before the request", "time to first token"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
