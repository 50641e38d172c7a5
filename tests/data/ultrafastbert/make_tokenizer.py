"""Make the tiny tokenizer of the small masked-LM checkpoints in this folder (nothing can be downloaded
where the tests run, and the published tokenizer has 32768 tokens):

    cd tests/data/ultrafastbert && python make_tokenizer.py mlm-1tree mlm-2trees

A WordPiece tokenizer like the published one (lower case, accents stripped, the special tokens
``<pad> <s> </s> <unk> <cls> <sep> <mask>``, ``<pad>`` first so that its id is the model's
``pad_token_id`` 0) over 300 tokens: the specials, letters, digits, punctuation, some English words
and their ``##`` continuations. The checkpoints' weights are random, so what it fills in is noise.
"""

from __future__ import annotations

import string
import sys

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<cls>", "<sep>", "<mask>"]
WORDS = (
    "the of and to in is was for on that with as by at from it an be are this which or his her their "
    "capital city country france paris germany berlin river film good bad great music book world year "
    "people time first new one two three many most also after new state made used where when "
    "he she they we you not but all has have had been were its more other some into than then these "
    "there would who what about over only after"
).split()
VOCABULARY_SIZE = 300


def vocabulary() -> dict[str, int]:
    tokens = list(SPECIALS)
    for token in [*string.ascii_lowercase, *string.digits, *".,;:!?'\"()-", *WORDS]:
        if token not in tokens:
            tokens.append(token)
    for letter in string.ascii_lowercase:
        if len(tokens) < VOCABULARY_SIZE:
            tokens.append("##" + letter)
    suffixes = ["##s", "##ed", "##ing", "##er", "##ly", "##es", "##en", "##al", "##ion", "##ic"]
    tokens += [s for s in suffixes if s not in tokens][: VOCABULARY_SIZE - len(tokens)]
    while len(tokens) < VOCABULARY_SIZE:
        tokens.append(f"[unused{len(tokens)}]")
    return {token: number for number, token in enumerate(tokens)}


def main(folders: list[str]) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordPiece(vocabulary(), unk_token="<unk>"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        cls_token="<cls>",
        sep_token="<sep>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=128,
    )
    for folder in folders:
        tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    main(sys.argv[1:])
