"""Transformer building blocks of FLEX-1, named after the official modules so the checkpoint loads strictly.

All tensors here are **batch-first** ([B, N, D]); the official code keeps tokens sequence-first and the model
converts at its boundaries. Numerics follow the spec (FLEX1_ARCHITECTURE.md, sections 4 and 5.3):

- nanoGPT encoder block: pre-LN (eps 1e-5), fused q|k|v, causal attention, exact-erf GELU MLP.
- SD3 joint-attention block: LayerNorm(eps 1e-5, affine) on both streams, per-head RMSNorm (eps 1e-6) on q/k of
  both streams, joint attention over [sample; context] (sample first), FF with tanh-GELU after LayerNorm
  without affine (eps 1e-6); the last block is ``context_pre_only`` (no context outputs).
- PointEmbed: Fourier features (pi * 2^k, k < 8) of the template xyz, Linear(51 -> D), LayerNorm(eps 1e-5).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GPTLayerNorm(nn.Module):
    """nanoGPT's LayerNorm: weight and bias, eps 1e-5."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class GPTSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, causal: bool):
        super().__init__()
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.n_heads = n_heads
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)  # each [B, T, D]
        q, k, v = (y.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for y in (q, k, v))  # [B, H, T, hd]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, H, T, hd]
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.c_proj(y)


class GPTMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class GPTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, causal: bool):
        super().__init__()
        self.ln_1 = GPTLayerNorm(dim)
        self.attn = GPTSelfAttention(dim, n_heads, causal)
        self.ln_2 = GPTLayerNorm(dim)
        self.mlp = GPTMLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _GPTTransformer(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_layers: int, block_size: int, causal: bool):
        super().__init__()
        self.h = nn.ModuleList([GPTBlock(dim, n_heads, causal) for _ in range(n_layers)])
        self.ln_f = GPTLayerNorm(dim)
        self.wpe = nn.Embedding(block_size, dim)


class GPTEncoder(nn.Module):
    """The image-token encoder (``_transformer_encoder``): learned positions, causal blocks, final LN."""

    def __init__(self, dim: int, n_heads: int, n_layers: int, block_size: int, causal: bool):
        super().__init__()
        self.transformer = _GPTTransformer(dim, n_heads, n_layers, block_size, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, D] -> [B, T, D]
        t = x.shape[1]
        x = x + self.transformer.wpe.weight[:t]
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)


class HeadRMSNorm(nn.Module):
    """diffusers RMSNorm over the head channels (eps 1e-6), computed in fp32, gain shared across heads."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., head_dim]
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)  # fp32 (type promotion), as diffusers does
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


class JointAttention(nn.Module):
    """diffusers ``Attention`` with ``JointAttnProcessor2_0`` and qk RMSNorm; module order = checkpoint order."""

    def __init__(self, dim: int, n_heads: int, context_pre_only: bool):
        super().__init__()
        head_dim = dim // n_heads
        self.n_heads = n_heads
        self.norm_q = HeadRMSNorm(head_dim)
        self.norm_k = HeadRMSNorm(head_dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.context_pre_only = context_pre_only
        if not context_pre_only:
            self.to_add_out = nn.Linear(dim, dim)
        self.norm_added_q = HeadRMSNorm(head_dim)
        self.norm_added_k = HeadRMSNorm(head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, H, N, hd]
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, c: torch.Tensor):  # x [B, N, D], c [B, M, D]
        n = x.shape[1]
        q = self.norm_q(self._heads(self.to_q(x)))
        k = self.norm_k(self._heads(self.to_k(x)))
        v = self._heads(self.to_v(x))
        qc = self.norm_added_q(self._heads(self.add_q_proj(c)))
        kc = self.norm_added_k(self._heads(self.add_k_proj(c)))
        vc = self._heads(self.add_v_proj(c))
        q = torch.cat([q, qc], dim=2)  # [B, H, N+M, hd], sample first
        k = torch.cat([k, kc], dim=2)
        v = torch.cat([v, vc], dim=2)
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, N+M, hd], scale 1/sqrt(hd)
        b, h, s, hd = y.shape
        y = y.transpose(1, 2).reshape(b, s, h * hd)
        out_x = self.to_out[0](y[:, :n])
        out_c = None if self.context_pre_only else self.to_add_out(y[:, n:])
        return out_x, out_c


class _GELUProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """diffusers FeedForward(activation_fn="gelu-approximate"): net = [GELU(proj), Dropout, Linear]."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([_GELUProj(dim, mult * dim), nn.Dropout(0.0), nn.Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class JointTransformerBlock(nn.Module):
    """SD3 joint block without adaLN; ``context_pre_only`` blocks drop the context stream's outputs."""

    def __init__(self, dim: int, n_heads: int, context_pre_only: bool):
        super().__init__()
        self.dim = dim
        self.context_pre_only = context_pre_only
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm1_context = nn.LayerNorm(dim, eps=1e-5)
        self.attn = JointAttention(dim, n_heads, context_pre_only)
        self.ff = FeedForward(dim)
        if not context_pre_only:
            self.ff_context = FeedForward(dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor):  # x [B, N, D], c [B, M, D]
        d = self.dim
        attn_x, attn_c = self.attn(self.norm1(x), self.norm1_context(c))
        x = x + attn_x
        x = x + self.ff(F.layer_norm(x, (d,), eps=1e-6))
        if self.context_pre_only:
            return x, None
        c = c + attn_c
        c = c + self.ff_context(F.layer_norm(c, (d,), eps=1e-6))
        return x, c


class JointTransformer(nn.Module):
    """``TransformerDecoder('sd3_cond')``: context projected once, N joint blocks, final LN (eps 1e-6)."""

    def __init__(self, dim: int, n_heads: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [JointTransformerBlock(dim, n_heads, context_pre_only=(i == n_layers - 1)) for i in range(n_layers)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.linear_cond_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # x [B, N, D], context [B, M, D]
        c = self.linear_cond_proj(context)
        for layer in self.layers:
            x, c = layer(x, c)
        return self.norm(x)


class PointEmbed(nn.Module):
    """Fourier embedding of template xyz: [sin(xf), sin(yf), sin(zf), cos(..), xyz] -> Linear -> LayerNorm."""

    def __init__(self, dim: int, hidden_dim: int = 48):
        super().__init__()
        n_freq = hidden_dim // 6  # 8
        e = torch.pow(2, torch.arange(n_freq)).float() * math.pi
        z = torch.zeros(n_freq)
        basis = torch.stack([torch.cat([e, z, z]), torch.cat([z, e, z]), torch.cat([z, z, e])])  # [3, 24]
        self.register_buffer("basis", basis, persistent=False)
        self.mlp = nn.Linear(hidden_dim + 3, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:  # xyz [B, N, 3] -> [B, N, D]
        proj = torch.einsum("bnd,de->bne", xyz, self.basis)  # [B, N, 24]
        feats = torch.cat([proj.sin(), proj.cos(), xyz], dim=2)  # [B, N, 51]
        return self.norm(self.mlp(feats))
