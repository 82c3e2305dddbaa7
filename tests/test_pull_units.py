"""The parts of `stchat pull` checked in-process: file choice, the table, disk and transfer faults.

These call `stchat.pull` directly with an explicit `Hub` (endpoint = the local stand-in, cache
in a temporary folder), which lets a test monkeypatch what a subprocess cannot: the free disk
space (`shutil.disk_usage`) and the retry waits. Subprocess tests are in `test_pull.py`.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from hub_server import GGUF_4B, GGUF_21B, HF_4B, PLAIN_4B, PLAIN_21B
from stchat import catalog, download, manage, paths, pull
from stchat.exitcodes import ModelNotFound, StchatError
from stchat.hub import Hub, HubUnreachable
from stchat.progress import Reporter, human_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(hub, tmp_path, stchat_home, monkeypatch):
    """(Hub pointed at the stand-in with a fresh cache, Reporter writing to a buffer)."""
    import huggingface_hub.constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)   # nothing may reach the real Hub
    monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
    monkeypatch.setattr(download, "RETRY_WAITS", (0.0, 0.0, 0.0))
    hub.clear_log()
    hub.state.faults.clear()
    hub.state.throttle = None
    return Hub(endpoint=hub.url, cache_dir=tmp_path / "hf" / "hub"), Reporter(io.StringIO(), tty=False)


def spec(alias: str, source: str = "gguf") -> catalog.HubSpec:
    return catalog.parse_spec(alias, source)


# -- choosing the file --------------------------------------------------------------------------
def test_choose_gguf_prefers_the_plain_q4_0_file():
    files = ["README.md", "m-Q4_0_4_4.gguf", "m-Q4_0_8_8.gguf", "m-Q8_0.gguf", "m-IQ4_NL.gguf", "m-q4_0-imat.gguf",
             "sub/m-Q4_0.gguf", "m-Q4_0.gguf", "big/m-Q4_0-00001-of-00002.gguf"]
    chosen, others = catalog.choose_gguf("o/r", files)
    assert chosen == "m-Q4_0.gguf" and others == ["m-q4_0-imat.gguf", "sub/m-Q4_0.gguf"]
    with pytest.raises(ModelNotFound, match="no Q4_0 GGUF file.*m-Q8_0.gguf.*o/r:FILE"):
        catalog.choose_gguf("o/r", ["m-Q8_0.gguf", "m-Q4_0_4_4.gguf"])
    with pytest.raises(ModelNotFound, match="only split"):
        catalog.choose_gguf("o/r", ["m-Q4_0-00001-of-00002.gguf", "m-Q4_0-00002-of-00002.gguf"])


def test_choose_gguf_never_takes_a_powerinfer_only_file():
    chosen, others = catalog.choose_gguf("o/r", ["m.Q4_0.powerinfer.gguf", "model.Q4_0.gguf"])
    assert chosen == "model.Q4_0.gguf" and others == []
    with pytest.raises(ModelNotFound, match="no Q4_0 GGUF file"):
        catalog.choose_gguf("o/r", ["m-Q4_0.powerinfer.gguf", "m-Q4_0.PowerInfer.gguf"])


def test_the_alias_table_uses_the_organisations_current_name():
    for row in catalog.load_table().values():
        assert row.gguf_repo.startswith("Tiiny/") and row.safetensors_repo.startswith("Tiiny/")


@pytest.mark.parametrize("text, expected", [
    ("4b", ("hub", GGUF_4B, None)), ("21B", ("hub", GGUF_21B, None)),
    ("smallthinker-4b", ("hub", GGUF_4B, None)),
    ("owner/repo", ("hub", "owner/repo", None)), ("owner/repo:dir/x-Q4_0.gguf", ("hub", "owner/repo", "dir/x-Q4_0.gguf")),
])
def test_parse_spec(text, expected):
    parsed = catalog.parse_spec(text)
    assert ("hub", parsed.repo, parsed.file) == expected


def test_parse_spec_local_paths_and_unknown_aliases(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert catalog.parse_spec(str(tmp_path / "m.gguf")) == catalog.LocalSpec(tmp_path / "m.gguf")
    with pytest.raises(ModelNotFound, match="no such file"):
        catalog.parse_spec("./missing.gguf")
    with pytest.raises(ModelNotFound, match=r"unknown model 'llama' \(known: 4b, 21b"):
        catalog.parse_spec("llama")
    assert catalog.parse_spec("4b", "safetensors").repo == HF_4B


# -- the table ships with every kind of install ----------------------------------------------------
def test_table_is_found_and_describes_both_aliases():
    table = catalog.load_table()
    assert set(table) == {"4b", "21b"}
    for row in table.values():
        assert row.gguf_repo.endswith("-GGUF") and row.safetensors_repo == row.gguf_repo.removesuffix("-GGUF")
        assert re.search(row.gguf_pattern, "x-Q4_0.gguf") and not re.search(row.gguf_pattern, "x-Q4_0_4_4.gguf")
        assert row.min_bytes < row.ram_bytes and row.bundle_bytes < row.safetensors_bytes


def test_table_is_installed_as_data_files_where_the_loader_looks(tmp_path, monkeypatch):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert config == {"share/stchat": ["assets/models.json"]}
    prefix = tmp_path / "prefix"   # what `pip install .` does: <prefix>/share/stchat/models.json
    (prefix / "share" / "stchat").mkdir(parents=True)
    (prefix / "share" / "stchat" / "models.json").write_text((ROOT / "assets" / "models.json").read_text())
    monkeypatch.setattr(catalog.sysconfig, "get_path", lambda name, *scheme: str(prefix))
    assert str(prefix / "share" / "stchat" / "models.json") in map(str, catalog.table_candidates())
    monkeypatch.setattr(catalog, "__file__", str(tmp_path / "site-packages" / "stchat" / "catalog.py"))
    catalog.load_table.cache_clear()
    try:
        assert set(catalog.load_table()) == {"4b", "21b"}
    finally:
        catalog.load_table.cache_clear()


# -- before downloading ------------------------------------------------------------------------
def test_too_little_disk_is_refused_before_any_download(setup, hub, monkeypatch):
    hf, reporter = setup
    free = {"value": 10_000}
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda path: type("U", (), {"free": free["value"]})())
    with pytest.raises(StchatError, match=r"not enough disk space: .* needed .*deleted after conversion.* free"):
        pull.pull_hub(spec("4b"), hf, reporter, keep_source=False, yes=True)
    assert hub.content_requests() == [] and manage.installed() == []
    free["value"] = 1 << 40
    assert pull.pull_hub(spec("4b"), hf, reporter, keep_source=False, yes=True) == "smallthinker-4b"


@pytest.mark.parametrize("one_disk", [True, False])
def test_disk_check_subtracts_what_is_already_downloaded(setup, monkeypatch, one_disk):
    hf, _ = setup
    file = hf.listing(GGUF_21B).files[PLAIN_21B]
    partial = hf.blob_path(GGUF_21B, file).with_name(file.sha256 + ".incomplete")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(file.size // 3 * b"\0")                # a third was downloaded before
    download, bundle = file.size - file.size // 3, int(file.size * pull.GGUF_BUNDLE_RATIO)
    cache, models = hf.cache_dir, paths.models_dir()
    need = {models: download + bundle} if one_disk else {cache: download, models: bundle}
    free = {where: bytes_ + pull.DISK_MARGIN for where, bytes_ in need.items()}  # just big enough
    monkeypatch.setattr(pull, "same_device", lambda a, b: one_disk)
    monkeypatch.setattr(pull.shutil, "disk_usage", lambda path: SimpleNamespace(free=free[Path(path)]))
    pull.check_disk(hf, GGUF_21B, [file], "gguf", keep_source=True)
    for where in need:                                         # one byte less anywhere: refused
        free[where] -= 1
        with pytest.raises(StchatError, match=f"not enough disk space: .* needed on {re.escape(str(where))} "
                                              f"\\(download {re.escape(human_bytes(download))}, "):
            pull.check_disk(hf, GGUF_21B, [file], "gguf", keep_source=True)
        free[where] += 1


def test_a_corrupted_file_in_the_hub_cache_fails_its_sha256_and_is_fetched_again(setup, hub):
    hf, reporter = setup
    listing = hf.listing(GGUF_4B)
    file = listing.files[PLAIN_4B]
    download.fetch(hf, GGUF_4B, listing.commit, file, reporter)  # now in the Hugging Face cache
    blob = hf.blob_path(GGUF_4B, file)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01                                 # one bit flipped, same size
    blob.write_bytes(bytes(data))
    hub.clear_log()
    with pytest.raises(download.IntegrityError, match=f"{re.escape(PLAIN_4B)}: sha256 mismatch .*deleted"):
        download.fetch(hf, GGUF_4B, listing.commit, file, reporter)
    assert not blob.exists() and hub.content_requests() == []   # refused from the cache, not re-fetched yet
    again = download.fetch(hf, GGUF_4B, listing.commit, file, reporter)
    assert again.downloaded and hashlib.sha256(blob.read_bytes()).hexdigest() == file.sha256


# -- the renamed organisation ------------------------------------------------------------------
def test_old_repository_names_are_redirected_for_listings_and_files(setup, hub):
    from stchat.download import fetch

    hf, reporter = setup
    old = GGUF_21B.replace("Tiiny/", "PowerInfer/")
    listing = hf.listing(old)
    assert listing.repo == GGUF_21B and PLAIN_21B in listing.files         # the current name, from the Hub
    fetched = fetch(hf, old, listing.commit, listing.files[PLAIN_21B], reporter)   # resolve under the old name
    assert fetched.path.read_bytes() == hub.state.repos[GGUF_21B].files[PLAIN_21B].content
    moved = [e for e in hub.log if e.status == 307]
    assert {e.path.split("?")[0] for e in moved} == {f"/api/models/{old}", f"/{old}/resolve/{listing.commit}/{PLAIN_21B}"}


# -- transfer faults ---------------------------------------------------------------------------
def test_cut_transfer_fails_then_next_pull_fetches_only_the_rest(setup, hub):
    hf, reporter = setup
    size = len(hub.state.repos[GGUF_21B].files[PLAIN_21B].content)
    cut = 100_000
    hub.state.faults[PLAIN_21B] = [("cut", cut)] + [("drop",)] * 4   # cut, then the server is gone
    with pytest.raises(HubUnreachable, match=f"stopped at {cut} of {size} bytes.*run the pull again to resume"):
        pull.pull_hub(spec("21b"), hf, reporter, keep_source=True, yes=True)
    assert manage.installed() == []
    hub.clear_log()
    assert pull.pull_hub(spec("21b"), hf, reporter, keep_source=True, yes=True) == "smallthinker-21b"
    (get,) = hub.content_requests(PLAIN_21B)
    assert (get.range, get.status, get.sent) == (f"bytes={cut}-", 206, size - cut)


def test_one_cut_is_resumed_within_the_same_pull(setup, hub):
    hf, reporter = setup
    size = len(hub.state.repos[GGUF_21B].files[PLAIN_21B].content)
    hub.state.faults[PLAIN_21B] = [("cut", 50_000)]
    pull.pull_hub(spec("21b"), hf, reporter, keep_source=False, yes=True)
    first, second = hub.content_requests(PLAIN_21B)
    assert (first.range, first.sent) == (None, 50_000)
    assert (second.range, second.sent) == ("bytes=50000-", size - 50_000)


def test_safetensors_source_verifies_every_file_and_keeps_them_on_request(setup, hub):
    hf, reporter = setup
    name = pull.pull_hub(spec("4b", "safetensors"), hf, reporter, keep_source=True, yes=True)
    assert name == "smallthinker-4b-hf"
    snapshot = hf.snapshot_path(HF_4B, hub.state.repos[HF_4B].commit)
    assert {p.name for p in snapshot.iterdir()} >= {"config.json", "tokenizer.json", "model.safetensors.index.json"}
    assert "README.md" not in {p.name for p in snapshot.iterdir()}
    assert (hf.repo_dir(HF_4B) / "refs" / "main").read_text() == hub.state.repos[HF_4B].commit
    (model,) = manage.installed()
    assert model.record["kind"] == "hf" and model.quantization == "Q4_0 (from BF16)"
    text = reporter.stream.getvalue()
    assert "verifying git blob id of config.json" in text and "verifying sha256 of model-00001-of-00002" in text


def test_local_import_needs_no_network(setup, hub, tmp_path):
    hf, reporter = setup
    from runtime import synthetic

    gguf = synthetic.write_gguf(synthetic.TINY_4B_LIKE, tmp_path / "mine-Q4_0.gguf")
    hf_dir = synthetic.write_hf_dir(synthetic.TINY_21B_LIKE, tmp_path / "my-checkpoint", shards=1)
    assert pull.pull_local(gguf, reporter) == "mine-Q4_0"
    assert pull.pull_local(gguf, reporter) == "mine-Q4_0"          # the same file again: nothing to do
    assert pull.pull_local(hf_dir, reporter) == "my-checkpoint"
    assert "already installed" in reporter.stream.getvalue()
    assert hub.log == []
    rows = {m.name: m for m in manage.installed()}
    assert rows["mine-Q4_0"].source == str(gguf) and rows["my-checkpoint"].record["kind"] == "hf"


# -- progress ------------------------------------------------------------------------------------
def test_progress_redraws_on_a_terminal_and_writes_plain_lines_elsewhere():
    for tty in (True, False):
        out = Reporter(io.StringIO(), tty=tty)
        transfer = out.transfer("model.gguf", 4 << 20)
        for done in range(0, 4 << 20, 1 << 20):
            out._last_draw = 0.0
            transfer.update(done)
        transfer.finish()
        out.stage("layers", 1, 2)
        out.stage("layers", 2, 2)
        out.line("success")
        text = out.stream.getvalue()
        assert ("\x1b[K" in text and "/s ETA" in text and "%" in text and "converting: layers 2/2" in text) is tty
        assert ("\x1b" not in text and "\r" not in text) is not tty
        assert "downloading model.gguf (4.0 MiB)" in text and "success" in text


def test_show_memory_follows_the_runtime_rule(setup, hub):
    hf, reporter = setup
    pull.pull_hub(spec("21b"), hf, reporter, keep_source=False, yes=True)
    import runtime
    from runtime import memory as runtime_memory

    (model,) = manage.installed()
    memory, cfg = model.memory(), model.manifest["config"]
    assert memory["minimum"] == runtime_memory.minimum_budget(
        dense_bytes=memory["dense"], kv_bytes=memory["kv_floor"], charge=memory["expert_charge"],
        experts_per_tok=cfg["num_experts_per_tok"])
    assert memory["ram"] == memory["dense"] + memory["kv_cache"] + cfg["num_layers"] * cfg["num_experts"] * memory["expert"]
    # the KV cache as the runtime lays it out (window-sized sliding layers, float16)
    full = runtime.load(model.path, threads=1, context=cfg["context_length"], kv_dtype="float16")
    assert memory["kv_cache"] == full.kv_bytes() and memory["kv_tokens"] == cfg["context_length"]
    assert memory["kv_per_token"] == full.kv_bytes() // cfg["context_length"]
    floor = runtime.load(model.path, threads=1, context=min(4096, cfg["context_length"]), kv_dtype="float16")
    assert memory["kv_floor"] == floor.kv_bytes()

    with pytest.raises(runtime.BudgetTooSmall, match=f"needs at least {runtime_memory.format_bytes(memory['minimum'])}"):
        runtime.load(model.path, memory_budget=memory["minimum"] - 1, threads=1)  # the same figure
    assert json.loads(json.dumps(memory))


def test_disk_full_while_writing_keeps_what_was_written(setup, hub, monkeypatch):
    import builtins
    import errno

    hf, reporter = setup
    full = {"on": True}

    class Full(io.FileIO):
        def write(self, data):
            if full["on"] and self.tell() + len(data) > 150_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    real_open = builtins.open
    monkeypatch.setattr(download, "open", lambda path, mode="r", *a, **k: Full(path, "a") if mode == "ab"
                        else real_open(path, mode, *a, **k), raising=False)
    with pytest.raises(download.DiskFull, match="disk full while writing .*run the pull again to resume"):
        pull.pull_hub(spec("4b"), hf, reporter, keep_source=False, yes=True)
    full["on"] = False
    (partial,) = hf.blob_path(GGUF_4B, hf.listing(GGUF_4B).files[PLAIN_4B]).parent.glob("*.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept <= 150_000 and manage.installed() == []
    hub.clear_log()
    assert pull.pull_hub(spec("4b"), hf, reporter, keep_source=False, yes=True) == "smallthinker-4b"
    (get,) = hub.content_requests(PLAIN_4B)
    assert get.range == f"bytes={kept}-"
