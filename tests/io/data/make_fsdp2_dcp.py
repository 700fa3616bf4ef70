"""Write tests/io/data/fsdp2_dcp/: a real two-rank torch.distributed.checkpoint of dim-0 sharded DTensors (FSDP2's
layout: uneven chunks, one .distcp per rank, a non-tensor entry), and fsdp2_src.safetensors with the same tensors.

Run once (about 20 s: it spawns two gloo processes): python tests/io/data/make_fsdp2_dcp.py
"""
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from safetensors.torch import save_file

HERE = Path(__file__).parent


def planted() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    return {"model.embed_tokens.weight": (torch.randn(9, 4, generator=g) * 0.05).to(torch.bfloat16),
            "model.layers.0.self_attn.q_proj.weight": (torch.randn(5, 4, generator=g) * 0.05).to(torch.bfloat16),
            "model.layers.0.input_layernorm.weight": torch.linspace(0.5, 1.5, 4),
            "model.norm.weight": torch.ones(3)}


def rank_main(rank: int, world: int, out: str, port: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    sd = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in planted().items()}
    sd["step"] = 100
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


if __name__ == "__main__":
    out = HERE / "fsdp2_dcp"
    shutil.rmtree(out, ignore_errors=True)
    save_file(planted(), str(HERE / "fsdp2_src.safetensors"))
    mp.spawn(rank_main, args=(2, str(out), int(sys.argv[1]) if len(sys.argv) > 1 else 29531), nprocs=2)
