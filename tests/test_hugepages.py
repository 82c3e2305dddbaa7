"""runtime.hugepages: settled anonymous memory moves into huge pages, and memory never grows."""
from __future__ import annotations

import mmap

import numpy as np

from runtime import hugepages
from tests.skips import linux_only

MIB = 1 << 20
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux; the module lacks it before Python 3.12


def _huge_bytes(address: int) -> int:
    """AnonHugePages of the mapping holding `address`, in bytes."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                start, end = (int(part, 16) for part in head[0].split("-"))
                inside = start <= address < end
            elif inside and head[0] == "AnonHugePages:":
                return int(head[1]) * 1024
    raise AssertionError("no mapping holds the address")


def _mapping(size: int, touched: int) -> tuple[mmap.mmap, int]:
    """An anonymous private mapping of `size` bytes, its first `touched` bytes written."""
    # MAP_NORESERVE keeps it a mapping of its own: merged with a neighbour (numpy's arrays ask
    # for huge pages), the kernel's per-mapping counts would mix in the neighbour's
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
    view = np.frombuffer(region, np.uint8)
    view[:touched] = 1  # 4 KiB pages: with transparent huge pages "madvise", as here, only asked-for memory gets them
    address = view.ctypes.data
    del view
    return region, address


@linux_only
def test_fully_resident_memory_is_collapsed_into_huge_pages():
    region, address = _mapping(16 * MIB, 16 * MIB)
    try:
        assert _huge_bytes(address) == 0
        collapsed = hugepages.collapse_resident()
        # the mapping's aligned 2 MiB stretches (7 or 8 of them) are huge pages now, contents kept
        assert _huge_bytes(address) >= 14 * MIB
        assert collapsed >= 14 * MIB
        assert np.frombuffer(region, np.uint8).min() == 1
    finally:
        region.close()


@linux_only
def test_memory_not_resident_is_left_alone_and_cancelling_stops_at_once():
    region, address = _mapping(16 * MIB, 64 * 1024)  # 16 pages resident of 4096
    try:
        assert hugepages.collapse_resident(cancelled=lambda: True) == 0
        hugepages.collapse_resident()
        assert _huge_bytes(address) == 0  # collapsing would have made 2 MiB resident for 64 KiB
    finally:
        region.close()


def test_idle_time_collapses_once_every_expert_is_built(monkeypatch):
    import runtime
    import runtime.model
    from model_fixtures import bundle

    calls = []
    monkeypatch.setattr(runtime.model.hugepages, "collapse_resident", lambda cancelled: calls.append(1) or 0)
    m = runtime.load(bundle("4b"))
    m.warm_experts(cancelled=lambda: len(m.experts.cache) >= 3)  # cut short: experts still to come
    assert calls == []
    m.warm_experts()
    assert calls == [1] and m._heap_settled
    m.warm_experts()                                                 # done already
    assert calls == [1]
    m.close()
