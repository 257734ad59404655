"""DINOv2 ViT-B/14 with 4 register tokens (``dinov2_vitb14_reg``) and FlexAvatar's preprocessing.

A clean-room implementation written from ``shared/reference/dinov2/README.md`` (spec §3.4). The official
checkpoint ``dinov2_vitb14_reg4_pretrain.pth`` loads into :class:`DinoVisionTransformer` with ``strict=True``:
the ``state_dict()`` keys, order and shapes equal ``reference/dinov2/layout.json`` (176 keys, 86,583,552
parameters, no buffers).

Export-oriented design (ONNX opset 17/18, then TensorRT):

- Every resize is a pair of matmuls with constant weight matrices from :func:`resize_matrix`, computed in
  float64 with the torch antialias formulas and cast once. No ``F.interpolate(antialias=True)`` in the graph.
- The interpolated positional embedding is cached per patch grid (a plain dict, never in ``state_dict``), so a
  traced graph sees a constant table. The cache is refreshed when ``pos_embed`` changes (load, in-place edit,
  device/dtype move) in eager mode.
- Attention is the plain ``softmax((q * scale) @ k^T) @ v`` (bit-exact with the official fallback path);
  ``DinoV2Config(attn_impl="sdpa")`` switches to ``F.scaled_dot_product_attention``.

Token order is ``[cls, reg0..reg3, patch0..patchN-1]``.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DinoV2Config",
    "DinoVisionTransformer",
    "DinoFeatureExtractor",
    "dinov2_vitb14_reg",
    "load_dinov2_state_dict",
    "load_dinov2",
    "check_dinov2_state_dict",
    "dino_preprocess",
    "resize_matrix",
    "interpolate_pos_embed",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Descriptive (non-numeric) entries of the reference config.json "constructor_args"; accepted and ignored.
_DESCRIPTIVE_ARGS = {"class", "embed_layer", "act_layer", "block_fn", "norm_layer", "xformers"}


def _static_shape(x: torch.Tensor) -> tuple[int, ...]:
    """x.shape as Python ints; under the legacy ONNX tracer they become trace constants (silently: every shape
    except the batch is static by design)."""
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return tuple(int(s) for s in x.shape)
    return tuple(int(s) for s in x.shape)


# ----------------------------------------------------------------------------------------------------------
# Resize matrices (torch's separable interpolation, as an explicit [n_out, n_in] operator)
# ----------------------------------------------------------------------------------------------------------


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel with parameter ``a`` (a=-0.5 antialias, a=-0.75 plain torch bicubic)."""
    t = np.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0  # |t| < 1
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a  # 1 <= |t| < 2
    return np.where(t < 1.0, near, np.where(t < 2.0, far, 0.0))


def _triangle(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(t))


@functools.lru_cache(maxsize=64)
def _resize_matrix_np(n_in: int, n_out: int, kind: str, antialias: bool) -> np.ndarray:
    scale = n_in / n_out  # size-given torch path with align_corners=False: scale = in / out
    m = np.zeros((n_out, n_in), dtype=np.float64)  # [n_out, n_in]
    if antialias:
        # torch _upsample_*_aa: window of half-width support around centre c = s*(i+0.5), clipped to the
        # input, weights K((j - c + 0.5) * invscale) renormalised to sum 1 (no border padding).
        interp_size = 2 if kind == "bilinear" else 4
        support = (interp_size / 2.0) * scale if scale >= 1.0 else interp_size / 2.0
        invscale = 1.0 / scale if scale >= 1.0 else 1.0
        for i in range(n_out):
            c = scale * (i + 0.5)
            lo = max(int(c - support + 0.5), 0)  # int() truncates like static_cast<int64_t>
            hi = min(int(c + support + 0.5), n_in)
            j = np.arange(lo, hi, dtype=np.float64)
            t = (j - c + 0.5) * invscale
            w = _triangle(t) if kind == "bilinear" else _cubic(t, -0.5)
            total = w.sum()
            if total != 0.0:
                w = w / total
            m[i, lo:hi] = w
        return m
    # Plain (non-antialiased) torch kernels, align_corners=False.
    for i in range(n_out):
        src = scale * (i + 0.5) - 0.5
        if kind == "bilinear":
            src = max(src, 0.0)
            i0 = int(src)
            i1 = i0 + 1 if i0 < n_in - 1 else i0
            l1 = src - i0
            m[i, i0] += 1.0 - l1
            m[i, i1] += l1
        else:
            f = math.floor(src)
            t = src - f
            taps = (t + 1.0, t, 1.0 - t, 2.0 - t)
            for k, d in enumerate(taps):
                idx = min(max(f - 1 + k, 0), n_in - 1)  # border-clamped taps
                m[i, idx] += float(_cubic(np.array(d), -0.75))
    return m


def resize_matrix(n_in: int, n_out: int, kind: str = "bilinear", antialias: bool = True) -> torch.Tensor:
    """1-D resize operator W [n_out, n_in] (float64) so that ``W @ x`` equals
    ``F.interpolate(x, size=n_out, mode=kind, align_corners=False, antialias=antialias)`` along one axis.

    Antialiased kernels (README): centre c = s*(i+0.5), s = n_in/n_out, support s (bilinear) or 2s (bicubic,
    Keys a=-0.5) when downsampling, weights renormalised over the clipped window. A 2-D resize of
    X [..., H, W] is ``W_h @ X @ W_w^T``.
    """
    if kind not in ("bilinear", "bicubic"):
        raise ValueError(f"resize_matrix: kind must be 'bilinear' or 'bicubic', got {kind!r}")
    if int(n_in) < 1 or int(n_out) < 1:
        raise ValueError(f"resize_matrix: sizes must be >= 1, got n_in={n_in}, n_out={n_out}")
    return torch.from_numpy(_resize_matrix_np(int(n_in), int(n_out), kind, bool(antialias)).copy())


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid_h: int, grid_w: int, antialias: bool = True
) -> torch.Tensor:
    """Resize a ViT positional table [1, 1+n*n, D] to [1, 1+grid_h*grid_w, D] (bicubic, float64 math).

    Entry 0 (cls) is kept; the n x n grid (row-major) is resized with separable bicubic matrices, equivalent to
    ``F.interpolate(grid [1,D,n,n], size=(grid_h, grid_w), mode="bicubic", antialias=antialias)``.
    The result has ``pos_embed``'s dtype. Differentiable w.r.t. ``pos_embed``.
    """
    n_tok, dim = pos_embed.shape[1], pos_embed.shape[2]
    n = int(round(math.sqrt(n_tok - 1)))
    if pos_embed.shape[0] != 1 or n * n != n_tok - 1:
        raise ValueError(f"pos_embed must be [1, 1+n*n, D], got {tuple(pos_embed.shape)}")
    pe = pos_embed.to(torch.float64)
    cls_pe = pe[:, :1]  # [1, 1, D]
    grid = pe[0, 1:].reshape(n, n, dim)  # [n, n, D] (row, col, channel)
    w_h = resize_matrix(n, grid_h, "bicubic", antialias).to(pe.device)  # [gh, n]
    w_w = resize_matrix(n, grid_w, "bicubic", antialias).to(pe.device)  # [gw, n]
    out = torch.einsum("ia,abd->ibd", w_h, grid)  # [gh, n, D]
    out = torch.einsum("jb,ibd->ijd", w_w, out)  # [gh, gw, D]
    out = torch.cat((cls_pe, out.reshape(1, grid_h * grid_w, dim)), dim=1)  # [1, 1+gh*gw, D]
    return out.to(pos_embed.dtype)


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


def _resize_weights(h_in: int, w_in: int, h_out: int, w_out: int, device, dtype=torch.float32):
    w_h = resize_matrix(h_in, h_out, "bilinear", True).to(device=device, dtype=dtype)  # [h_out, h_in]
    w_wt = resize_matrix(w_in, w_out, "bilinear", True).t().contiguous().to(device=device, dtype=dtype)  # [w_in, w_out]
    return w_h, w_wt


def _normalise_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def dino_preprocess(
    images: torch.Tensor,
    size: int | tuple[int, int] = 224,
    *,
    resize_h: torch.Tensor | None = None,
    resize_wt: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """images [B,3,H,W] float in [0,1] -> DINO pixel values [B,3,size,size].

    = torchvision ``Resize((size,size))`` on a tensor (bilinear, antialias=True, align_corners=False) followed by
    ``Normalize(ImageNet)`` i.e. ``(x - mean) / std``. The resize is two matmuls with float64-derived constant
    matrices (``W_h @ X @ W_w^T``); the optional arguments pass precomputed constants (see
    :class:`DinoFeatureExtractor`).
    """
    if images.dim() != 4 or _static_shape(images)[1] != 3:
        raise ValueError(f"dino_preprocess: images must be [B,3,H,W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"dino_preprocess: images must be float in [0,1], got dtype {images.dtype}")
    h_out, w_out = _normalise_size(size)
    h_in, w_in = _static_shape(images)[-2:]
    if resize_h is None or resize_wt is None:
        resize_h, resize_wt = _resize_weights(h_in, w_in, h_out, w_out, images.device, images.dtype)
    if _static_shape(resize_h) != (h_out, h_in) or _static_shape(resize_wt) != (w_in, w_out):
        raise ValueError(
            f"dino_preprocess: resize weights {tuple(resize_h.shape)}/{tuple(resize_wt.shape)} do not fit "
            f"{h_in}x{w_in} -> {h_out}x{w_out}"
        )
    if mean is None:
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    if std is None:
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    x = torch.matmul(resize_h, images)  # [B, 3, h_out, W]
    x = torch.matmul(x, resize_wt)  # [B, 3, h_out, w_out]
    return (x - mean) / std  # [B, 3, h_out, w_out]


# ----------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DinoV2Config:
    """Constructor arguments of the hub ``DinoVisionTransformer``; defaults are ``dinov2_vitb14_reg``.

    ``DinoV2Config(**constructor_args)`` accepts the dict in ``layout.json`` directly; use
    :meth:`from_dict` for ``config.json`` (which also carries descriptive string entries).
    Only the inference path of the hub model is supported: ffn_layer "mlp", block_chunks 0, masks unused.
    """

    img_size: int = 518
    patch_size: int = 14
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ffn_bias: bool = True
    proj_bias: bool = True
    drop_path_rate: float = 0.0
    drop_path_uniform: bool = False
    init_values: float | None = 1.0
    ffn_layer: str = "mlp"
    block_chunks: int = 0
    num_register_tokens: int = 4
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    # Project-side options (not hub arguments).
    layer_norm_eps: float = 1e-6
    attn_impl: str = "math"  # "math": softmax((q*scale) k^T) v, bit-exact with the official fallback; "sdpa"

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size != 0:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.ffn_layer != "mlp":
            raise ValueError(f"ffn_layer {self.ffn_layer!r} not supported (only 'mlp', as in dinov2_vitb14_reg)")
        if self.block_chunks != 0:
            raise ValueError(f"block_chunks {self.block_chunks} not supported (keys would be chunked); use 0")
        if self.interpolate_offset != 0.0:
            raise ValueError(
                f"interpolate_offset {self.interpolate_offset} not supported (register models use 0.0: explicit size)"
            )
        if self.attn_impl not in ("math", "sdpa"):
            raise ValueError(f"attn_impl must be 'math' or 'sdpa', got {self.attn_impl!r}")
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")

    @classmethod
    def from_dict(cls, args: Mapping[str, Any]) -> "DinoV2Config":
        """Build from a constructor-args dict; descriptive string entries (class, act_layer, ...) are ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known - _DESCRIPTIVE_ARGS)
        if unknown:
            raise ValueError(f"DinoV2Config: unknown constructor arguments {unknown}")
        return cls(**{k: v for k, v in args.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


class PatchEmbed(nn.Module):
    """Conv patchify: [B,C,H,W] -> [B, (H/p)*(W/p), D], tokens row-major (row along the height)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, H/p, W/p]
        return x.flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_bias: bool, impl: str = "math") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, h, T, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, T, hd] each
        if self.impl == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, h, T, hd]
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, h, T, T]
            attn = attn.softmax(dim=-1)
            x = attn @ v  # [B, h, T, hd]
        x = x.transpose(1, 2).reshape(b, t, c)  # [B, T, D]
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()  # exact erf form
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))  # [D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: DinoV2Config) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.proj_bias, cfg.attn_impl)
        self.ls1 = LayerScale(d, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(d, cfg.mlp_hidden_dim, cfg.ffn_bias)
        self.ls2 = LayerScale(d, cfg.init_values) if cfg.init_values else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))  # [B, T, D]
        x = x + self.ls2(self.mlp(self.norm2(x)))  # [B, T, D]
        return x


def _is_tracing() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT with register tokens (inference path of the official model; same ``state_dict`` layout)."""

    def __init__(self, config: DinoV2Config | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = DinoV2Config(**overrides)
        elif overrides:
            config = DinoV2Config(**{**config.to_dict(), **overrides})
        self.config = cfg = config
        d = cfg.embed_dim
        self.embed_dim = self.num_features = d
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.num_heads = cfg.num_heads
        n_patches = cfg.grid_size**2

        # Parameter registration order == official state_dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))  # [1, 1, D]
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, d))  # [1, 1+37*37, D]
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d)) if cfg.num_register_tokens else None
        )  # [1, R, D]
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # [1, D]; only used with masks (never here)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head = nn.Identity()

        # (grid_h, grid_w) -> (stamp, table [1, 1+gh*gw, D]); not a buffer, so never in state_dict.
        self._pos_cache: dict[tuple[int, int], tuple[tuple, torch.Tensor]] = {}
        self._init_weights()

    # -- init (random weights for tests; real weights come from the checkpoint) --------------------------
    def _init_weights(self) -> None:
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- positional embedding ------------------------------------------------------------------------------
    def _pos_stamp(self, dtype: torch.dtype) -> tuple:
        p = self.pos_embed
        return (p._version, p.data_ptr(), p.device, dtype)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Positional table added to [cls, patches] for a grid_h x grid_w patch grid: [1, 1+gh*gw, D].

        The stored grid is used unchanged when the sizes match; otherwise a float64 bicubic (antialias,
        a=-0.5) resize cast to ``dtype``. Eager no-grad calls are cached per grid; under tracing/export the cached
        table is used as a constant (computed outside the trace if missing). With autograd on and a trainable
        ``pos_embed`` the table is recomputed differentiably.
        """
        dtype = dtype or self.pos_embed.dtype
        n = self.config.grid_size
        if (grid_h, grid_w) == (n, n):
            return self.pos_embed.to(dtype)
        key = (int(grid_h), int(grid_w))
        if _is_tracing():
            entry = self._pos_cache.get(key)
            stale = entry is not None and torch.jit.is_tracing() and entry[0][:3] != self._pos_stamp(dtype)[:3]
            if entry is None or stale:
                entry = self._compute_pos_outside_trace(key, dtype)
            return entry[1].to(device=self.pos_embed.device, dtype=dtype)
        if torch.is_grad_enabled() and self.pos_embed.requires_grad:
            return interpolate_pos_embed(self.pos_embed, *key, self.config.interpolate_antialias).to(dtype)
        stamp = self._pos_stamp(dtype)
        entry = self._pos_cache.get(key)
        if entry is None or entry[0] != stamp:
            with torch.no_grad():
                table = interpolate_pos_embed(self.pos_embed.detach(), *key, self.config.interpolate_antialias)
            entry = (stamp, table.to(dtype))
            self._pos_cache[key] = entry
        return entry[1]

    def _compute_pos_outside_trace(self, key: tuple[int, int], dtype: torch.dtype):
        if torch.jit.is_tracing() and hasattr(torch._C, "_get_tracing_state"):
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                with torch.no_grad():
                    table = interpolate_pos_embed(self.pos_embed.detach(), *key, self.config.interpolate_antialias)
            finally:
                torch._C._set_tracing_state(state)
            entry = (self._pos_stamp(dtype), table.to(dtype))
            self._pos_cache[key] = entry
            return entry
        raise RuntimeError(
            f"DINOv2 pos-embed for grid {key} is not cached; run one eager forward (or "
            f"vit.prepare_pos_embed({key[0] * self.patch_size}, {key[1] * self.patch_size})) before export/compile"
        )

    @torch.no_grad()
    def prepare_pos_embed(self, height: int = 224, width: int | None = None) -> torch.Tensor:
        """Fill the pos-embed cache for an input of height x width pixels (call before tracing/export)."""
        width = height if width is None else width
        self._check_hw(height, width)
        return self.interpolated_pos_embed(height // self.patch_size, width // self.patch_size)

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda()/.half(): drop cached tables (rebuilt lazily)
        self._pos_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def _check_hw(self, h: int, w: int) -> None:
        p = self.patch_size
        if h % p or w % p or h < p or w < p:
            raise ValueError(f"DINOv2 input H, W must be positive multiples of patch size {p}, got {h}x{w}")

    # -- forward -------------------------------------------------------------------------------------------
    def prepare_tokens(self, x: torch.Tensor, intermediates: dict | None = None) -> torch.Tensor:
        """pixels [B,3,H,W] -> block input [B, 1+R+N, D] = [cls+pe0, reg0..R-1, patches+pe]."""
        if x.dim() != 4 or _static_shape(x)[1] != self.config.in_chans:
            raise ValueError(f"DINOv2 input must be [B,{self.config.in_chans},H,W], got {tuple(x.shape)}")
        h, w = _static_shape(x)[-2:]
        self._check_hw(h, w)
        b = x.shape[0]
        tokens = self.patch_embed(x)  # [B, N, D]
        if intermediates is not None:
            intermediates["patch_embed_output"] = tokens
        pos = self.interpolated_pos_embed(h // self.patch_size, w // self.patch_size, tokens.dtype)  # [1, 1+N, D]
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)  # [B, 1+N, D]
        tokens = tokens + pos  # [B, 1+N, D]
        if self.register_tokens is not None:
            tokens = torch.cat(
                (tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]), dim=1
            )  # [B, 1+R+N, D]
        if intermediates is not None:
            intermediates["interpolated_pos_embed"] = pos
            intermediates["tokens_after_prepare"] = tokens
        return tokens

    def forward_features(self, x: torch.Tensor, return_intermediates: bool = False) -> dict[str, torch.Tensor]:
        """x [B,3,H,W] (normalised pixels) -> dict with
        x_norm_clstoken [B,D], x_norm_regtokens [B,R,D], x_norm_patchtokens [B,N,D], x_prenorm [B,1+R+N,D].

        With ``return_intermediates`` the dict also holds patch_embed_output [B,N,D], interpolated_pos_embed
        [1,1+N,D], tokens_after_prepare [B,1+R+N,D] and block{i}_output [B,1+R+N,D] for every block.
        """
        inter: dict | None = {} if return_intermediates else None
        tokens = self.prepare_tokens(x, inter)  # [B, T, D]
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)  # [B, T, D]
            if inter is not None:
                inter[f"block{i}_output"] = tokens
        x_norm = self.norm(tokens)  # [B, T, D]
        r = self.num_register_tokens
        out = {
            "x_norm_clstoken": x_norm[:, 0],  # [B, D]
            "x_norm_regtokens": x_norm[:, 1 : r + 1],  # [B, R, D]
            "x_norm_patchtokens": x_norm[:, r + 1 :],  # [B, N, D]
            "x_prenorm": tokens,  # [B, T, D]
        }
        if inter is not None:
            out.update(inter)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Official ``forward`` at inference: head(x_norm_clstoken) = cls features [B, D]."""
        return self.head(self.forward_features(x)["x_norm_clstoken"])


def dinov2_vitb14_reg(**overrides: Any) -> DinoVisionTransformer:
    """The hub ``dinov2_vitb14_reg`` architecture (random init; load the checkpoint separately)."""
    return DinoVisionTransformer(DinoV2Config(**overrides))


# ----------------------------------------------------------------------------------------------------------
# Checkpoint loading
# ----------------------------------------------------------------------------------------------------------


def load_dinov2_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a DINOv2 checkpoint (.pth/.pt via ``torch.load(weights_only=True)``, or .safetensors) on CPU.

    Returns a flat ``{key: tensor}`` dict in file order; the caller loads it with ``strict=True``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DINOv2 checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise ValueError(f"DINOv2 checkpoint {path}: expected a dict of tensors, got {type(sd).__name__}")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"DINOv2 checkpoint {path}: non-tensor entries {bad[:10]} (expected a flat state dict)")
    return dict(sd)


def check_dinov2_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError naming every missing, unexpected and mis-shaped key (strict-load precheck)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if misshaped:
            parts.append(f"mis-shaped keys [{'; '.join(misshaped)}]")
        raise ValueError("DINOv2 state dict does not match the model: " + ", ".join(parts))


def load_dinov2(
    path_or_mapping: str | os.PathLike | Mapping[str, torch.Tensor],
    config: DinoV2Config | None = None,
) -> DinoVisionTransformer:
    """Build a DinoVisionTransformer (default: ViT-B/14-reg) and load weights strictly; returns it in eval mode."""
    if isinstance(path_or_mapping, Mapping):
        sd = dict(path_or_mapping)
    else:
        sd = load_dinov2_state_dict(path_or_mapping)
    with torch.device("meta"):  # shape-only model: cheap key/shape check before allocating anything
        model = DinoVisionTransformer(config or DinoV2Config())
    check_dinov2_state_dict(model, sd)
    model = model.to_empty(device="cpu")  # every parameter is overwritten by the strict load below
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# FlexAvatar feature extractor
# ----------------------------------------------------------------------------------------------------------


class DinoFeatureExtractor(nn.Module):
    """FlexAvatar's DINO branch: images [B,3,H,W] in [0,1] (512x512) -> features [B,D,gh,gw] (16x16 at 224).

    resize (antialiased bilinear, constant matmuls) -> ImageNet normalise -> ``forward_features`` ->
    ``x_norm_patchtokens`` [B,N,D] -> reshape [B,gh,gw,D] -> permute [B,D,gh,gw].
    Resize matrices and mean/std are non-persistent buffers, so ``state_dict()`` is the ViT's under ``vit.``.
    """

    def __init__(self, vit: DinoVisionTransformer, image_size: int = 512, dino_size: int = 224) -> None:
        super().__init__()
        self.vit = vit
        self.image_size = int(image_size)
        self.dino_size = int(dino_size)
        vit._check_hw(self.dino_size, self.dino_size)
        w_h, w_wt = _resize_weights(image_size, image_size, dino_size, dino_size, "cpu")
        self.register_buffer("resize_h", w_h, persistent=False)  # [224, 512]
        self.register_buffer("resize_wt", w_wt, persistent=False)  # [512, 224]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)  # [1,3,1,1]
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)  # [1,3,1,1]

    @property
    def grid_size(self) -> int:
        return self.dino_size // self.vit.patch_size

    @torch.no_grad()
    def prepare(self) -> "DinoFeatureExtractor":
        """Cache the pos-embed table for ``dino_size`` (call after loading weights, before tracing/export)."""
        self.vit.prepare_pos_embed(self.dino_size)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or _static_shape(images)[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"DinoFeatureExtractor: images must be [B,3,{self.image_size},{self.image_size}], "
                f"got {tuple(images.shape)}"
            )
        pix = dino_preprocess(
            images, self.dino_size, resize_h=self.resize_h, resize_wt=self.resize_wt, mean=self.mean, std=self.std
        )  # [B, 3, 224, 224]
        tokens = self.vit.forward_features(pix)["x_norm_patchtokens"]  # [B, N, D]
        g = self.grid_size
        feat = tokens.reshape(-1, g, g, tokens.shape[-1])  # [B, g, g, D]
        return feat.permute(0, 3, 1, 2)  # [B, D, g, g]
