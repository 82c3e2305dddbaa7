"""Streaming speed in the chat app against `ask` on the same model: where the app loses time.

`ask` runs the chat session's generator on the main thread and writes each delta to a file.
The app runs the same generator in a thread worker while Textual (headless here, as under
`run_test`) draws every delta into a streaming Markdown widget; both share the GIL, so work on
the UI thread slows generation. For each path this prints the runtime's generation tokens/s
(the same figure `ask --verbose` reports), and for the app also how long after the last token
the screen had drawn the whole reply, and the UI thread's CPU time per token. Runs alternate between the two paths; medians are kept.

    python benchmarks/stream_app_vs_ask.py                    # tiny synthetic model (seconds)
    python benchmarks/stream_app_vs_ask.py --synthetic 4b     # full-size 4B (built once, minutes)

Results are appended to benchmarks/stream_app_vs_ask.txt with the git revision.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Write a long story about a fox who learns to read, with many chapters."


def tiny_bundle(home: Path) -> Path:
    import runtime
    from runtime import synthetic

    gguf = synthetic.write_gguf(synthetic.TINY_4B_LIKE, home / "tiny.gguf")
    return runtime.convert(gguf, home / "models" / "tiny")


def session(model, tokens: int):
    import runtime

    return runtime.ChatSession(model, sampling=runtime.SamplingParams(temperature=1.0, seed=1),
                               max_tokens=tokens)


def cpu_seconds() -> float:
    """CPU time of the whole process, all threads (finished ones too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_ask(model, tokens: int) -> dict:
    from runtime.events import Finished, TextDelta

    cpu = cpu_seconds()
    with open(os.devnull, "w") as out:
        for event in session(model, tokens).send(PROMPT):
            if isinstance(event, TextDelta):
                out.write(event.text)
                out.flush()
            elif isinstance(event, Finished):
                return {"tps": event.generation_tps, "tokens": event.generated_tokens,
                        "cpu_ms_per_token": 1000 * (cpu_seconds() - cpu) / max(1, event.generated_tokens)}
    raise RuntimeError("no Finished event")


class _Engine:
    """The real RuntimeEngine's session, on a model loaded once (the app's loading is not timed)."""

    def __init__(self, model, tokens: int):
        self.model, self.tokens = model, tokens

    def installed(self):
        from stchat.tui.engine import ModelInfo

        return [ModelInfo("bench", Path("."), 0, "-")]

    def load(self, name, **options):  # memory budget, threads, context: the model is loaded already
        return self.model

    def session(self, model, *, system_prompt, sampling, messages):
        return session(model, self.tokens)


async def _run_app(model, tokens: int) -> dict:
    from stchat.settings import Settings
    from stchat.storage import Store
    from stchat.tui.app import StchatApp
    from stchat.tui.widgets import MessageView, PromptInput

    app = StchatApp(engine=_Engine(model, tokens), store=Store.open(":memory:"), settings=Settings(),
                    native_clipboard=False)
    app.unload_model = lambda: None  # the model is shared between runs: never closed here
    async with app.run_test(size=(120, 40)) as pilot:
        while app.model is None:
            if app.loading is None:  # a load that failed would leave this loop waiting forever
                raise RuntimeError(f"the app did not load the model: {[n.message for n in app._notifications]}")
            await pilot.pause(0.01)
        screen = app.screen
        screen.query_one(PromptInput).insert(PROMPT)
        started, ui_cpu, cpu = time.perf_counter(), time.thread_time(), cpu_seconds()  # this thread runs the UI
        await pilot.press("enter")
        while screen.generating or len(screen.query(MessageView)) < 2:
            # not pilot.pause(): it makes every widget process its queue and lays the screen
            # out each time, UI work the app does not do by itself (it doubled the UI's CPU)
            await asyncio.sleep(0.02)
        wall, ui_cpu, cpu = time.perf_counter() - started, time.thread_time() - ui_cpu, cpu_seconds() - cpu
        [conversation] = app.store.conversations()
        stats = app.store.messages(conversation.id)[-1].stats
        lag = wall - stats["prompt_seconds"] - stats["generation_seconds"]
        return {"tps": stats["generation_tps"], "tokens": stats["generated_tokens"], "lag": lag,
                "ui_ms_per_token": 1000 * ui_cpu / max(1, stats["generated_tokens"]),
                "cpu_ms_per_token": 1000 * cpu / max(1, stats["generated_tokens"])}


def run_app(model, tokens: int) -> dict:
    return asyncio.run(_run_app(model, tokens))


def revision() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", choices=["4b"], help="the full-size synthetic 4B instead of a tiny model")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import runtime

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STCHAT_HOME"] = tmp
        if args.synthetic:
            from stchat.bench import synthetic_bundle

            path, label = synthetic_bundle("4b", "skewed", lambda m: print(m, file=sys.stderr)), "synthetic 4b (skewed)"
        else:
            path, label = tiny_bundle(Path(tmp)), "tiny synthetic"
        model = runtime.load(path)
        model.eos_token_ids = ()  # every run generates exactly --tokens tokens
        run_ask(model, 16)  # warm up the sessions and the allocator
        results = {"ask": [], "app": []}
        for _ in range(args.runs):
            results["ask"].append(run_ask(model, args.tokens))
            results["app"].append(run_app(model, args.tokens))
        model.close()

    ask_tps = statistics.median(r["tps"] for r in results["ask"])
    app_tps = statistics.median(r["tps"] for r in results["app"])
    tokens = statistics.median(r["tokens"] for r in results["ask"] + results["app"])
    def runs(path: str) -> str:
        return ", ".join(f"{r['tps']:.0f}" for r in results[path])

    def cpu(path: str) -> float:
        return statistics.median(r["cpu_ms_per_token"] for r in results[path])

    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} revision {revision()}, {label}, {args.runs} runs of "
        f"~{tokens:.0f} tokens, os.cpu_count()={os.cpu_count()}",
        f"ask: generation {ask_tps:.1f} tok/s (runs: {runs('ask')})",
        f"app: generation {app_tps:.1f} tok/s (runs: {runs('app')})",
        f"app / ask: {app_tps / ask_tps:.0%}; the app's screen had the whole reply "
        f"{statistics.median(r['lag'] for r in results['app']):.2f} s (median) after the runtime's timed part",
        f"process CPU per generated token (median): ask {cpu('ask'):.2f} ms, app {cpu('app'):.2f} ms "
        f"(app / ask {cpu('app') / cpu('ask'):.0%})",
        f"app: UI thread CPU {statistics.median(r['ui_ms_per_token'] for r in results['app']):.2f} ms per "
        f"generated token (median; the UI's share of the GIL, less noisy than tok/s on a busy machine)",
        "",
    ]
    print("\n".join(lines))
    with open(Path(__file__).with_suffix(".txt"), "a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
