"""The multimodal VideoMamba-BERT model (official ``UMT_VIDEOMAMBA``): contrastive towers plus ITM fusion.

ITC (the retrieval score) = mean over frames of the cosine between each frame's embedding and the text
embedding, with no temperature. ITM re-scores (video, text) pairs through the fusion layers; its
``itm_head(CLS)[:, 1]`` logit replaces the ITC score for the top-k in the official two-stage evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vmm.errors import VmmError
from vmm.models.config import VideoMambaConfig, replace_checked
from vmm.models.registry import register_model
from vmm.models.text import TextConfig, TextEncoder
from vmm.models.videomamba import VideoMambaVisionEncoder


@dataclass
class MultimodalConfig:
    vision: VideoMambaConfig = field(default_factory=lambda: VideoMambaConfig(
        embed_dim=576, depth=32, num_classes=0, drop_path_rate=0.25))
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    temp_init: float = 0.07
    max_text_len: int = 32  # official pretraining / MSRVTT length; eval protocols override per dataset
    tokenizer: str = "bert-base-uncased"

    def conflict(self) -> Optional[str]:
        """The first fields that do not fit together, with the fix; None when they all do."""
        positions = self.text.max_position_embeddings
        if self.max_text_len > positions:
            return (f"max_text_len={self.max_text_len} is more than the text tower's {positions} positions "
                    f"(text max_position_embeddings); pass max_text_len <= {positions}")
        return None


_EXAMPLE = {"vision": "vision=dict(depth=2)", "text": "text=dict(num_hidden_layers=2)"}


def build_multimodal_config(vision: Optional[dict] = None, text: Optional[dict] = None, **top: Any) -> MultimodalConfig:
    """MultimodalConfig from nested override dicts, naming any unknown key or bad value."""
    cfg = MultimodalConfig()
    parts = {}
    for where, value in (("vision", vision), ("text", text)):
        if value is not None and not isinstance(value, dict):
            raise VmmError(f"{where}={value!r}: {where} takes a dict of {where} options, e.g. {_EXAMPLE[where]}")
        parts[where] = replace_checked(getattr(cfg, where), value or {}, where=where)
    top_level = {f.name for f in fields(cfg)}
    for where in ("vision", "text"):  # num_frames=16 as for a classifier: name the dict it goes in
        misplaced = sorted(k for k in top if k not in top_level and k in {f.name for f in fields(parts[where])})
        if misplaced:
            raise VmmError(f"{', '.join(misplaced)} {'is a' if len(misplaced) == 1 else 'are'} {where} option"
                           f"{'s' * (len(misplaced) > 1)} of this model; pass {where}=dict("
                           + ", ".join(f"{k}={top[k]!r}" for k in misplaced) + ")")
    return replace_checked(cfg, {**top, **parts}, where="model")


# Official (UMT_VIDEOMAMBA / PretrainVideoMamba / xbert BertConfig) setting -> our field, per section.
_OFFICIAL_VISION = {"img_size": "img_size", "patch_size": "patch_size", "num_frames": "num_frames",
                    "kernel_size": "tubelet_size", "embed_dim": "embed_dim", "depth": "depth",
                    "d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "dt_rank": "dt_rank",
                    "norm_epsilon": "norm_eps", "drop_path_rate": "drop_path_rate", "pool_type": "pool_type",
                    "keep_temporal": "keep_temporal", "clip_decoder_embed_dim": "clip_decoder_embed_dim",
                    "clip_output_dim": "clip_output_dim", "clip_return_layer": "clip_return_layer",
                    "channels": "in_chans"}
# Settings our model has exactly one value of: anything else would be silently computed differently.
# fused_add_norm is absent on purpose: at eval both values give the same add-then-RMSNorm with an fp32 residual.
# (In masked pretraining the official unfused path's distillation target also holds the last mixer's output; vmm
# trains the fused path's target, which every official config uses.)
_OFFICIAL_VISION_FIXED = {"rms_norm": True, "residual_in_fp32": True, "bimamba": True, "bimamba_type": "v2",
                          "add_pool_norm": True, "class_": "PretrainVideoMamba", "clip_teacher": "none"}
# Settings that do not change what the model computes at eval: checkpointing, the init file (loaded weights
# replace it), and the masked-pretraining / teacher settings of UMT_VIDEOMAMBA (no teacher is built here).
_OFFICIAL_VISION_ANY = {"fused_add_norm", "use_checkpoint", "checkpoint_num", "clip_student_return_interval",
                        "pretrained", "name", "ckpt_num_frame", "clip_img_size", "video_mask_type",
                        "video_mask_ratio", "image_mask_type", "image_mask_ratio", "video_double_mask_ratio",
                        "image_double_mask_ratio", "clip_teacher_embed_dim", "clip_teacher_final_dim",
                        "clip_norm_type", "clip_return_interval", "initializer_cfg"}
_OFFICIAL_TEXT = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "fusion_layer", "pad_token_id",
                  "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob"}
_OFFICIAL_TEXT_FIXED = {"position_embedding_type": "absolute"}
_OFFICIAL_TEXT_ANY = {"architectures", "model_type", "initializer_range", "gradient_checkpointing", "encoder_width"}
# The official config's text_encoder entry (configs/model.py TextEncoders): its sizes, and where the BERT weights
# and config come from, which the loaded checkpoint replaces.
_OFFICIAL_TEXT_ENCODER = {"d_model": "hidden_size", "fusion_layer": "fusion_layer"}
_OFFICIAL_TEXT_ENCODER_ANY = {"name", "pretrained", "config"}
# Mamba's ssm_cfg: the sizes are ours; bias/conv_bias have one value here; dt_* only shape an init that the
# official ViT-style init overwrites (spec 2.4), and use_fast_path does not change the math.
_OFFICIAL_SSM = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "dt_rank": "dt_rank"}
_OFFICIAL_SSM_FIXED = {"bias": False, "conv_bias": True}
_OFFICIAL_SSM_ANY = {"dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor", "use_fast_path"}
_OFFICIAL_EVAL_FIXED = {"eval_frame_ensemble": "concat", "deep_fusion": False, "model_cls": "UMT_VIDEOMAMBA"}
# The text encoder the official builder makes (build_bert): BertForMaskedLM when is_pretrain, else BertModel
# without pooler. The value is vmm's text mlm_head, which is_pretrain sets as well.
_OFFICIAL_TEXT_CLASSES = {"BertModel(add_pooling_layer=False)": False, "BertForMaskedLM": True}
# Descriptions of how a fixture was made, and evaluation settings that are not part of the model.
_OFFICIAL_INFO = {"fixture", "device", "dtype", "mode", "seeds", "weights", "tokenizer", "n_state_dict_keys",
                  "k_test", "fp16"}


def official_config_overrides(official: dict) -> dict:
    """``create_model("videomamba_m16_mm", **overrides)`` arguments for an official UMT_VIDEOMAMBA config.

    ``official`` is the config as the golden fixtures record it (``config_json``: ``vision_encoder``,
    ``bert_config``, ``embed_dim``, ``temp_init``, ``max_txt_l``...). Every setting is mapped or checked: one
    this model cannot honour is a VmmError naming it, never silently dropped.
    """
    vision, text = {}, {}
    top: dict[str, Any] = {}
    for key, value in official.items():
        if key == "vision_encoder":
            for k, v in value.items():  # in order: a size given twice takes the later one, as the official code
                if k == "ssm_cfg":
                    _map_official("ssm_cfg.", v or {}, _OFFICIAL_SSM, _OFFICIAL_SSM_FIXED, _OFFICIAL_SSM_ANY, vision,
                                  auto=lambda rank: rank == "auto")
                else:
                    _map_official("vision_encoder.", {k: v}, _OFFICIAL_VISION, _OFFICIAL_VISION_FIXED,
                                  _OFFICIAL_VISION_ANY, vision, " in vmm.models.multimodal")
        elif key == "bert_config":
            _map_official("bert_config.", value, {k: k for k in _OFFICIAL_TEXT}, _OFFICIAL_TEXT_FIXED,
                          _OFFICIAL_TEXT_ANY, text, " in vmm.models.text")
        elif key == "embed_dim":
            top["embed_dim"] = value
        elif key in ("temp_init", "temp"):  # the fixtures' name and the official config's
            top["temp_init"] = value
        elif key == "text_encoder" and isinstance(value, dict):
            _map_official("text_encoder.", value, _OFFICIAL_TEXT_ENCODER, {}, _OFFICIAL_TEXT_ENCODER_ANY, text,
                          " in vmm.models.text")
        elif key == "multimodal" and isinstance(value, dict):
            _map_official("multimodal.", value, {}, {"enable": True}, set(), top)
        elif key == "max_txt_l":
            top["max_text_len"] = value
        elif key in ("is_pretrain", "text_encoder_class"):
            # pretraining builds BertForMaskedLM (the text_encoder.cls head)
            if key == "text_encoder_class" and (not isinstance(value, str) or value not in _OFFICIAL_TEXT_CLASSES):
                raise VmmError(f"official setting text_encoder_class={value!r} is not supported; vmm implements only "
                               + " or ".join(repr(c) for c in _OFFICIAL_TEXT_CLASSES))
            mlm = bool(value) if key == "is_pretrain" else _OFFICIAL_TEXT_CLASSES[value]
            if text.get("mlm_head", mlm) != mlm:
                raise VmmError(f"official is_pretrain={official.get('is_pretrain')!r} and text_encoder_class="
                               f"{official.get('text_encoder_class')!r} disagree: pretraining builds BertForMaskedLM, "
                               "evaluation BertModel(add_pooling_layer=False); fix one of them")
            text["mlm_head"] = mlm
        elif key != "encoder_width":  # checked below: it is the vision width by construction here
            _map_official("setting ", {key: value}, {}, _OFFICIAL_EVAL_FIXED, _OFFICIAL_INFO, top)
    for where, width in (("encoder_width", official.get("encoder_width")),
                         ("bert_config.encoder_width", (official.get("bert_config") or {}).get("encoder_width"))):
        if width is not None and width != vision.get("embed_dim", MultimodalConfig().vision.embed_dim):
            raise VmmError(f"official {where}={width} differs from vision_encoder.embed_dim; the cross-attention "
                           "reads the vision tokens, so they must be equal")
    return {"vision": vision, "text": {"init_from": None, **text}, **top}


def _map_official(where: str, settings: dict, mapped: dict, fixed: dict, free: set, out: dict, hint: str = "",
                  auto=lambda rank: isinstance(rank, str) and rank.startswith("auto")) -> None:
    """Put ``settings`` into ``out`` under vmm's names (``mapped``: official name -> ours). A ``fixed`` setting
    must have the one value vmm implements, a ``free`` one changes nothing vmm computes, and any other is refused:
    an official setting is never silently dropped. A ``dt_rank`` that ``auto`` accepts becomes None (our auto);
    the configs write "auto=ceil(D/16)" at the top level and Mamba's ssm_cfg takes exactly "auto"."""
    for k, v in settings.items():
        if k in mapped:
            out[mapped[k]] = None if k == "dt_rank" and auto(v) else v
        elif k in fixed:
            if v != fixed[k]:
                raise VmmError(f"official {where}{k}={v!r} is not supported; vmm implements only {k}={fixed[k]!r}")
        elif k not in free:
            raise VmmError(f"official {where}{k}={v!r} has no vmm equivalent; remove it or add support for it{hint}")


class VideoTextModel(nn.Module):
    """VideoMamba video encoder + BERT text encoder with fusion layers, projections, ``temp`` and ``itm_head``.

    >>> import torch, vmm
    >>> m = vmm.create_model("videomamba_m16_mm", vision=dict(embed_dim=192, depth=2, img_size=32, num_frames=2),
    ...     text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
    ...     fusion_layer=1, max_position_embeddings=32), embed_dim=32).eval()
    >>> m.encode_video(torch.randn(2, 3, 2, 32, 32)).shape
    torch.Size([2, 32])
    """

    def __init__(self, cfg: MultimodalConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_encoder = VideoMambaVisionEncoder(cfg.vision)
        self.text_encoder = TextEncoder(cfg.text, encoder_width=cfg.vision.embed_dim)
        self.vision_proj = nn.Linear(cfg.vision.embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text.hidden_size, cfg.embed_dim)
        self.temp = nn.Parameter(torch.tensor(cfg.temp_init))
        # The three heads keep PyTorch's default Linear init, as in the official UMT_VIDEOMAMBA (no re-init).
        self.itm_head = nn.Linear(cfg.text.hidden_size, 2)

    # -- towers --------------------------------------------------------------------------------------
    def encode_video(self, video: Tensor, per_frame: bool = False, return_tokens: bool = False):
        """Video (B, 3, T, H, W), ImageNet-normalised -> L2-normalised embeddings.

        ``per_frame``: (B, T, E), one unit vector per frame (what the official ITC averages over); (B, 1, E)
        when the config pools the whole clip (``keep_temporal=False`` or ``pool_type="cls"``), (B, 2, E) for
        ``cls_cat_avg`` without ``keep_temporal``.
        Otherwise (B, E): the normalised mean of the per-frame vectors. For a unit text vector t the
        official score is ``mean_f <v_f, t> = |m| <m/|m|, t>`` with ``m = mean_f v_f``: the pooled vector
        ranks texts for one video exactly as the official score does, and videos for one text up to the
        per-video factor |m| (close to 1 when frames agree). With ``return_tokens`` also returns the
        final-normed patch tokens without CLS, (B, T*P, D), which ITM needs.
        """
        x_vis, pooled, _ = self.vision_encoder(video, keep_temporal=self.cfg.vision.keep_temporal)
        frames = F.normalize(self.vision_proj(pooled).float(), dim=-1)
        emb = frames if per_frame else F.normalize(frames.mean(1), dim=-1)
        return (emb, x_vis) if return_tokens else emb

    def pooled_per_clip(self, num_frames: int) -> int:
        """How many pooled vectors ``encode_video(per_frame=True)`` gives for a clip of ``num_frames`` frames."""
        v = self.cfg.vision
        if v.frame_mode == "per_frame":  # every frame pools to one vector, whatever the pool type
            return num_frames if v.keep_temporal else 1
        if v.pool_type == "cls":
            return 1
        if v.keep_temporal:
            return num_frames
        return 2 if v.pool_type == "cls_cat_avg" else 1

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, return_hidden: bool = False):
        """Token ids (B, L) and mask -> (B, E) unit vectors from the CLS after the text-only layers.

        With ``return_hidden`` also returns those text-only hidden states (B, L, H), the ITM input.
        """
        hidden = self.text_encoder.forward_text(input_ids, attention_mask)
        emb = F.normalize(self.text_proj(hidden[:, 0]).float(), dim=-1)
        return (emb, hidden) if return_hidden else emb

    @staticmethod
    def similarity(video_per_frame: Tensor, text: Tensor) -> Tensor:
        """Official ITC: (Bv, T, E) x (Bt, E) -> (Bv, Bt), mean over frames of per-frame cosine."""
        if not (isinstance(video_per_frame, Tensor) and isinstance(text, Tensor) and video_per_frame.ndim in (2, 3)
                and text.ndim == 2 and video_per_frame.shape[-1] == text.shape[-1]):
            got = [tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in (video_per_frame, text)]
            raise VmmError(f"similarity takes video embeddings (videos, [frames,] dim) and text embeddings (texts, "
                           f"dim) of one model, got {got[0]} and {got[1]}")
        if video_per_frame.ndim == 2:
            return video_per_frame.float() @ text.float().t()
        return torch.einsum("vfe,te->vtf", video_per_frame.float(), text.float()).mean(-1)

    def itm_logits(self, video_tokens: Tensor, text_hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Paired ITM logits: row i of each input is one (video, text) pair -> (B, 2)."""
        self._check_itm_inputs(video_tokens, text_hidden, attention_mask, paired=True)
        # Tokens kept as float64 (NumPy's default) failed inside torch ("mat1 and mat2 must have the same dtype"),
        # where encode_video takes a float64 video
        cast = self.vision_encoder._in_weights_dtype
        fused = self.text_encoder.forward_fusion(cast(text_hidden), attention_mask, cast(video_tokens))
        return self.itm_head(fused[:, 0])

    def itm_scores(self, video_tokens: Tensor, text_hidden: Tensor, attention_mask: Tensor,
                   batch_size: int = 32) -> Tensor:
        """All-pairs match logits (Bv, Bt) = ``itm_head(fusion(text, video))[:, 1]``, in pair batches."""
        self._check_itm_inputs(video_tokens, text_hidden, attention_mask, paired=False)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise VmmError(f"itm_scores: batch_size must be a whole number >= 1, got {batch_size!r}")
        Bv, Bt = video_tokens.shape[0], text_hidden.shape[0]
        out = text_hidden.new_empty(Bv, Bt, dtype=torch.float32)
        for v in range(Bv):
            for s in range(0, Bt, batch_size):
                th = text_hidden[s:s + batch_size]
                vt = video_tokens[v:v + 1].expand(th.shape[0], -1, -1)
                out[v, s:s + th.shape[0]] = self.itm_logits(vt, th, attention_mask[s:s + batch_size])[:, 1].float()
        return out

    def _check_itm_inputs(self, video_tokens, text_hidden, attention_mask, paired: bool) -> None:
        # Mismatched inputs failed deep in the cross-attention with a bare shape error (or, for a mask of other
        # rows, scored texts with another text's mask without a word).
        tensors = (video_tokens, text_hidden, attention_mask)
        fits = (all(isinstance(t, Tensor) for t in tensors) and video_tokens.ndim == 3 and text_hidden.ndim == 3
                and attention_mask.ndim == 2 and tuple(attention_mask.shape) == tuple(text_hidden.shape[:2])
                and video_tokens.shape[-1] == self.cfg.vision.embed_dim
                and text_hidden.shape[-1] == self.cfg.text.hidden_size
                and (not paired or video_tokens.shape[0] == text_hidden.shape[0]))
        if not fits:
            got = ", ".join(str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__ for t in tensors)
            pairs = ", the same number of rows (row i of each is one pair)" if paired else ""
            raise VmmError(f"ITM takes video tokens (B, N, {self.cfg.vision.embed_dim}) from encode_video("
                           f"return_tokens=True), text hidden states (B, L, {self.cfg.text.hidden_size}) and their "
                           f"mask (B, L) from encode_text(return_hidden=True){pairs}; got {got}")

    def clamp_temp(self) -> None:
        """Keep ``temp`` in [0.001, 0.5], as the official training step does."""
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)

    # -- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: Union[str, Path]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (each atomically) to ``directory``."""
        from vmm.models.persistence import save_pretrained
        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], device=None, precision: Union[str, torch.dtype] = "fp32",
                        **overrides: Any) -> "VideoTextModel":
        """Rebuild a model written by :meth:`save_pretrained`, bit-exactly; ``device``, ``precision`` and
        ``overrides`` as :func:`vmm.from_pretrained`'s."""
        from vmm.models.persistence import from_pretrained
        model = from_pretrained(directory, device=device, precision=precision, **overrides)
        if not isinstance(model, cls):
            raise VmmError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


@register_model
def videomamba_m16_mm(vision: Optional[dict] = None, text: Optional[dict] = None, **top: Any) -> VideoTextModel:
    """The official multimodal model: VideoMamba-M (8x224) + BERT-base with fusion layers 9-11, embed 512."""
    return VideoTextModel(build_multimodal_config(vision, text, **top))
