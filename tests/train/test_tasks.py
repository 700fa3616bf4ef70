"""The synthetic tasks: correct procedures, disjoint splits, committed samples in sync, a loadable tokenizer."""
import itertools
import json
import random
import re
from pathlib import Path

from transformers import AutoTokenizer

from updelta.train.tasks import (
    EVAL_SPLITS,
    addition,
    eval_examples,
    extract_answer,
    pretrain_stream,
    train_examples,
    write_samples,
)
from updelta.train.tokenizer import ALPHABET, build_tokenizer

DATA = Path(__file__).resolve().parents[2] / "data"


def test_addition_procedure_is_right():
    assert addition(347, 285).completion == "7+5=12,4+8+1=13,3+2+1=6>632"
    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randrange(10_000), rng.randrange(10_000)
        x = addition(a, b)
        assert x.answer == extract_answer(x.completion) == str(a + b)
        digits, carry = [], 0
        for step in x.completion.split(">")[0].split(","):   # replay the written steps
            terms, total = step.split("=")
            terms = [int(t) for t in terms.split("+")]
            assert sum(terms) == int(total) and (len(terms) == 3) == bool(carry)
            digits.append(int(total) % 10)
            carry = int(total) // 10
        assert int(("1" if carry else "") + "".join(map(str, reversed(digits)))) == a + b


def test_splits_are_disjoint_and_sized():
    target_id = eval_examples("target_id")
    assert len(target_id) == 200 and all(re.fullmatch(r"\d{3}\+\d{3}=", x.prompt) for x in target_id)
    assert all(re.fullmatch(r"\d{4}\+\d{4}=", x.prompt) for x in eval_examples("target_ood"))
    assert not {x.prompt for x in target_id} & {x.prompt for x in train_examples("target")}
    knowledge = eval_examples("knowledge")
    assert knowledge == train_examples("knowledge")              # memorisation: the test asks the trained facts
    new_names = {x.prompt.split(" of ")[1] for x in knowledge}
    assert len(knowledge) == 210 and len(new_names) == 70  # at least 200 items in every split (docs/claims.md)
    assert all(len(eval_examples(s)) >= 200 for s in EVAL_SPLITS)
    stream = list(itertools.islice(pretrain_stream(seed=0), 20_000))
    assert not new_names & {x.prompt.split(" of ")[1] for x in stream if " of " in x.prompt}
    held_out = {x.prompt for split in ("target_id", "retention") for x in eval_examples(split) if "+" in x.prompt}
    assert not held_out & {x.prompt for x in stream}
    retention = eval_examples("retention", 10)
    assert sum("+" in x.prompt for x in retention) == 5          # a prefix keeps additions and facts


def test_committed_samples_match_the_generators(tmp_path):
    written = write_samples(tmp_path)
    assert {p.name for p in written} >= {f"{s}.jsonl" for s in EVAL_SPLITS}
    for path in written:
        committed = DATA / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run data/regenerate.py"
        assert all({"prompt", "completion", "answer"} == json.loads(line).keys() for line in path.open())


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(ALPHABET)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(ALPHABET) + 1
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == ALPHABET
