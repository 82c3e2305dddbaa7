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


def test_bundles_without_crc32s_still_load(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["experts"]["crc32"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle(bundle_copy)
    assert bundle.expert_crc32 is None
    bundle.read_expert(1, 2, np.empty(bundle.expert_stride, np.uint8))
