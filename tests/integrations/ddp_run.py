"""A 2-process run (launched by test_distributed.py through torch.distributed.run, gloo on CPU).

Part 1, DDP: a transformers Trainer on a tiny Llama, tracked every 2 steps, saving checkpoint-2; every rank writes
the updelta entries of its log_history to rank{R}.json.
Part 2, sharded parameters: the same model sharded with FSDP2 (`fully_shard`, DTensor parameters); the Tracker in
sharded mode (each rank its shard, sums all-reduced) against an unsharded Tracker on a full copy, written by rank 0
to sharded.json."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from updelta.integrations.tracker import TrackOptions, Tracker
from updelta.integrations.transformers import track


def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    model = tiny()
    if rank == 0:
        model.save_pretrained(out / "start")
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": (ids := torch.randint(0, 64, (16,), generator=g)), "labels": ids.clone()} for _ in range(16)]
    args = TrainingArguments(output_dir=str(out / "out"), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, save_steps=2, save_only_model=True, report_to=[], use_cpu=True,
                             ddp_backend="gloo", disable_tqdm=True, logging_steps=1, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    track(trainer, every_n_steps=2)
    trainer.train()
    logs = [h for h in trainer.state.log_history if any(k.startswith("updelta/") for k in h)]
    (out / f"rank{rank}.json").write_text(json.dumps({"world": dist.get_world_size(), "logs": logs}))

    from torch.distributed.fsdp import fully_shard

    full = tiny()
    sharded = copy.deepcopy(full)
    for layer in sharded.model.layers:
        fully_shard(layer)
    fully_shard(sharded)
    opts = TrackOptions(every_n_steps=1)
    ts = Tracker(sharded, opts, main=rank == 0, shards="FSDP")
    ts.begin(0)
    tf = Tracker(full, opts)
    tf.begin(0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        for p in full.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-3 * (torch.rand(p.shape, generator=gen) < 0.5))
        for (n, p), q in zip(sharded.named_parameters(), full.parameters()):
            local = p.to_local()
            full_flat = q.detach()
            # the shard of dim 0 this rank holds (FSDP2 shards dim 0, chunks of ceil(n / world))
            chunk = -(-full_flat.shape[0] // dist.get_world_size())
            local.copy_(full_flat[rank * chunk: rank * chunk + local.shape[0]])
    a = ts.measure(1)
    b = tf.measure(1)
    if rank == 0:
        cols = ["n_compared", "n_eq", "n_le_atol", "n_le_rtol", "rel_delta", "delta_fro", "delta_max"]
        (out / "sharded.json").write_text(json.dumps({
            "sharded": a.result.tensors[["name"] + cols].to_dict("records"),
            "full": b.result.tensors[["name"] + cols].to_dict("records"),
            "logs_sharded": a.logs, "logs_full": b.logs}))
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
