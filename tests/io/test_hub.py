"""Hub ids from the local cache: a real cache layout (refs/, snapshots/<commit>/, relative links into blobs/) in
tmp_path, pointed at with HF_HUB_CACHE; every revision form diffs to the numbers of the same local folders."""
import hashlib
import json
import os
import shutil

import pandas as pd
import pytest
from huggingface_hub import scan_cache_dir

import updelta
from updelta.errors import CheckpointError
from updelta.io import hub

import ckpt
from clirun import run_main

REPO = "acme/tiny-llama"
COMMIT_BASE = "1" * 8 + hashlib.sha1(b"base").hexdigest()[8:]
COMMIT_FT = "9f3" + hashlib.sha1(b"ft").hexdigest()[3:]
OPTS = dict(spectral="off", progress=False)


def add_snapshot(cache, repo, commit, folder, refs=()):
    """Write `folder`'s files into the cache as the library does: blobs named by content hash, snapshot files as
    relative symlinks to them, refs files holding the commit hash (no newline)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), snap / f.name)
    for ref in refs:
        (root / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """(cache folder, base folder, fine-tune folder): base at main, the fine-tune at branch sft, tag v1 and PR 1."""
    base = ckpt.llama_state()
    b = ckpt.save(base, tmp_path / "local" / "base", config={"model_type": "llama"})
    f = ckpt.save(ckpt.perturb(base), tmp_path / "local" / "ft", shards=2, config={"model_type": "llama"})
    c = tmp_path / "hub"
    add_snapshot(c, REPO, COMMIT_BASE, b, refs=["main"])
    add_snapshot(c, REPO, COMMIT_FT, f, refs=["sft", "v1", "refs/pr/1"])
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    return c, b, f


def test_the_layout_is_the_librarys(cache):
    c, _, _ = cache
    info = scan_cache_dir(c)
    (repo,) = info.repos
    assert repo.repo_id == REPO and not info.warnings
    assert {r.commit_hash for r in repo.revisions} == {COMMIT_BASE, COMMIT_FT}
    assert {ref for r in repo.revisions for ref in r.refs} == {"main", "sft", "v1", "refs/pr/1"}


@pytest.mark.parametrize("rev", ["sft", "v1", COMMIT_FT, COMMIT_FT[:7], "refs/pr/1"])
def test_every_revision_form_gives_the_local_numbers(cache, rev):
    c, b, f = cache
    snap = c / ("models--" + REPO.replace("/", "--")) / "snapshots"
    assert hub.locate(REPO) == snap / COMMIT_BASE
    assert hub.locate(f"{REPO}@{rev}") == snap / COMMIT_FT
    by_id = updelta.diff(REPO, f"{REPO}@{rev}", name="ft", **OPTS)
    local = updelta.diff(b, f, name="ft", **OPTS)
    cols = ["name", "delta_fro", "base_fro", "sparsity_exact", "cos_delta_base"]
    pd.testing.assert_frame_equal(by_id.tensors[cols], local.tensors[cols], check_exact=True)
    assert by_id.summary["delta_fro"].iloc[0] > 0
    assert by_id.meta["runs"]["ft"]["format"] == "safetensors-sharded"


def test_the_cli_diffs_ids(cache, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "diff", REPO, f"{REPO}@{COMMIT_FT[:10]}", "--spectral", "off",
                              "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"][0]
    assert summary["delta_fro"] > 0 and COMMIT_FT in json.loads(out)["runs"][f"tiny-llama@{COMMIT_FT[:10]}"]["path"]


def test_a_local_path_shadows_an_id(cache, tmp_path):
    _, b, f = cache
    shadow = tmp_path / REPO  # ./acme/tiny-llama: a folder named like the id
    shutil.copytree(f, shadow)
    assert hub.locate(REPO) == shadow.relative_to(tmp_path)
    r = updelta.diff(REPO, b, name="x", **OPTS)  # the local fine-tune against the base: not zero
    assert r.summary["delta_fro"].iloc[0] > 0


def test_an_id_not_in_the_cache(cache, monkeypatch, capsys):
    c, b, _ = cache
    code, out, err = run_main(monkeypatch, capsys, "diff", b, "acme/missing@dev", "--spectral", "off")
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    for part in ("acme/missing", "at revision dev", str(c), "missing", "--download",
                 "hf download acme/missing --revision dev"):
        assert part in line, line
    assert str(c.parent / "acme" / "missing@dev") in line  # the path looked for


def test_an_unknown_revision_of_a_cached_repo(cache):
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        hub.locate(f"{REPO}@nope")
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        hub.locate(f"{REPO}@abcd")  # hex, but no cached commit starts with it


def test_an_ambiguous_short_hash(cache):
    c, b, _ = cache
    other = COMMIT_FT[:6] + ("0" if COMMIT_FT[6] != "0" else "1") + "0" * 33
    add_snapshot(c, REPO, other, b)
    with pytest.raises(CheckpointError, match="matches 2 cached commits"):
        hub.locate(f"{REPO}@{COMMIT_FT[:6]}")
    assert hub.locate(f"{REPO}@{COMMIT_FT[:7]}").name == COMMIT_FT
    assert hub.locate(f"{REPO}@{other[:7]}").name == other


def test_a_snapshot_whose_blob_is_missing(cache):
    c, _, _ = cache
    root = c / ("models--" + REPO.replace("/", "--"))
    target = os.readlink(root / "snapshots" / COMMIT_BASE / "model.safetensors")
    os.remove(root / "snapshots" / COMMIT_BASE / target)
    with pytest.raises(CheckpointError, match="holds no weights .* interrupted download"):
        hub.locate(REPO)


def test_offline_download_is_one_line(cache, monkeypatch, capsys):
    _, b, _ = cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_main(monkeypatch, capsys, "diff", b, "acme/missing", "--download", "--spectral", "off")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "offline mode" in err and "HF_HUB_OFFLINE" in err and "acme/missing" in err


def test_download_fetches_the_selected_files(cache, monkeypatch):
    """--download: what is fetched (the network calls replaced by the cache writer above)."""
    import huggingface_hub

    c, b, f = cache
    repo_files = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md",
                  "original/consolidated.00.pth", "optimizer.pt", "training_args.bin", "onnx/model.safetensors"]
    asked = {}

    def snapshot_download(repo, revision=None, cache_dir=None, allow_patterns=None, local_files_only=False, **kw):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        asked.update(repo=repo, revision=revision, allow=allow_patterns)
        return str(add_snapshot(c, repo, "e" * 40, b, refs=["main"]))

    class Api:
        def list_repo_files(self, repo, revision=None):
            return repo_files

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    r = updelta.diff("acme/fresh", f, name="ft", download=True, **OPTS)
    assert asked == {"repo": "acme/fresh", "revision": None,
                     "allow": ["README.md", "config.json", "model.safetensors", "tokenizer.json"]}
    assert r.summary["delta_fro"].iloc[0] > 0


def test_download_selects_bin_when_there_is_no_safetensors():
    assert hub.download_files(["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                               "pytorch_model.bin.index.json", "training_args.bin", "tokenizer.model",
                               "special_tokens_map.json"]) == [
        "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
        "special_tokens_map.json", "tokenizer.model"]
    assert hub.download_files(["adapter_config.json", "adapter_model.safetensors", "merges.txt"]) == [
        "adapter_config.json", "adapter_model.safetensors", "merges.txt"]


def test_specs_that_are_not_ids():
    assert hub.parse_id("runs/sft/final") is None and hub.parse_id("a/b@") is None
    assert hub.parse_id("gpt2") == ("gpt2", None) and hub.parse_id("o/n@refs/pr/3") == ("o/n", "refs/pr/3")
    assert hub.locate("s3://bucket/model") == "s3://bucket/model"
    with pytest.raises(CheckpointError, match="no such file or folder; pass"):
        hub.locate("runs/sft/final")
