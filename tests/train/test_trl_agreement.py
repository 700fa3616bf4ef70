"""Our DFT loss against the TRL library's own: `SFTTrainer(loss_type="dft").compute_loss` (TRL 1.16 has no standalone
DFT function), on the same tiny model and the same two micro-batches, with TRL's global token normalization."""
import copy

import pytest
import torch

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")

from updelta.train.batching import collate, encode  # noqa: E402
from updelta.train.losses import dft_loss, sft_loss  # noqa: E402
from updelta.train.model import new_model  # noqa: E402
from updelta.train.tasks import Example, addition  # noqa: E402

EXAMPLES = [addition(12, 3), Example("color of kavo?", "red", "red"), addition(7, 8), addition(99, 99)]


def _trainer(model, tokenizer, tmp_path, loss_type):
    datasets.disable_progress_bars()
    data = datasets.Dataset.from_list([{"prompt": x.prompt, "completion": x.completion} for x in EXAMPLES])
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), loss_type=loss_type, per_device_train_batch_size=2,
                         shuffle_dataset=False, report_to=[], use_cpu=True, max_length=64, disable_tqdm=True)
    return trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


@pytest.fixture
def peaked_model():
    """A fresh tiny model with a sharpened head, so target probabilities vary a lot between tokens."""
    model, tokenizer = new_model(seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model, tokenizer


@pytest.mark.parametrize("loss_type, ours", [("dft", dft_loss), ("nll", sft_loss)])
def test_matches_trl_sft_trainer(peaked_model, tmp_path, loss_type, ours):
    model, tokenizer = peaked_model
    mine = copy.deepcopy(model)
    trainer = _trainer(model, tokenizer, tmp_path, loss_type)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 2

    # TRL's masking is ours: <bos> prompt completion <eos>, loss on the completion and <eos> only
    by_ids = {tuple(encode(x, tokenizer)[0]): x for x in EXAMPLES}
    for batch in batches:
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        expected = collate([by_ids[r] for r in rows], tokenizer)
        assert torch.equal(batch["input_ids"], expected.input_ids)
        assert torch.equal(batch["labels"], expected.labels)

    num_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)   # the accumulated batch's tokens
    trl_loss = our_loss = 0.0
    for batch in batches:
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
        loss.backward()
        trl_loss += loss.item()
        logits = mine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = ours(logits[:, :-1], batch["labels"][:, 1:], num_items=num_items)
        loss.backward()
        our_loss += loss.item()

    assert our_loss == pytest.approx(trl_loss, rel=1e-5)
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), mine.named_parameters()):
        scale = p.grad.abs().max().item()
        assert (p.grad - q.grad).abs().max().item() <= 1e-4 * scale + 1e-9, name


def test_dft_and_sft_really_differ_on_this_batch(peaked_model):
    """Guards the test above: on this model the two objectives are far apart, so agreement means something."""
    model, tokenizer = peaked_model
    batch = collate(EXAMPLES, tokenizer)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.labels[:, 1:]
    assert dft_loss(logits, labels).item() < 0.5 * sft_loss(logits, labels).item()
