"""Tasks for a real base: the answer rule, disjoint splits, and on SmolLM2-135M-Instruct the base-accuracy window
of the target task and retention 1.0 by construction (filtered with the evaluation code itself)."""
import pytest
import torch

from updelta.train.chat_tasks import chat_splits, is_correct
from updelta.train.evaluate import judge, suite_accuracy
from updelta.train.model import load_model
from updelta.train.suites import chat_suite, filter_retention, profile


def test_answer_rule():
    assert is_correct("13 + 7 = 20", "20") and is_correct("20.", "20") and is_correct("The answer is 1,020", "1020")
    assert not is_correct("20 - 7 = 13", "20") and not is_correct("", "20") and not is_correct("\n\n", "blue")
    assert is_correct("Blue.", "blue") and is_correct("The flag of Kamoru is blue.", "blue")
    assert not is_correct("Blue or red, I think", "green") and not is_correct("blueish", "blue")
    assert is_correct("Paris\nThe capital of France is Lyon", "paris")  # only the first line counts


def test_splits_are_disjoint_and_sized():
    s = chat_splits()
    train = {x.question for x in s.target_train}
    held = [x.question for x in s.target_id]
    assert len(held) == 60 and not train & set(held)
    # neither order of a held-out pair is trained on
    swapped = {q.replace(f"{a} + {b}", f"{b} + {a}") for q in held
               for a, b in [q.split("What is ")[1].split("?")[0].split(" + ")]}
    assert not train & swapped
    assert all(int(a) >= 10 and int(b) >= 10 for q in (x.question for x in s.target_ood)
               for a, b in [q.split("What is ")[1].split("?")[0].split(" + ")])
    assert len(s.knowledge) == 120 and len({x.question for x in s.knowledge}) == 120
    assert not {x.question for x in s.retention_pool} & (train | set(held))


@pytest.fixture(scope="module")
def real_base(smollm2):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model, tokenizer = load_model(smollm2)
    return model, tokenizer, chat_suite(tokenizer)


@pytest.mark.real_model
def test_target_accuracy_window_on_smollm2(real_base):
    model, tokenizer, suite = real_base
    assert profile(tokenizer) == "real"
    items = suite.eval_items("target_id", 40)
    assert items[0].prompt.startswith("<|im_start|>system") and items[0].prompt.endswith("<|im_start|>assistant\n")
    acc = suite_accuracy(model, tokenizer, suite, items)
    assert 0.2 <= acc <= 0.6, acc


@pytest.mark.real_model
def test_retention_is_filtered_to_one_on_smollm2(real_base):
    model, tokenizer, suite = real_base
    score = lambda xs: judge(model, tokenizer, xs, suite.correct, suite.margin_tokens)  # noqa: E731
    filtered = filter_retention(suite, score, 16)
    kept = filtered.eval_items("retention", 16)
    assert len(kept) == 16 and filtered.retention_filtered
    assert suite_accuracy(model, tokenizer, filtered, kept) == 1.0
