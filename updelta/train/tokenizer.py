"""A character-level tokenizer over the synthetic tasks' alphabet.

Every character of the tasks is one token, so the vocabulary is tiny (~50) and the tokenizer needs no training.
It is a `tokenizers` WordLevel model behind a regex that isolates each character, wrapped in
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(folder)` loads what `save_pretrained` wrote.

    tok = build_tokenizer()
    tok("12+34=")["input_ids"]        # [bos, '1', '2', '+', '3', '4', '=']
    tok.decode(ids, skip_special_tokens=True)
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz +-=?:;,.>"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The char-level tokenizer: ids 0-3 are <pad> <bos> <eos> <unk>, then one id per character of ALPHABET.

    Encoding with special tokens prepends <bos> only; the end token is the training data's job.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        padding_side="left", model_max_length=256)
