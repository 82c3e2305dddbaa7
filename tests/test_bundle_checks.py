"""The crc32 recorded per expert record at conversion, checked by `Bundle.read_expert`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import model_fixtures
from runtime.bundle import Bundle
from runtime.errors import BundleError


@pytest.fixture
def bundle_copy(tmp_path):
    return shutil.copytree(model_fixtures.bundle("4b"), tmp_path / "bundle")


def test_every_expert_record_has_the_crc32_of_its_bytes(bundle_copy):
    import zlib

    bundle = Bundle(bundle_copy)
    data = (bundle_copy / "experts.bin").read_bytes()
    cfg = bundle.config
    assert len(bundle.expert_crc32) == cfg.num_layers * cfg.num_experts
    records = [(layer, expert) for layer in range(cfg.num_layers) for expert in range(cfg.num_experts)]
    assert bundle.expert_crc32 == [   # each record's bytes that a read of it uses
        zlib.crc32(data[bundle.expert_offset(*key):bundle.expert_offset(*key) + bundle.expert_record_bytes(key[0])])
        for key in records]


def test_a_damaged_expert_record_is_refused_when_read(bundle_copy):
    bundle = Bundle(bundle_copy)
    buffer = np.empty(bundle.expert_stride, np.uint8)
    with open(bundle_copy / "experts.bin", "r+b") as handle:   # same size, other bytes
        handle.seek(bundle.expert_offset(1, 2) + 10)
        handle.write(b"\x00\x11\x22\x33")
    assert set(bundle.read_expert(0, 0, buffer)) == {"gate.qweight", "gate.scales", "up.qweight", "up.scales",
                                                     "down.qweight", "down.scales"}
    with pytest.raises(BundleError, match=r"layers\.1/experts\.2 is damaged.*stchat verify"):
        bundle.read_expert(1, 2, buffer)


def test_each_expert_is_checked_on_its_first_read_only(bundle_copy, monkeypatch):
    # a model that does not fit in memory reads its experts again and again: the check, CPU
    # the session builds need, is paid once per expert and process
    import runtime.bundle

    checked = []
    monkeypatch.setattr(runtime.bundle.zlib, "crc32", lambda data: checked.append(len(data)) or 0)
    bundle = Bundle(bundle_copy)
    bundle.expert_crc32 = [0] * len(bundle.expert_crc32)  # what the patched crc32 gives
    buffer = np.empty(bundle.expert_stride, np.uint8)
    for key in [(0, 0), (1, 2), (0, 0), (1, 2), (0, 0), (0, 1)]:
        bundle.read_expert(*key, buffer)
    assert len(checked) == 3


def test_bundles_without_crc32s_still_load(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["experts"]["crc32"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle(bundle_copy)
    assert bundle.expert_crc32 is None
    bundle.read_expert(1, 2, np.empty(bundle.expert_stride, np.uint8))


def _cached_pages(path) -> int:
    """Pages of `path` in the page cache, as util-linux's fincore counts them."""
    import subprocess

    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("direct", [False, True])
def test_direct_expert_reads_give_the_same_bytes_and_leave_the_page_cache_alone(bundle_copy, direct):
    # a model offloading experts reads them with O_DIRECT: under a memory cgroup the page cache
    # counts against the cap, so buffered reads of experts soon evicted cost reclaim
    import os

    from runtime.bundle import read_buffer

    if shutil.which("fincore") is None:
        pytest.skip("not Linux: needs util-linux's fincore")
    bundle = Bundle(bundle_copy)
    assert bundle._experts_direct_fd is not None, "the test's file system refuses O_DIRECT"
    experts = bundle_copy / "experts.bin"
    with open(experts, "rb") as file:
        os.fsync(file.fileno())
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert _cached_pages(experts) == 0
    cfg, buffer = bundle.config, read_buffer(bundle.expert_stride)
    keys = [(layer, expert) for layer in range(cfg.num_layers) for expert in range(cfg.num_experts)]
    read = {key: {name: array.copy() for name, array in bundle.read_expert(*key, buffer, direct=direct).items()}
            for key in keys}   # each record's crc32 is checked inside
    assert (_cached_pages(experts) == 0) == direct
    for key in keys:
        for name, array in bundle.read_expert(*key, buffer).items():
            np.testing.assert_array_equal(read[key][name], array)
