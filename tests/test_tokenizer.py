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


@pytest.mark.parametrize("texts, message", [
    (b"a dog", r"^texts must be a string or a list of strings, got bytes; decode it first, e\.g\. texts\.decode"),
    (bytearray(b"a dog"), r"^texts must be a string or a list of strings, got bytearray; decode it first"),
    (["a cat", b"a dog"], r"^texts\[1\] is b'a dog' \(bytes\), not a string; decode it first, e\.g\. \.decode"),
])
def test_bytes_are_refused_with_the_decoding_that_fits(tok, texts, message):
    """Bytes (a caption file read in binary mode) were iterated as ints: b"a dog" was "texts[0] is 97 (int)"."""
    from vmm.errors import VmmError
    with pytest.raises(VmmError, match=message):
        tok(texts)
    assert torch.equal(tok(b"a dog".decode("utf-8"))[0], tok(["a dog"])[0])


def test_a_vocabulary_folder_under_the_home_folder(tok, tmp_path, monkeypatch):
    """A config's tokenizer "~/bert" (model.overrides.tokenizer=~/bert: no shell expands it there) was "tokenizer
    vocabulary ~/bert not found", as model folders and checkpoints are not."""
    from vmm.tokenizer import Tokenizer
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "vocab.txt").write_bytes(tok.vocab_file.read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    mine = Tokenizer("~/bert")
    assert mine.vocab_file == tmp_path / "bert" / "vocab.txt"
    assert torch.equal(mine(["A man, a plan!"])[0], tok(["A man, a plan!"])[0])
