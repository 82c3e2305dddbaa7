"""What drawing a streaming reply costs the app's UI thread, without a model: the same measure
on every machine load, for tuning the chat screen (`stream_app_vs_ask.py` is the real figure).

A stand-in engine yields a fixed text at a fixed rate (sleeping between tokens, as a model's
worker releases the GIL while ONNX Runtime runs); Textual runs headless as under `run_test`.
Prints the UI thread's CPU time per token. `--text 4b` is what the synthetic 4B writes
(`[PAD123]` tokens with no space: one long paragraph, the costliest case for the streaming
Markdown); `--text prose` is words with a paragraph break every 40 tokens. `--profile` adds
the UI thread's cProfile, by cumulative time.

    python benchmarks/stream_draw_cost.py --text 4b --rate 20

Results are appended to benchmarks/stream_draw_cost.txt with the git revision.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "tui")]


def pieces(kind: str, tokens: int) -> list[str]:
    rng = random.Random(0)
    if kind == "4b":
        return [f"[PAD{rng.randrange(151_000)}]" for _ in range(tokens)]
    words = ["the", "fox", "learns", "to", "read", "a", "book", "slowly", "and", "with", "joy"]
    return [("\n\n" if i and i % 40 == 0 else " ") + rng.choice(words) for i in range(tokens)]


def engine(text: list[str], delay: float):
    from fakes import FakeEngine, FakeSession
    from runtime.events import Finished, TextDelta

    class Replay(FakeSession):
        def _reply(self):
            started = time.perf_counter()
            for i, piece in enumerate(text):
                time.sleep(delay)
                yield TextDelta(piece, i)
            yield Finished("length", 1, len(text), 0.01, time.perf_counter() - started)

    class Engine(FakeEngine):
        def session(self, model, *, system_prompt, sampling, messages):
            return Replay(self, model, system_prompt, sampling, messages)

    return Engine()


async def measure(text: list[str], delay: float, profile: cProfile.Profile | None) -> tuple[float, float]:
    from stchat.settings import Settings
    from stchat.storage import Store
    from stchat.tui.app import StchatApp
    from stchat.tui.widgets import MessageView, PromptInput

    app = StchatApp(engine=engine(text, delay), store=Store.open(":memory:"), settings=Settings(),
                    native_clipboard=False)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.model is None:
            await pilot.pause(0.01)
        screen = app.screen
        screen.query_one(PromptInput).insert("hello")
        started, ui_cpu = time.perf_counter(), time.thread_time()  # this thread runs the UI
        if profile:
            profile.enable()
        await pilot.press("enter")
        while screen.generating or len(screen.query(MessageView)) < 2:
            await asyncio.sleep(0.02)  # not pilot.pause(): it lays the screen out each time
        if profile:
            profile.disable()
        return time.perf_counter() - started, time.thread_time() - ui_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--text", choices=["4b", "prose"], default="4b")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    text, delay = pieces(args.text, args.tokens), 1 / args.rate
    profile = cProfile.Profile() if args.profile else None
    wall, ui_cpu = asyncio.run(measure(text, delay, profile))
    revision = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip() or "?"
    line = (f"{time.strftime('%Y-%m-%d %H:%M')} revision {revision}: --text {args.text}, {args.tokens} tokens at "
            f"{args.rate:g} tok/s: wall {wall:.2f} s (ideal {args.tokens * delay:.2f}), UI thread CPU "
            f"{ui_cpu:.2f} s = {1000 * ui_cpu / args.tokens:.2f} ms per token, {ui_cpu / wall:.1%} of a core")
    print(line)
    with open(Path(__file__).with_suffix(".txt"), "a", encoding="utf-8") as out:
        out.write(line + "\n")
    if profile:
        report = io.StringIO()
        pstats.Stats(profile, stream=report).sort_stats("cumulative").print_stats(30)
        print(report.getvalue())


if __name__ == "__main__":
    main()
