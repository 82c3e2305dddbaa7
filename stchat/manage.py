"""`stchat list`, `show` and `rm`: what is installed, what it needs, and getting rid of it.

Everything here reads the bundle's `manifest.json` and the pull record next to it, never loads
the model (so these commands work on a machine too small to run it). The smallest memory budget
shown is `runtime.memory.minimum_budget`, the same function the runtime refuses a budget with.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from stchat import install
from stchat.exitcodes import StchatError, UsageError
from stchat.models import installed_models, installed_name, not_installed
from stchat.paths import models_dir
from stchat.progress import human_bytes



@dataclass
class Installed:
    name: str
    path: Path
    manifest: dict
    record: dict

    @property
    def source(self) -> str:
        rec, src = self.record, self.manifest.get("source", {})
        if rec.get("repo"):
            return f"{rec['repo']}" + (f" {rec['file']}" if rec.get("kind") == "gguf" else "")
        return rec.get("path") or src.get("path") or "?"

    @property
    def quantization(self) -> str:
        """`Q4_0+Q6_K` for a GGUF kept as stored; `q4b32 (from BF16, lossy)` when quantized here."""
        src = self.manifest.get("source", {})
        origin = "+".join(t for t in src.get("source_types", []) if t not in ("F32",))
        quant = src.get("quantization", "?")
        if quant == "as stored":
            return origin or quant
        if not origin or origin == quant:
            return quant
        lossy = ", lossy" if src.get("lossy") and src.get("kind") == "gguf" else ""  # a checkpoint always is
        return f"{quant} (from {origin}{lossy})"

    def _expert_layouts(self) -> list[dict]:
        """Per layer: the manifest's expert layout ({"formats", "arrays", ...}) of that layer."""
        from runtime.bundle import manifest_expert_layouts

        layouts, layers = manifest_expert_layouts(self.manifest)
        return [layouts[key] for key in layers]

    def storage(self) -> dict[str, int]:
        """Stored format -> bytes of the matrices kept in it (experts and dense, not norms/routers)."""
        out: dict[str, int] = {}
        for name, info in self.manifest.get("matrices", {}).items():
            out[info["format"]] = out.get(info["format"], 0) + info["bytes"]
        from runtime.bundle import array_bytes

        per_layer = self.manifest["config"]["num_experts"]
        for layout in self._expert_layouts():
            for matrix, fmt in layout["formats"].items():
                size = array_bytes(spec for key, spec in layout["arrays"].items() if key.startswith(matrix + "."))
                out[fmt] = out.get(fmt, 0) + size * per_layer
        return dict(sorted(out.items(), key=lambda item: -item[1]))

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    @property
    def problem(self) -> str | None:
        """Why the bundle is incomplete (a file missing or cut short), None when every file is there."""
        return install.bundle_problem(self.path)

    @property
    def date(self) -> str:
        stamp = self.record.get("installed") or self.manifest.get("created") or ""
        return stamp.replace("T", " ").rstrip("Z")[:16]

    def memory(self, context: int | None = None) -> dict[str, int]:
        """Bytes: dense, experts (all), one expert and its session's charge, KV cache, all in RAM,
        and the smallest budget (`runtime.memory.minimum_budget`: what the runtime refuses below)
        for `context` tokens (none asked: SMALLEST_AUTO_CONTEXT, as the runtime counts)."""
        from runtime.bundle import array_bytes
        from runtime.config import ModelConfig
        from runtime.expert_levels import layout_charge
        from runtime.kvcache import KVLayout
        from runtime.memory import minimum_budget
        from runtime.model_memory import SMALLEST_AUTO_CONTEXT

        cfg = self.manifest["config"]
        files = self.manifest.get("files", {})
        dense = files.get("dense.bin", {}).get("size", 0)
        layouts = self._expert_layouts()
        sizes = [array_bytes(layout["arrays"].values()) for layout in layouts]
        one, experts = max(sizes), sum(sizes) * cfg["num_experts"]
        # keys and values in float16, as the runtime keeps them whenever memory is short
        config = ModelConfig.from_dict(cfg)
        kv = KVLayout.for_model(config, cfg["context_length"], "float16").nbytes()
        floor_tokens = min(context or SMALLEST_AUTO_CONTEXT, cfg["context_length"])
        floor = KVLayout.for_model(config, floor_tokens, "float16").nbytes()
        charge = max(layout_charge(layout) for layout in layouts)
        minimum = minimum_budget(dense_bytes=dense, kv_bytes=floor, charge=charge,
                                 experts_per_tok=cfg["num_experts_per_tok"])
        return {"dense": dense, "experts": experts, "expert": one, "expert_charge": charge, "kv_cache": kv,
                "kv_tokens": cfg["context_length"], "kv_per_token": kv // cfg["context_length"],
                "kv_floor": floor, "kv_floor_tokens": floor_tokens,
                "ram": dense + experts + kv, "minimum": minimum}


FORMAT_NAMES = {"q4b32": "4-bit, blocks of 32 (Q4_0)", "q4b32m": "4-bit with mins, blocks of 32 (Q4_K, Q4_1)",
                "q8b32": "8-bit, blocks of 32 (Q8_0)", "q8b16": "8-bit, blocks of 16 (Q6_K)",
                "q8b32m": "8-bit with mins, blocks of 32 (Q5_K, Q5_1)"}


def installed(with_incomplete: bool = False) -> list[Installed]:
    """Installed models; `with_incomplete` adds directories without a manifest (what a damaged
    install or a hand-made copy leaves), so `list` can flag them."""
    root = models_dir()
    names = installed_models()
    if with_incomplete:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [Installed(n, root / n, install.read_json(root / n / install.MANIFEST), install.read_record(root / n))
            for n in names]


def warn_incomplete(model: Installed) -> None:
    print(f"stchat: warning: {model.name} is incomplete: {model.problem}; it cannot run: remove it "
          f"(stchat rm {model.name}) and install it again", file=sys.stderr, flush=True)


def find(name: str, incomplete_too: bool = False) -> Installed:
    """An installed model by name or alias (`4b`), as every command names it (`models.installed_name`).
    `incomplete_too`: a model directory without a manifest is returned (for `rm`), not refused."""
    found, root = installed_name(name), models_dir()
    if found is None and not name.startswith(".") and "/" not in name and (root / name).is_dir():
        if incomplete_too:
            return Installed(name, root / name, {}, install.read_record(root / name))
        raise StchatError(f"{name} is incomplete: {install.bundle_problem(root / name)}; remove it "
                          f"(stchat rm {name}) and install it again")
    if found is None:
        raise not_installed(name)
    return Installed(found, root / found, install.read_json(root / found / install.MANIFEST),
                     install.read_record(root / found))


def list_command(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """Installed models: name, source repository and file, quantization, size on disk, date, status."""
    models = installed(with_incomplete=True)
    rows = [{"name": m.name, "source": m.source, "quantization": m.quantization, "size": m.size,
             "date": m.date, "path": str(m.path), "status": "incomplete" if m.problem else "ok",
             "problem": m.problem} for m in models]
    for model in models:
        if model.problem:
            warn_incomplete(model)
    if json_output:
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        print(f"no models installed in {models_dir()}; get one with: stchat pull 4b", file=sys.stderr)
        return
    header = {"name": "NAME", "source": "SOURCE", "quantization": "QUANT", "size": "SIZE", "date": "DATE",
              "status": "STATUS"}
    table = [header] + [dict(r, size=human_bytes(r["size"])) for r in rows]
    widths = {k: max(len(str(r[k])) for r in table) for k in header}
    for row in table:
        print("  ".join(str(row[k]).ljust(widths[k]) for k in header).rstrip())


def installed_names(incomplete: str) -> list[str]:
    """Shell completion of a model name: the installed ones starting with what was typed."""
    try:
        return [name for name in installed_models() if name.startswith(incomplete)]
    except OSError:
        return []


def show_command(
    name: Annotated[str, typer.Argument(help="Installed model name (or the alias it was pulled as).",
                                        autocompletion=installed_names)],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Configuration, files, source and memory needed (all in RAM, and with expert offloading)."""
    model = find(name)
    cfg, memory, problem = model.manifest["config"], model.memory(), model.problem
    files = {rel: info["size"] for rel, info in model.manifest.get("files", {}).items()}
    if problem:
        warn_incomplete(model)
    if json_output:
        print(json.dumps({"name": model.name, "path": str(model.path), "source": model.record or
                          model.manifest.get("source"), "quantization": model.quantization, "config": cfg,
                          "files": files, "size": model.size, "memory": memory, "storage": model.storage(),
                          "problem": problem}, indent=1))
        return
    rec = model.record
    lines = [f"name          {model.name}", f"path          {model.path}", f"source        {model.source}",
             f"status        {'INCOMPLETE: ' + problem if problem else 'complete (stchat verify checks the contents)'}"]
    if rec.get("commit"):
        sha = next((f.get("sha256") for f in rec.get("files", []) if f.get("sha256")), None)
        lines.append(f"              commit {rec['commit'][:12]}" + (f", sha256 {sha[:16]}... verified" if sha else ""))
    rope = sum(cfg["rope_layers"])
    window = f"{cfg['sliding_window']} tokens on {sum(cfg['sliding_layers'])} layers" if cfg["sliding_window"] else "none"
    lines += [f"quantization  {model.quantization}", f"installed     {model.date}",
              f"config        {cfg['num_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_heads']} heads "
              f"({cfg['num_kv_heads']} KV, dim {cfg['head_dim']})",
              f"              {cfg['num_experts']} experts per layer, {cfg['num_experts_per_tok']} active, "
              f"FFN {cfg['expert_ffn_size']}; vocab {cfg['vocab_size']}; context {cfg['context_length']}",
              f"              RoPE on {rope}/{cfg['num_layers']} layers; sliding window: {window}",
              "files"]
    grouped: dict[str, int] = {}
    for rel, size in files.items():
        key = rel.split("/")[0] + "/" if "/" in rel else rel
        grouped[key] = grouped.get(key, 0) + size
    lines += [f"  {rel:<22}{human_bytes(size):>12}" for rel, size in sorted(grouped.items())]
    lines.append("weights       stored as (matrices; norms and routers stay float32)")
    lines += [f"  {fmt:<8}{human_bytes(size):>12}  {FORMAT_NAMES.get(fmt, '')}" for fmt, size in model.storage().items()]
    lines += [f"  {'total on disk':<22}{human_bytes(model.size):>12}",
              "memory",
              f"  KV cache            {human_bytes(memory['kv_per_token'])} per token at the full context: "
              f"{human_bytes(memory['kv_cache'])} for {memory['kv_tokens']} tokens in float16, twice that in "
              f"float32 (used when the budget holds the whole model)"
              + ("; sliding layers keep only their window" if cfg["sliding_window"] else ""),
              f"  all in RAM          {human_bytes(memory['ram'])} (dense {human_bytes(memory['dense'])} + experts "
              f"{human_bytes(memory['experts'])} + the full KV cache)",
              f"  smallest budget     {human_bytes(memory['minimum'])} (the process, dense weights, KV cache of "
              f"{memory['kv_floor_tokens']} tokens, {cfg['num_experts_per_tok']} experts of one "
              f"layer, headroom); experts beyond it stay on disk: stchat ask -m {model.name} --memory SIZE (without "
              f"--context the context grows to what the budget holds)"]
    print("\n".join(lines))


def rm_command(
    names: Annotated[list[str], typer.Argument(
        help="Installed model names (or the aliases they were pulled as).", metavar="NAME",
        autocompletion=installed_names)],
    yes: Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove installed models (the Hugging Face cache is left alone)."""
    models = list({model.name: model for model in (find(name, incomplete_too=True) for name in names)}.values())
    if not yes:
        listed = ", ".join(f"{model.name} ({human_bytes(model.size)})" for model in models)
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise UsageError(f"not removing {listed} without confirmation: pass -y")
        if not typer.confirm(f"remove {listed}?", default=False, err=True):
            print("not removed", file=sys.stderr)
            raise typer.Exit(1)
    for stale in models_dir().glob(".removing-*"):   # left by an rm that was killed
        shutil.rmtree(stale, ignore_errors=True)
    for model in models:
        trash = models_dir() / f".removing-{model.name}-{os.getpid()}"
        os.replace(model.path, trash)    # gone from every listing at once, then deleted
        shutil.rmtree(trash, ignore_errors=True)
        print(f"removed {model.name}", file=sys.stderr)
