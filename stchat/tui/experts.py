"""The experts view: which experts of each layer sit in RAM and how often each was hit, live.

A SmallThinker layer routes every token to a few of its experts; the runtime keeps the recently
used ones as ONNX Runtime sessions in an LRU with a byte budget (`model.experts.cache`). This
screen reads that cache twice a second: one row per layer, one cell per expert (dim dot: on
disk; block: in RAM, brighter the more hits), then the totals and the hottest experts, named
as paths (`layers.3/experts.17`) like everywhere else.
"""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from stchat.tui.widgets import StatusBar, human_bytes

HEAT = ["#3b6ea8", "#4f9dd9", "#5fc5a8", "#b6d65a", "#f0b43c", "#f06a3c"]  # few hits -> many hits


def snapshot(cache) -> tuple[list, dict, object]:
    """(resident keys, hits by key, stats) read without holding up the generation thread."""
    resident = cache.resident()
    for _ in range(3):
        try:
            hits = dict(cache.stats.hits_by_key)
            break
        except RuntimeError:  # resized while copied: try again
            continue
    else:
        hits = {}
    return resident, hits, cache.stats


def render_experts(config, cache, budget_label: str) -> Text:
    resident, hits, stats = snapshot(cache)
    layers, experts = config.num_layers, config.num_experts
    in_ram = set(resident)
    peak = max(hits.values(), default=0)
    lines = []
    total = stats.hits + stats.misses
    rate = f"{stats.hits / total:.0%}" if total else "–"
    lines.append(Text.assemble(
        ("Expert cache ", "bold"),
        f"{len(in_ram)} experts in RAM, {human_bytes(cache.used)} of {budget_label} │ "
        f"hit rate {rate} ({stats.hits} hits, {stats.misses} misses) │ {stats.evictions} evictions"))
    lines.append(Text(f"read from disk {human_bytes(stats.bytes_read)}, loading {stats.load_seconds:.2f}s, "
                      f"waiting {stats.stall_seconds:.2f}s", style="dim"))
    lines.append(Text(""))
    for layer in range(layers):
        row = Text(f"layers.{layer:<3}", style="bold")
        row.append(" ")
        count = 0
        for expert in range(experts):
            key = (layer, expert)
            n = hits.get(key, 0)
            if key in in_ram:
                count += 1
                level = 0 if peak == 0 else min(len(HEAT) - 1, int(len(HEAT) * n / (peak + 1)))
                row.append("█", style=HEAT[level])
            else:
                row.append("·", style="dim")
        row.append(f"  {count:>3}/{experts} in RAM, {sum(hits.get((layer, e), 0) for e in range(experts))} hits",
                   style="dim")
        lines.append(row)
    lines.append(Text(""))
    hottest = sorted(hits.items(), key=lambda item: (-item[1], item[0]))[:8]
    if hottest:
        lines.append(Text("Hottest experts", style="bold"))
        for (layer, expert), n in hottest:
            where = "RAM" if (layer, expert) in in_ram else "disk"
            lines.append(Text(f"  layers.{layer}/experts.{expert}: {n} hits ({where})"))
    else:
        lines.append(Text("No expert used yet: send a message and watch the layers fill.", style="dim"))
    legend = Text("  · on disk   ", style="dim")
    for color in HEAT:
        legend.append("█", style=color)
    legend.append(" in RAM, few hits → many hits", style="dim")
    lines.append(Text(""))
    lines.append(legend)
    return Text("\n").join(lines)


class ExpertsScreen(Screen):
    DEFAULT_CSS = """
    ExpertsScreen #experts-body { padding: 1 2; }
    ExpertsScreen VerticalScroll { height: 1fr; }
    """
    BINDINGS = [Binding("escape", "app.pop_screen", "Back", id="experts.back")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="experts-body")
        yield StatusBar()
        yield Footer()

    text = Text("")  # what is on screen, for tests

    def on_mount(self) -> None:
        self.refresh_experts()
        self.set_interval(0.5, self.refresh_experts)

    def refresh_experts(self) -> None:
        body = self.query_one("#experts-body", Static)
        model = self.app.model
        if model is None:
            self.text = Text(f"Loading {self.app.loading}…" if self.app.loading else
                             "No model loaded. Open Models (F4) to choose or pull one.")
        else:
            budget = getattr(model.experts.cache, "budget", None)
            self.text = render_experts(model.config, model.experts.cache,
                                       human_bytes(budget) if budget is not None else "no limit")
        body.update(self.text)
