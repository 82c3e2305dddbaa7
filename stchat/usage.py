"""How often each expert of a model is asked for, kept between runs.

SmallThinker's routing is skewed: a small share of each layer's experts takes most tokens. The
runtime counts the router's requests while it runs (`Model.expert_usage`); this module keeps
those counts per model in the data directory, halving the old record at each save so recent
conversations weigh more, and hands them back at the next load so idle time builds the hottest
experts first (`Model.warm_experts`). It is run state: never inside the model's bundle.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from stchat.paths import data_dir, models_dir


def _record_path(bundle: Path) -> Path:
    bundle = Path(bundle).resolve()
    if bundle.parent == models_dir().resolve():
        name = bundle.name
    else:  # a bundle used by path: its name and where it is
        name = f"{bundle.name}-{hashlib.sha1(str(bundle).encode()).hexdigest()[:12]}"
    return data_dir() / "usage" / f"{name}.json"


def load(bundle: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The saved counts [layers, experts] of this model, or None (none yet, or unreadable)."""
    try:
        counts = np.asarray(json.loads(_record_path(bundle).read_text(encoding="utf-8"))["counts"], np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return counts if counts.shape == shape else None


def save(bundle: Path, requests: np.ndarray) -> None:
    """Add this run's counts to the record (the old one halved); atomic, and never an error:
    a lost record only costs the warm-up order."""
    requests = np.asarray(requests, np.float64)
    if not requests.any():
        return
    old = load(bundle, requests.shape)
    counts = requests if old is None else old / 2 + requests
    path = _record_path(bundle)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"counts": np.round(counts, 3).tolist()}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
