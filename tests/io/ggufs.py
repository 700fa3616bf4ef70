"""Small GGUF files written with gguf-py's own `GGUFWriter`, for the GGUF tests and the fuzz job."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q

H, HEADS, KV, FF, V = 64, 4, 2, 96, 32  # hidden, heads, KV heads, feed-forward, vocabulary (llama geometry)


def q4k_blocks(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random Q4_K blocks (144 bytes per 256 elements) with finite f16 scales d, dmin: [rows, cols/256*144] bytes."""
    nb = rows * cols // 256
    b = rng.integers(0, 256, size=(nb, 144), dtype=np.uint8)
    b[:, 0:2] = np.frombuffer(rng.uniform(1e-3, 1e-2, nb).astype(np.float16).tobytes(), np.uint8).reshape(nb, 2)
    b[:, 2:4] = np.frombuffer(rng.uniform(1e-3, 1e-2, nb).astype(np.float16).tobytes(), np.uint8).reshape(nb, 2)
    return b.reshape(rows, cols // 256 * 144)


def write(path: Path, tensors: dict, arch: str = "llama", heads: int = HEADS, kv: int = KV, blocks: int = 1,
          name: str = "tiny", split_max_tensors: int = 0) -> Path:
    """Write `tensors` ({GGUF name: float array (stored F32), or (array, qtype): Q8_0/F16/BF16 through
    gguf.quants.quantize, or (uint8 byte array, qtype): raw blocks}) as a GGUF file with llama-like metadata."""
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_name(name)
    w.add_block_count(blocks)
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FF)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    for n, t in tensors.items():
        if isinstance(t, tuple):
            arr, qt = t
            if arr.dtype == np.uint8:
                w.add_tensor(n, arr, raw_dtype=qt)
            elif qt == Q.F16:
                w.add_tensor(n, arr.astype(np.float16))
            else:
                w.add_tensor(n, gguf.quants.quantize(arr.astype(np.float32), qt), raw_dtype=qt)
        else:
            w.add_tensor(n, np.ascontiguousarray(t, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def oracle(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of `path` as gguf-py reads and de-quantizes it (GGUFReader + gguf.quants.dequantize), float64."""
    r = gguf.GGUFReader(str(path))
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
        tuple(int(d) for d in reversed(t.shape))) for t in r.tensors}


def permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's converter permutation of q/k rows (convert_hf_to_gguf.py, LlamaModel.permute): the known
    answer that updelta must undo through transformers' LlamaTensorProcessor."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_hf(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A one-block llama state dict (float32, Hugging Face names), tied head."""
    hd = H // HEADS
    sd = {"model.embed_tokens.weight": rng.standard_normal((V, H)),
          "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((HEADS * hd, H)),
          "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((KV * hd, H)),
          "model.layers.0.self_attn.v_proj.weight": rng.standard_normal((KV * hd, H)),
          "model.layers.0.self_attn.o_proj.weight": rng.standard_normal((H, HEADS * hd)),
          "model.layers.0.mlp.gate_proj.weight": rng.standard_normal((FF, H)),
          "model.layers.0.mlp.up_proj.weight": rng.standard_normal((FF, H)),
          "model.layers.0.mlp.down_proj.weight": rng.standard_normal((H, FF)),
          "model.layers.0.input_layernorm.weight": 1 + 0.1 * rng.standard_normal(H),
          "model.layers.0.post_attention_layernorm.weight": 1 + 0.1 * rng.standard_normal(H),
          "model.norm.weight": 1 + 0.1 * rng.standard_normal(H)}
    return {k: (0.05 * v if v.ndim == 2 else v).astype(np.float32) for k, v in sd.items()}


LLAMA_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "model.layers.0.self_attn.q_proj.weight": "blk.0.attn_q.weight",
              "model.layers.0.self_attn.k_proj.weight": "blk.0.attn_k.weight",
              "model.layers.0.self_attn.v_proj.weight": "blk.0.attn_v.weight",
              "model.layers.0.self_attn.o_proj.weight": "blk.0.attn_output.weight",
              "model.layers.0.mlp.gate_proj.weight": "blk.0.ffn_gate.weight",
              "model.layers.0.mlp.up_proj.weight": "blk.0.ffn_up.weight",
              "model.layers.0.mlp.down_proj.weight": "blk.0.ffn_down.weight",
              "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
              "model.layers.0.post_attention_layernorm.weight": "blk.0.ffn_norm.weight"}


def save_hf(sd: dict[str, np.ndarray], folder: Path, model_type: str = "llama") -> Path:
    """`sd` as a Hugging Face folder (model.safetensors, float32, and a config.json)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(folder / "model.safetensors"))
    arch = {"llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM"}[model_type]
    (folder / "config.json").write_text(json.dumps({
        "architectures": [arch], "model_type": model_type, "hidden_size": H, "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": H // HEADS, "intermediate_size": FF, "num_hidden_layers": 1,
        "vocab_size": V, "tie_word_embeddings": True}))
    return folder


def small_base(path: Path, seed: int = 0) -> tuple[Path, dict]:
    """A small mixed-type GGUF (F32, F16, Q8_0, Q4_K raw blocks) and the float arrays it was made from."""
    rng = np.random.default_rng(seed)
    t = {"token_embd.weight": (0.05 * rng.standard_normal((V, H)), Q.F16),
         "blk.0.attn_q.weight": (0.05 * rng.standard_normal((H, H)), Q.Q8_0),
         "blk.0.attn_v.weight": (0.05 * rng.standard_normal((32, H)), Q.Q8_0),
         "blk.0.ffn_up.weight": (q4k_blocks(rng, FF, 256), Q.Q4_K),
         "blk.0.attn_norm.weight": 1 + 0.1 * rng.standard_normal(H)}
    return write(path, t), t


def info_offset(raw: bytes, name: str) -> int:
    """Byte position just after tensor `name`'s name string in a GGUF header (its n_dims field)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    return raw.index(key) + len(key)
