"""Caption cleaning must produce exactly the strings the official evaluation tokenized."""
import numpy as np
import pytest

from vmm.data.text import clean_caption


def test_matches_official_pre_text_on_golden_captions(reference_dir):
    golden = np.load(reference_dir / "videomamba_golden_mm_tiny.npz", allow_pickle=False)
    raw, expected = list(golden["input/text_raw"]), list(golden["input/text"])
    assert [clean_caption(str(t)) for t in raw] == expected
    # The fixture covers the interesting cases: the apostrophe, the comma, "-" and "!".
    assert expected[3].endswith("step by step how to repair an old bicycles rear wheel")


@pytest.mark.parametrize("char", list(",.'!?\"()*#:;~"))
def test_deletes_each_official_punctuation_character(char):
    assert clean_caption(f"ab{char}cd") == "abcd"


def test_dash_and_slash_become_spaces_and_person_tag_is_replaced_after_lowercasing():
    assert clean_caption("Up-and/down") == "up and down"
    assert clean_caption("<PERSON> waves at <person>") == "person waves at person"
    # Characters outside the official list are kept.
    assert clean_caption("a&b [c] {d} 50% $3 @x") == "a&b [c] {d} 50% $3 @x"


def test_whitespace_handling_follows_the_official_quirks():
    assert clean_caption("  A   man  \n") == "a man"
    assert clean_caption("a - b") == "a b"  # the dash leaves three spaces, collapsed to one
    # Only runs of 2+ whitespace are collapsed: one tab inside survives, like the official code.
    assert clean_caption("a\tb") == "a\tb"
    assert clean_caption("a \t\n b") == "a b"
    assert clean_caption("caption\n") == "caption"
    assert clean_caption("?!.") == ""


def test_max_words_truncates_like_official_max_l():
    assert clean_caption("One, two, three, four.", max_words=3) == "one two three"
    assert clean_caption("one two", max_words=5) == "one two"
    assert clean_caption("one two", max_words=None) == "one two"
    assert clean_caption("one two", max_words=0) == "one two"  # falsy: no truncation, as official


@pytest.mark.parametrize("raw, cleaned", [
    # Only the ASCII characters of the official list go: curly quotes, dashes and the ellipsis stay.
    ("\u201cQuoted\u201d caption \u2014 em\u2011dash\u2026", "\u201cquoted\u201d caption \u2014 em\u2011dash\u2026"),
    ("'A dog,' she said.", "a dog she said"),
    ("Visit https://x.com/a-b?c=d#top now!", "visit https xcom a bc=dtop now"),
    ("1,000 people; 3.14 pies: 50% off~", "1000 people 314 pies 50% off"),
    ("a   lot  of\t\tspace\n\n", "a lot of space"),
    ("#Sunset #beach_life", "sunset beach_life"),
    ("&amp; &lt;b&gt; &#39;ok&#39;", "&amp &ltb&gt &39ok&39"),  # HTML entities are not decoded
    ("Caf\u00e9 NA\u00cfVE", "caf\u00e9 na\u00efve"),  # accents stay; BERT strips them
    ("Emoji \U0001F600 \u4e2d\u6587\uff0c\uff26\uff55\uff4c\uff4c\uff01", "emoji \U0001F600 \u4e2d\u6587\uff0c\uff46\uff55\uff4c\uff4c\uff01"),
    ("C++/C# -- co-op", "c++ c co op"),
    ("(*) ;:~", ""),
])
def test_adversarial_captions_are_cleaned_as_the_official_regex_does(raw, cleaned):
    assert clean_caption(raw) == cleaned


@pytest.mark.parametrize("max_words", [-1, 2.5, True, "3"])
def test_max_words_that_is_no_word_count_is_refused(max_words):
    """max_words=-1 (a common "no limit") sliced off the last word without a word of warning."""
    from vmm.errors import VmmError
    with pytest.raises(VmmError, match=rf"^max_words={max_words!r}: must be a whole number of words >= 1, or None"):
        clean_caption("a dog runs in the park", max_words=max_words)


def test_docstring_examples_run():
    import doctest

    import vmm.data.text

    result = doctest.testmod(vmm.data.text)
    assert result.attempted > 0 and result.failed == 0


def test_has_words_agrees_with_the_tokenizer_on_invisible_characters():
    """has_words passed captions of zero-width spaces, a BOM, U+FFFD (undecodable bytes), NUL, a soft hyphen or a
    lone accent, all of which BERT drops: such a caption tokenized to [CLS] [SEP] alone and was trained on."""
    import random

    import vmm
    from vmm.data.text import has_words
    tok = vmm.get_tokenizer("videomamba_m16_25m")
    pool = list(" \t\n-/.,!?'\"a1\u00e9\u0301<>person\U0001F600")
    pool += list("\u200b\u200d\ufeff\ufffd\x00\x85\u2028\u3000\u00a0\u00ad\u0378")  # invisible to BERT
    rng = random.Random(0)
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    texts += ["\u200b", "\ufeff\u200d", "\ufffd", "\x00", "\u0301", "\u00ad", "e\u0301", "\U0001F600", "\u65e5"]
    ids, mask = tok(texts, max_length=12)
    words = (mask.sum(1) > 2).tolist()  # more than [CLS] and [SEP]
    assert [has_words(t) for t in texts] == words
    assert 0.3 < sum(words) / len(words) < 0.9  # both answers are exercised


def test_training_annotations_refuse_a_caption_of_invisible_characters(tmp_path):
    import json

    from vmm.errors import VmmError
    from vmm.training.data import load_annotation_corpus
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "anno.json").write_text(json.dumps([{"video": "a.mp4", "caption": "\ufeff\u200b"}]))
    with pytest.raises(VmmError, match=r"entry 0 of .*anno\.json \(a\.mp4\) has an empty caption"):
        load_annotation_corpus(str(tmp_path / "anno.json"), str(tmp_path))
