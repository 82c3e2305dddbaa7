"""`stchat ask`: one prompt in, one streamed answer out, for shells and scripts.

stdout is data: it carries only the answer (or, with `--json`, one JSON object), so the command
composes with pipes. Text piped on stdin is put before the prompt (`cat f | stchat ask
'summarise'`). Everything else (conversion progress, notices, `--verbose` statistics, errors)
goes to stderr. Ctrl-C stops the generation after the token in flight, keeps what was
written, and exits 130.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Annotated, Optional, TextIO

import typer

from stchat.exitcodes import ExitCode, UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from '512MB', '1GiB', '2G', '1.5g' or '1000000'. KiB/K are binary, KB decimal."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 512MiB, 2G, 1.5GB)")
    number, unit, binary, byte = match.groups()
    decimal = bool(unit) and byte and not binary  # "MB" is 10^6; "M", "MiB" are 2^20
    base = 1000 if decimal else 1024
    size = int(float(number) * base ** _POWERS[unit.lower()])
    if size <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return size


def memory_budget(option: int | None) -> int | None:
    """`--memory`, else `$STCHAT_MEMORY`, else None (the runtime sizes it to the machine)."""
    if option is not None:
        return option
    text = os.environ.get("STCHAT_MEMORY", "").strip()
    if not text or text.lower() == "auto":
        return None
    try:
        return parse_size(text)
    except ValueError as error:
        raise UsageError(f"STCHAT_MEMORY: {error}") from None


def context_length(option: int | None) -> int | None:
    """`--context`, else `$STCHAT_CONTEXT`, else None (the model's trained length)."""
    if option is not None:
        return option
    text = os.environ.get("STCHAT_CONTEXT", "").strip()
    if not text or text.lower() == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"STCHAT_CONTEXT: not a number of tokens: {text!r}")
    return int(text)


def overflow_message(needed: int, capacity: int, trained: int) -> str:
    """One line for a prompt that cannot fit: both numbers and what to do about it."""
    advice = (f"raise it with --context (this model: up to {trained})" if capacity < trained
              else "this is the model's whole context; shorten the prompt")
    return f"the prompt is {needed} tokens, more than the context of {capacity}: {advice}"


FAST_ROUTING_HELP = ("Let the router prefer experts already in memory among near-tied scores (within "
                     "TOLERANCE standard deviations; try 0.5): fewer expert loads when the model does not fit "
                     "in memory, answers no longer exactly the model's. 0 (default): exact.")


@dataclass
class AskRequest:
    """Everything `ask` needs, gathered from the command line."""

    prompt: str | None = None
    model: str | None = None
    system: str | None = None
    sampling: dict | None = None  # SamplingParams keywords the user set; the rest are defaults
    max_tokens: int = 1024
    threads: int | None = None
    memory: int | None = None
    context: int | None = None
    fast_routing: float = 0.0
    json_output: bool = False
    verbose: bool = False


def build_prompt(prompt: str | None, stdin: TextIO | None) -> str:
    """Piped stdin text, a blank line, then the argument prompt; a usage error when both are empty."""
    piped = ""
    if stdin is not None and not stdin.closed and not stdin.isatty():
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
        piped = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    parts = [part for part in (piped.strip("\n"), prompt or "") if part.strip()]
    if not parts:
        raise UsageError("no prompt: give one as an argument or pipe text on stdin")
    return "\n\n".join(parts)


class _CtrlC:
    """SIGINT handler: the first press while tokens stream cancels the session (the loop ends
    after the token in flight, reason "cancelled"); any other press raises KeyboardInterrupt."""

    def __init__(self):
        self.session = None
        self.streaming = False
        self.pressed = False

    def __call__(self, signum, frame) -> None:
        if self.streaming and not self.pressed and self.session is not None:
            self.pressed = True
            self.session.cancel()
            return
        self.pressed = True
        raise KeyboardInterrupt


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def _report(finished, name: str, load_seconds: float, err: TextIO) -> None:
    prompt_tps = _rate(finished.prompt_tokens, finished.prompt_seconds)
    generation_tps = _rate(finished.generated_tokens, finished.generation_seconds)
    lines = [
        f"model:                {name}",
        f"load duration:        {load_seconds:.3f}s",
        f"prompt eval count:    {finished.prompt_tokens} token(s)",
        f"prompt eval duration: {finished.prompt_seconds:.3f}s",
        f"prompt eval rate:     {prompt_tps:.2f} tokens/s",
        f"eval count:           {finished.generated_tokens} token(s)",
        f"eval duration:        {finished.generation_seconds:.3f}s",
        f"eval rate:            {generation_tps:.2f} tokens/s",
        f"finish reason:        {finished.reason}",
        f"[ Prompt: {prompt_tps:.1f} t/s | Generation: {generation_tps:.1f} t/s ]",
    ]
    print("\n".join(lines), file=err, flush=True)


def _summary(text: str, finished, name: str, load_seconds: float) -> dict:
    return {
        "text": text, "prompt_tokens": finished.prompt_tokens, "generated_tokens": finished.generated_tokens,
        "prompt_seconds": finished.prompt_seconds, "generation_seconds": finished.generation_seconds,
        "prompt_tps": _rate(finished.prompt_tokens, finished.prompt_seconds),
        "generation_tps": _rate(finished.generated_tokens, finished.generation_seconds),
        "load_seconds": load_seconds, "finish_reason": finished.reason, "model": name,
    }


OPTION_OF = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
             "repetition_penalty": "--repeat-penalty", "seed": "--seed"}


def _option_words(message: str) -> str:
    """The runtime's sampling error in the command line's words: `--repeat-penalty must be...`,
    not the `repetition_penalty` field it checks (`None` is the runtime's "not given")."""
    field, _, rest = message.partition(" ")
    return f"{OPTION_OF.get(field, field)} {rest.replace('None or ', '')}"


def ask(request: AskRequest, stdin: TextIO | None, out: TextIO, err: TextIO) -> ExitCode:
    """Run one prompt; returns the exit code. Raises StchatError/runtime errors for main()."""
    text = build_prompt(request.prompt, stdin)
    import runtime  # heavy (numpy, onnxruntime): imported only once there is work to do
    from stchat import usage
    from stchat.models import resolve
    from stchat.progress import Reporter

    try:
        sampling = runtime.SamplingParams(**(request.sampling or {}))
    except ValueError as error:
        raise UsageError(_option_words(str(error))) from None
    resolved = resolve(request.model, Reporter(err))
    ctrl_c = _CtrlC()
    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        started = time.perf_counter()
        try:
            model = runtime.load(resolved.path, memory_budget=request.memory, threads=request.threads,
                                 context=request.context, fast_routing=request.fast_routing)
        except runtime.InvalidContext as error:
            raise UsageError(f"--context: {error}") from None
        load_seconds = time.perf_counter() - started
        try:
            session = runtime.ChatSession(model, system_prompt=request.system, sampling=sampling,
                                          max_tokens=request.max_tokens)
            ctrl_c.session = session
            try:
                events = session.send(text)  # a prompt that cannot fit is refused here, stdout untouched
            except runtime.ContextOverflow as error:
                raise UsageError(overflow_message(error.needed, error.capacity, model.config.context_length)) from None
            pieces, finished = [], None
            try:
                for event in events:
                    if isinstance(event, runtime.TextDelta):
                        ctrl_c.streaming = True
                        pieces.append(event.text)
                        if not request.json_output:
                            out.write(event.text)
                            out.flush()
                    elif isinstance(event, runtime.Notice):
                        print(f"stchat: {event.message}", file=err, flush=True)
                    elif isinstance(event, runtime.Finished):
                        finished = event
            finally:  # also on a second Ctrl-C: end the partial answer's line (if one was started)
                answer = "".join(pieces)
                if not request.json_output and answer and not answer.endswith("\n"):
                    out.write("\n")
                    out.flush()
        finally:
            usage.save(resolved.path, model.expert_usage())  # the app warms the hottest experts first
            model.close()
    except KeyboardInterrupt:
        print("stchat: interrupted", file=err, flush=True)
        return ExitCode.INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    if finished is None:
        raise RuntimeError("the generation ended without reporting a result")
    if request.json_output:
        out.write(json.dumps(_summary(answer, finished, resolved.name, load_seconds), ensure_ascii=False) + "\n")
        out.flush()
    if request.verbose:
        _report(finished, resolved.name, load_seconds, err)
    if finished.reason == "cancelled" or ctrl_c.pressed:
        print("stchat: interrupted", file=err, flush=True)
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def ask_command(
    prompt: Annotated[Optional[str], typer.Argument(
        help="The question. Text piped on stdin is placed before it.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "-m", "--model", help="Installed model name or alias (4b), bundle directory or .gguf file "
        "(converted once). Default: $STCHAT_MODEL, the app's default model (F4), or the only installed one.")] = None,
    system: Annotated[Optional[str], typer.Option("-s", "--system", help="System prompt.")] = None,
    temp: Annotated[Optional[float], typer.Option("--temp", help="Temperature; 0 is greedy (runtime default 0.6).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Keep the k likeliest tokens; 0 disables.")] = None,
    top_p: Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling mass; 1 disables.")] = None,
    min_p: Annotated[Optional[float], typer.Option("--min-p", help="Drop tokens below min_p x the top one.")] = None,
    repeat_penalty: Annotated[Optional[float], typer.Option(
        "--repeat-penalty", help="Penalty for repeated tokens; 1 disables.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed, for repeatable sampling.")] = None,
    max_tokens: Annotated[int, typer.Option(
        "-n", "--max-tokens", min=1, help="Most tokens to generate (fewer when the context fills).")] = 1024,
    threads: Annotated[Optional[int], typer.Option(
        "-t", "--threads", min=1, help="CPU threads (default: the CPUs this process may use).")] = None,
    memory: Annotated[Optional[int], typer.Option(
        "--memory", metavar="SIZE", parser=parse_size,
        help="Memory budget for the weights, e.g. 2GiB, 512MB, 1.5G.")] = None,
    context: Annotated[Optional[int], typer.Option(
        "-c", "--context", min=1, metavar="TOKENS", help="Most tokens of prompt and answer together. "
        "Default: $STCHAT_CONTEXT or the model's trained length (less if the memory budget holds less).")] = None,
    fast_routing: Annotated[float, typer.Option(
        "--fast-routing", min=0.0, metavar="TOLERANCE", help=FAST_ROUTING_HELP)] = 0.0,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (text, token counts, timings, finish reason) at the end.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Print load time and prompt/generation speed on stderr.")] = False,
) -> None:
    """Answer one prompt; only the answer goes to stdout, streamed."""
    chosen = {"temperature": temp, "top_k": top_k, "top_p": top_p, "min_p": min_p,
              "repetition_penalty": repeat_penalty, "seed": seed}
    request = AskRequest(prompt=prompt, model=model, system=system,
                         sampling={k: v for k, v in chosen.items() if v is not None},
                         max_tokens=max_tokens, threads=threads, memory=memory_budget(memory),
                         context=context_length(context), fast_routing=fast_routing,
                         json_output=json_output, verbose=verbose)
    code = ask(request, sys.stdin, sys.stdout, sys.stderr)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))
