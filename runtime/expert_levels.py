"""Which accuracy level each expert session is built at, and what a session costs in memory.

MatMulNBits at accuracy level 4 (int8 activations) is the fast one-token path, but its
prepacked weights hold 1.2x a Q4_0 expert's bytes; level 1 (fp32 activations) holds 1.0x and
builds faster, at a slower one-token call. When the memory budget cannot hold every expert at
level 4 but can hold them all lean, the experts the router asks for most get level 4, as many
per layer as the room left pays for (`full_share`); when they do not all fit even lean, every
expert is lean and they come and go.
"""
from __future__ import annotations

from .bundle import Bundle, array_bytes
from .memory import expert_charge

# MatMulNBits accuracy level of Q4_0 expert sessions that memory cannot hold at level 4.
# Measured on the full-size 4B (2 threads): level 1 builds a session in 2.8 ms against 3.8 and
# held 1.04x the raw bytes against 1.44x, so a 1 GiB budget kept 39% more experts (decode
# hit rate 39% -> 52%), at 330 against 200 us per one-token call. Since sessions hold no copy
# of their weights (runtime/shared_weights.py): 1.0x against 1.2x, builds of 2.9 against 4.2 ms
# with experts coming and going, and all-level-4 under the 1 GiB cap decoded 2.12/2.19 tok/s
# (hit rate 51%) against 2.09/2.68 (57%). Other formats keep their level (8 bits at level 1
# falls to a dequantizing path, 40-60x slower).
LEAN_ACCURACY_LEVEL = 1


def lean_level(layout: dict, level: int) -> int:
    """The accuracy level an expert stored in `layout` is built at when memory is short (its
    `level` when it has no leaner form)."""
    return LEAN_ACCURACY_LEVEL if level == 4 and set(layout["formats"].values()) == {"q4b32"} else level


def layout_charge(layout: dict, level: int = 4) -> int:
    """Resident bytes of one expert session stored in `layout` (a manifest expert layout), built
    at accuracy `level`."""
    return expert_charge([(fmt, array_bytes(spec for key, spec in layout["arrays"].items() if key.startswith(matrix + ".")))
                          for matrix, fmt in layout["formats"].items()], level)


def layer_charges(bundle: Bundle, level: int = 4, lean: bool = False) -> list[int]:
    """Resident bytes of one expert session of each layer (layers may store experts differently),
    built at `level`, or at its lean level (`lean_level`)."""
    return [layout_charge(layout, lean_level(layout, level) if lean else level)
            for layout in (bundle.expert_layouts[key] for key in bundle.layer_layouts)]


def full_share(room: int | None, full: list[int], lean: list[int], num_experts: int) -> int:
    """How many experts of each layer may be resident at full accuracy level when `room` bytes
    hold expert sessions: all when every session fits at full level, none when they do not all
    fit lean (experts then come and go), else as many as the room left by lean sessions of all
    pays the difference for. `full`, `lean`: per-layer charges of one session."""
    extra = sum(f - l for f, l in zip(full, lean))  # one more full-level session in every layer
    if room is None or room >= sum(full) * num_experts or extra == 0:
        return num_experts
    return max(0, min(num_experts, (room - sum(lean) * num_experts) // extra))
