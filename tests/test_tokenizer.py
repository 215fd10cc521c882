"""The tokenizer must give the ids of the official pure-Python BertTokenizer, including on rare characters."""
import numpy as np
import pytest
import torch

import vmm

A, B, AB, UNK = 1037, 1038, 11113, 100  # "a", "b", "ab", [UNK]


@pytest.fixture(scope="module")
def tok():
    return vmm.get_tokenizer("videomamba_m16_25m")


def test_golden_fixture_ids(tok, reference_dir):
    golden = np.load(reference_dir / "videomamba_golden_mm_tiny.npz", allow_pickle=False)
    ids, mask = tok(list(golden["input/text_raw"]), max_length=16)
    assert torch.equal(ids, torch.from_numpy(golden["input/text_input_ids"]))
    assert torch.equal(mask, torch.from_numpy(golden["input/text_attention_mask"]))


@pytest.mark.parametrize("caption, expected", [
    # An unassigned code point is a control character to the official tokenizer: dropped, the word stays whole.
    ("a\u0378b", [101, AB, 102, 0, 0, 0]),
    # CJK Extension E (U+2B820) is split off like any Chinese character, so "a" and "b" stay words.
    ("a\U0002B820b", [101, A, UNK, B, 102, 0]),
])
def test_rare_characters_tokenize_like_the_official_python_tokenizer(tok, caption, expected):
    ids, mask = tok([caption], max_length=6)
    assert ids[0].tolist() == expected
    assert mask[0].tolist() == [int(i != 0) for i in expected]


def test_padding_truncation_and_special_tokens(tok):
    ids, mask = tok(["A man, a plan!", ""], max_length=5)
    assert ids.tolist() == [[101, A, 2158, A, 102], [101, 102, 0, 0, 0]]  # cut to max_length, [SEP] kept last
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = tok(["a man plays", ""], max_length=2)  # only [CLS] [SEP] fit (transformers 4 would not truncate)
    assert ids.tolist() == [[101, 102]] * 2 and mask.tolist() == [[1, 1]] * 2


@pytest.mark.parametrize("module", ["vmm.tokenizer", "vmm.transforms", "vmm.models.text"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
