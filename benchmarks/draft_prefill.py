"""Time from Enter to the first token of a long message, with and without prefill while typing.

The app prefills the conversation plus the draft while the user types (`ChatSession.
prefill_draft`), so Enter leaves only the prompt's last token and the reply to compute. This
script measures that on a full-size synthetic model: a conversation of one short turn, then a
message of about 300 tokens either sent at once ("without") or typed word by word with the
draft prefilled as it grows ("with"; typing itself is not timed), then Enter. Both variants
alternate in one process, on the same loaded model with every expert already built, and the
medians are written to benchmarks/DRAFT-PREFILL.md.

    python benchmarks/draft_prefill.py [--bundle DIR | --synthetic 4b] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import runtime  # noqa: E402
from runtime.events import TextDelta  # noqa: E402

WORDS = ("the model reads every token of the message before it answers so a long question costs "
         "time after enter unless that work was done while the user was still typing it out").split()


def message(tokenizer, tokens: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    words: list[str] = []
    while len(tokenizer.encode(" ".join(words)).ids) < tokens:
        words.append(WORDS[rng.integers(len(WORDS))])
    return " ".join(words)


def enter_to_first_token(model, text: str, drafted: bool) -> tuple[float, int]:
    session = runtime.ChatSession(model, sampling=runtime.SamplingParams(temperature=0.0), max_tokens=4)
    list(session.send("Hello, can you help me with a question?"))
    if drafted:
        typed = []
        for word in text.split():
            typed.append(word)
            session.prefill_draft(" ".join(typed))
    started = time.perf_counter()
    for event in session.send(text):
        if isinstance(event, TextDelta):
            return time.perf_counter() - started, session.cache.length
    return time.perf_counter() - started, session.cache.length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--synthetic", default="4b")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("DRAFT-PREFILL.md"))
    args = parser.parse_args()
    if args.bundle is None:
        from stchat.bench import synthetic_bundle
        args.bundle = synthetic_bundle(args.synthetic, "skewed", lambda m: print(m, file=sys.stderr))
    model = runtime.load(args.bundle, threads=args.threads)
    model.warm_experts()  # every expert built: the comparison is prefill, not session builds
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        text = message(model.tokenizer, args.tokens, round_)
        for drafted in (False, True):
            seconds, _ = enter_to_first_token(model, text, drafted)
            times[drafted].append(seconds)
            print(f"round {round_} {'with' if drafted else 'without'}: {seconds * 1e3:.0f} ms", file=sys.stderr)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    lines = [f"# Enter to first token, {args.tokens}-token message (revision {revision})", "",
             f"`python benchmarks/draft_prefill.py --rounds {args.rounds} --threads {args.threads}` on "
             f"{args.bundle.name}: a one-turn conversation, then the message sent at once or typed word by "
             f"word with `prefill_draft`; medians of {args.rounds} alternating rounds, every expert built.", "",
             "| | Enter to first token |", "|---|---|",
             f"| without prefill while typing | {without * 1e3:.0f} ms |",
             f"| with prefill while typing | {with_ * 1e3:.0f} ms |",
             f"| ratio | {without / with_:.1f}x |"]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
