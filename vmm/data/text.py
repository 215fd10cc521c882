"""Caption cleaning, identical to the official VideoMamba/UMT ``pre_text``.

The retrieval numbers in the paper were measured on cleaned captions, so the
tokenizer must see exactly the same strings. The order of the steps matters
(for example ``<PERSON>`` only becomes ``person`` because lower-casing runs
first), and so do the official quirks kept here on purpose:

- only runs of two or more whitespace characters are collapsed, so a single
  tab or newline inside a caption survives (BERT's tokenizer splits on it
  anyway);
- at the ends, trailing newlines and then spaces are removed, not all
  whitespace.
"""
from __future__ import annotations

import re
import string
import unicodedata

from vmm.errors import VmmError, is_whole_number

# Punctuation deleted outright by the official code: , . ' ! ? " ( ) * # : ; ~
_DELETED = ",.'!?\"()*#:;~"
_DELETED_CHARS = re.compile(f"[{re.escape(_DELETED)}]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")
# What cleaning deletes or turns into spaces, and ASCII whitespace: a caption of only these has no words.
_NO_WORD_CHARS = _DELETED + "-/" + string.whitespace


def clean_caption(text: str, max_words: int | None = None) -> str:
    """Clean one caption the way the official evaluation does.

    Lower-case; delete ``, . ' ! ? " ( ) * # : ; ~``; turn ``-`` and ``/`` into
    spaces and ``<person>`` into ``person``; collapse whitespace runs; strip.
    ``max_words`` (the official ``max_l``, unused at evaluation) keeps only
    the first words, counted by splitting on single spaces.

    >>> clean_caption("A man's <PERSON> plays a step-by-step  guitar solo!")
    'a mans person plays a step by step guitar solo'
    >>> clean_caption("one two three four", max_words=2)
    'one two'
    """
    text = _DELETED_CHARS.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _WHITESPACE_RUN.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    # Checked here, not left to the slice: max_words=-1 ("no limit" elsewhere) silently dropped the last word.
    if max_words is not None and (not is_whole_number(max_words) or max_words < 0):
        raise VmmError(f"max_words={max_words!r}: must be a whole number of words >= 1, or None (or 0) for no limit")
    if max_words:
        words = text.split(" ")
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    return text


def has_words(text: str) -> bool:
    """Whether :func:`clean_caption` leaves a word of ``text`` for BERT: "...", "?!", " \\t" and invisible
    characters (zero-width space, BOM, U+FFFD, a lone accent) have none and tokenize to [CLS] [SEP] alone.

    Most captions start with a letter once the characters cleaning removes are stripped, which settles it
    without the cleaner's regular expressions (25M captions of a web corpus would cost half a minute).

    >>> has_words("A dog!"), has_words("?! ..."), has_words("<person>"), has_words("\\u200b\\ufeff")
    (True, False, True, False)
    """
    rest = text.strip(_NO_WORD_CHARS)
    if not rest:
        return False
    return rest[0].isalnum() or any(map(_bert_keeps, unicodedata.normalize("NFD", clean_caption(rest))))


def _bert_keeps(char: str) -> bool:
    # BERT's basic tokenizer drops NUL, U+FFFD and control/format characters (category C), splits on whitespace
    # and, lower-casing, strips accents (category Mn after NFD); every other character ends up in a token.
    category = unicodedata.category(char)
    return not (char.isspace() or category[0] == "C" or category == "Mn" or char == "\ufffd")
