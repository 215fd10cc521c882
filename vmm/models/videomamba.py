"""VideoMamba video encoders: the K400-style classifier and the multimodal vision encoder.

Token layout ("spatial-first"): [CLS, frame 0 patches (row-major), frame 1 patches, ...], L = 1 + T * P.
The CLS carries ``cls_token + pos_embed[0]`` only; every patch gets the shared spatial ``pos_embed`` plus the
``temporal_pos_embedding`` of its frame.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vmm.errors import VmmError
from vmm.models.config import FRAME_MODES, VideoMambaConfig, scan_backend_problem
from vmm.models.layers import BiMambaMixer, DropPath, MambaBlock, RMSNorm, init_videomamba_weights


class PatchEmbed(nn.Module):
    """Conv3d patchify with kernel = stride = (tubelet, patch, patch) (the official ``patch_embed.proj``).

    With kernel == stride the conv is one GEMM over non-overlapping patches, and on CUDA it runs as one:
    cuDNN's Conv3d for this shape took 3.8 ms of a 133 ms VideoMamba-M batch of 64 clips (bf16, H200).
    """

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        k, p = cfg.tubelet_size, cfg.patch_size
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=(k, p, p), stride=(k, p, p))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W) -> (B, D, T', H', W')
        B, C, T, H, W = x.shape
        k, p, _ = self.proj.kernel_size
        # On CPU the conv is the faster of the two; where the conv drops a remainder, keep its exact behaviour.
        if not x.is_cuda or T % k or H % p or W % p:
            return self.proj(x)
        patches = x.reshape(B, C, T // k, k, H // p, p, W // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        y = F.linear(patches.reshape(-1, C * k * p * p), self.proj.weight.reshape(self.proj.out_channels, -1),
                     self.proj.bias)
        # The width spelt out, not -1: an empty batch has no size for view to infer.
        return y.view(B, T // k, H // p, W // p, self.proj.out_channels).permute(0, 4, 1, 2, 3)  # channel-last view


class VideoMambaBackbone(nn.Module):
    """Embedding and residual Mamba stack shared by both encoders; subclasses own the final norm and heads."""

    final_norm_name = "norm"

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.embed_dim = self.num_features = D
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, D))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames // cfg.tubelet_size, D))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self._add_head(cfg)  # before the layers: the official modules' order, so the state dict's key order too
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()  # plain numbers, also under meta
        block_dpr = [0.0] + dpr  # the official schedule is shifted by one: block i uses dpr[i - 1]
        self.layers = nn.ModuleList([
            MambaBlock(D, BiMambaMixer(D, cfg.d_state, cfg.d_conv, cfg.expand, cfg.resolved_dt_rank,
                                       cfg.scan_backend), drop_path=block_dpr[i], eps=cfg.norm_eps)
            for i in range(cfg.depth)
        ])
        self.drop_path = DropPath(cfg.drop_path_rate)
        setattr(self, self.final_norm_name, RMSNorm(D, eps=cfg.norm_eps))
        self.grad_checkpointing = cfg.grad_checkpointing

    def _add_head(self, cfg: VideoMambaConfig) -> None:
        """Where a subclass registers its head: called at the official head's place in the module order."""

    def _init_weights(self) -> None:
        init_videomamba_weights(self, self.cfg.depth)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_scan_backend(self, backend: Optional[str]) -> None:
        """Every layer's scan backend (None: the fastest for the device); a name that is none is refused here,
        not at the next forward."""
        problem = scan_backend_problem(backend)
        if problem:
            raise VmmError(f"set_scan_backend: {problem}")
        self.cfg.scan_backend = backend
        for layer in self.layers:
            layer.mixer.scan_backend = backend

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        names = {"pos_embed", "cls_token", "temporal_pos_embedding"}
        names |= {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}
        return names

    def check_video(self, x: Tensor) -> Tensor:
        """``x`` as a (B, C, T, H, W) float video in the weights' dtype, or VmmError saying what is wrong."""
        if not isinstance(x, Tensor):
            raise VmmError(f"video input must be a torch.Tensor (batch, channels, frames, height, width), got "
                           f"{type(x).__name__}; convert it with torch.from_numpy(...)")
        if x.ndim != 5:
            raise VmmError(f"video input must be (batch, channels, frames, height, width), got shape {tuple(x.shape)}")
        if not x.is_floating_point():  # most likely raw 0-255 frames: cast, they would give meaningless features
            raise VmmError(f"video input is {x.dtype}; the model takes float frames normalised with the ImageNet "
                           f"mean and std: pass uint8 frames (T, H, W, 3) through the eval transform of "
                           f"vmm.create_model_and_transforms")
        if x.shape[1] != self.cfg.in_chans:
            raise VmmError(f"video input has {x.shape[1]} channels but the model takes {self.cfg.in_chans}; pass "
                           f"(batch, {self.cfg.in_chans}, frames, height, width)")
        return self._in_weights_dtype(x)

    def _in_weights_dtype(self, x: Tensor) -> Tensor:
        weight = self.patch_embed.proj.weight
        if x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
            return x  # autocast casts for the layer itself; a copy in the weights' dtype would only cost memory
        return x.to(weight.dtype)  # outside autocast a layer needs one dtype

    def embed(self, x: Tensor, use_image: bool = False) -> Tensor:
        """(B, C, T, H, W) video -> (B, 1 + T'P, D) tokens in spatial-first order."""
        x = self.check_video(x)
        (T, H, W), p, grid = x.shape[2:], self.cfg.patch_size, self.cfg.grid_size
        # Rows and columns each, not their product: a 16x64 frame has the patch count of a 32x32 one, and its
        # patches were silently given the square grid's position embeddings.
        if (H // p, W // p) != (grid, grid):
            raise VmmError(f"input is {(H // p) * (W // p)} patches per frame ({H // p}x{W // p} from {H}x{W} pixels, "
                           f"patch_size={p}) but the model was built for {grid}x{grid} (img_size={self.cfg.img_size}); "
                           f"resize frames to {self.cfg.img_size}x{self.cfg.img_size} or create the model with "
                           "img_size=...")
        k = self.cfg.tubelet_size
        if T % k:  # the patchify conv would drop the last frames without a word (or fail on a 1-frame image)
            raise VmmError(f"input has {T} frame{'s' * (T != 1)}, which tubelets of tubelet_size={k} frames do not "
                           f"divide (the last {T % k} would be dropped); pass a multiple of {k} frames (the model "
                           f"was built for {self.cfg.num_frames})")
        if not use_image and T // k != self.temporal_pos_embedding.shape[1]:
            raise VmmError(f"input has {T} frames but the model was built for {self.cfg.num_frames}; create it "
                           f"with num_frames={T} (checkpoints are interpolated on load)")
        x = self.patch_embed(x)
        B, D, T, H, W = x.shape
        x = x.permute(0, 2, 3, 4, 1).reshape(B, T, H * W, D)
        pos = self.pos_embed
        x = x + pos[:, 1:].unsqueeze(1)
        if not use_image:
            x = x + self.temporal_pos_embedding.unsqueeze(2)
        cls = (self.cls_token + pos[:, :1]).expand(B, -1, -1)
        return self.pos_drop(torch.cat([cls, x.reshape(B, T * H * W, D)], dim=1))

    def run_layers(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Residual stack; returns (last mixer output, fp32 residual stream entering the last add)."""
        hidden, residual = x, None
        for layer in self.layers:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        return hidden, residual

    def final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:
        norm: RMSNorm = getattr(self, self.final_norm_name)
        return norm.add_forward(self.drop_path(hidden), residual, backend=self.cfg.scan_backend)[0]


class VideoMamba(VideoMambaBackbone):
    """The VideoMamba classifier (official ``VisionMamba``): normalised CLS -> linear head.

    >>> import torch, vmm
    >>> model = vmm.create_model("videomamba_tiny", depth=2, num_frames=2, img_size=32, num_classes=5).eval()
    >>> model(torch.randn(1, 3, 2, 32, 32)).shape
    torch.Size([1, 5])
    """

    final_norm_name = "norm_f"

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__(cfg)
        self._init_weights()

    def _add_head(self, cfg: VideoMambaConfig) -> None:
        self.head_drop = nn.Dropout(cfg.head_drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> normalised CLS feature (B, D)."""
        hidden, residual = self.run_layers(self.embed(x))
        return self.final_norm(hidden[:, :1], residual[:, :1])[:, 0]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, D) features of :meth:`forward_features` -> (B, num_classes) logits (``pre_logits``: the features).

        Features kept from an earlier run may come back float64 (NumPy's default) or as an array: forward_features
        takes a float64 video, but the head failed inside torch ("mat1 and mat2 must have the same dtype")."""
        if not isinstance(features, Tensor) or not features.is_floating_point() or features.ndim < 1 \
                or features.shape[-1] != self.cfg.embed_dim:
            got = (f"{features.dtype} of shape {tuple(features.shape)}" if isinstance(features, Tensor)
                   else type(features).__name__)
            raise VmmError(f"forward_head takes the float (batch, {self.cfg.embed_dim}) tensor forward_features "
                           f"returns, got {got}; for stored features pass torch.as_tensor(features)")
        features = self.head_drop(self._in_weights_dtype(features))
        return features if pre_logits else self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class VideoMambaVisionEncoder(VideoMambaBackbone):
    """The multimodal vision encoder (official ``PretrainVideoMamba``).

    ``forward`` returns ``(x_vis, x_pool, x_clip)``: final-normalised patch tokens without CLS (B, T'P, D);
    ``pool_norm(CLS + mean of patch tokens)``, per frame (B, T, D) with ``keep_temporal`` or over all visible
    tokens (B, 1, D) without; and, when a visibility ``mask`` is given, the CLIP-aligned student tokens
    (K, B, N_vis, clip_output_dim) used for distillation, else None.
    """

    def __init__(self, cfg: VideoMambaConfig):
        super().__init__(cfg)
        dec_dim = cfg.clip_decoder_embed_dim or cfg.embed_dim
        self.clip_decoder = nn.ModuleList([
            nn.Sequential() for _ in range(cfg.clip_return_layer)
        ])
        for dec in self.clip_decoder:
            dec.add_module("head", nn.Linear(dec_dim, cfg.clip_output_dim))
            dec.add_module("norm", nn.LayerNorm(cfg.clip_output_dim))
        self.pool_norm = nn.LayerNorm(cfg.embed_dim)
        self._init_weights()

    def forward(self, x: Tensor, mask: Optional[Tensor] = None, use_image: Optional[bool] = None,
                keep_temporal: bool = True) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        x = self.check_video(x)
        B, _, T = x.shape[:3]
        if self.cfg.frame_mode == "per_frame" and T > 1:
            return self._forward_per_frame(x, mask, keep_temporal)
        if self.cfg.frame_mode not in FRAME_MODES:  # a config built without check_config
            raise VmmError(f"frame_mode={self.cfg.frame_mode!r} is not supported; use one of {', '.join(FRAME_MODES)}")
        if use_image is None:
            use_image = T == 1
        tokens = self.embed(x, use_image=use_image)
        if mask is not None:  # True = masked; CLS must stay visible
            # The decoder reads the encoder's own tokens. Another width builds and evaluates (the decoder is idle
            # there, as in the official code), but would fail here as a bare matmul error after the whole stack.
            dec_dim = self.clip_decoder[0].head.in_features
            if dec_dim != self.embed_dim:
                raise VmmError(f"clip_decoder_embed_dim={dec_dim} differs from embed_dim={self.embed_dim}; the CLIP "
                               f"decoder reads the encoder's tokens: build the model with clip_decoder_embed_dim="
                               f"{self.embed_dim} (or unset) to train with a token mask")
            tokens = tokens[~mask].reshape(B, -1, tokens.shape[-1])
        hidden, residual = self.run_layers(tokens)
        out = self.final_norm(hidden, residual)
        x_clip = None
        if mask is not None:
            # Student target: the fp32 residual entering the final add (official clip_return_layer=1),
            # plus a fixed sinusoidal position table at the visible positions: a float32 table in the input's
            # dtype (official .type_as(x)), so a float64 model's target is float64 as its decoder.
            pos = sinusoid_table(mask.shape[1], residual.shape[-1], residual.device).to(x.dtype)
            pos = pos.expand(B, -1, -1)[~mask].reshape(B, -1, residual.shape[-1])
            x_clip = torch.stack([dec(residual + pos) for dec in self.clip_decoder])
        cls, x_vis = out[:, :1], out[:, 1:]
        return x_vis, self.pool_norm(self._pool(cls, x_vis, T, keep_temporal and mask is None)), x_clip

    def _pool(self, cls: Tensor, x_vis: Tensor, T: int, keep_temporal: bool) -> Tensor:
        """The official pool types. ``T`` is the input frame count, as in the official view(B, T, -1, D)."""
        kind = self.cfg.pool_type
        if kind == "cls":
            return cls  # one vector per clip, whatever keep_temporal says
        if keep_temporal:
            if x_vis.shape[1] % T:  # only with tubelet_size > 1: T' * P tokens in T groups, as the official view
                raise VmmError(f"keep_temporal pooling splits the {x_vis.shape[1]} patch tokens into the {T} input "
                               f"frames, which does not divide with tubelet_size={self.cfg.tubelet_size}; pass "
                               f"keep_temporal=False or pool_type='cls'")
            # The group size spelt out, not -1: an empty batch (0 clips) has no size for reshape to infer.
            avg = x_vis.reshape(x_vis.shape[0], T, x_vis.shape[1] // T, x_vis.shape[-1]).mean(2)
            # official cls_cat_avg with keep_temporal concatenates a single tensor: the same as cls+avg
            return avg if kind == "avg" else cls + avg
        avg = x_vis.mean(1, keepdim=True)
        if kind == "cls_cat_avg":
            return torch.cat([cls, avg], dim=1)
        return avg if kind == "avg" else cls + avg

    def _forward_per_frame(self, x: Tensor, mask: Optional[Tensor], keep_temporal: bool):
        if mask is not None:
            raise VmmError("frame_mode='per_frame' does not take a token mask; train it without the CLIP teacher "
                           "(loss.uta=0)")
        B, C, T, H, W = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, 1, H, W)
        x_vis, pooled, _ = self.forward(frames, use_image=True, keep_temporal=True)  # (B*T, P, D), (B*T, 1, D)
        x_vis = x_vis.reshape(B, T * x_vis.shape[1], x_vis.shape[-1])
        pooled = pooled.reshape(B, T, pooled.shape[-1])
        return x_vis, (pooled if keep_temporal else pooled.mean(1, keepdim=True)), None


def sinusoid_table(n_position: int, dim: int, device=None, dtype=None) -> Tensor:
    """The fixed 1-D sin/cos position table of the official CLIP decoder, shape (1, n_position, dim)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    idx = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(idx, 2, rounding_mode="floor") / dim)
    table = torch.where(idx.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(device=device, dtype=dtype or torch.float32).unsqueeze(0)


def _resample_dtype(table: Tensor) -> torch.dtype:
    """fp32 for half-precision tables (bf16 resampling rounds every step), a float64 table's own precision."""
    return torch.promote_types(table.dtype, torch.float32)


def interpolate_pos_embed(pos_embed: Tensor, new_grid: int) -> Tensor:
    """Bicubic resize of the (1, 1 + g*g, D) spatial table to a new grid, CLS slot untouched (official rule)."""
    n_extra = 1
    old_grid = int(round((pos_embed.shape[1] - n_extra) ** 0.5))
    if old_grid == new_grid:
        return pos_embed
    D = pos_embed.shape[-1]
    grid = pos_embed[:, n_extra:].reshape(1, old_grid, old_grid, D).permute(0, 3, 1, 2).to(_resample_dtype(pos_embed))
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :n_extra], grid], dim=1)


def interpolate_temporal_embed(temporal: Tensor, new_t: int) -> Tensor:
    """Linear resize of the (1, T, D) temporal table along T (official rule, align_corners=False)."""
    if temporal.shape[1] == new_t:
        return temporal
    t = F.interpolate(temporal.permute(0, 2, 1).to(_resample_dtype(temporal)), size=(new_t,), mode="linear",
                      align_corners=False)
    return t.permute(0, 2, 1).to(temporal.dtype)
