"""The per-frame decoder specialised for serving: the same function as ``FlexAvatarModel.decode_frames``, rearranged.

    decoder = model.deploy_decoder(precision="bf16", fp8="off", upsampler="fp32")   # a new module; model unchanged
    g = decoder(avatar_code, expression_codes)   # [B,HT,D], [B,135] -> Gaussians [B,G,*] (3D bias sink)
    decoder = model.deploy_decoder("bf16", fp8="static", upsampler="bf16", residual="bf16")
    decoder.calibrate_fp8(avatar_codes, expression_codes)   # once, before use: the static activation scales

What differs from ``decode_frames`` (spec §5; each choice measured in docs/BENCHMARKS.md):

1. Fused projections: the sample stream's q|k|v and the context stream's q|k|v of every joint-attention block are
   one GEMM each (the checkpoint's weights concatenated), so 6 GEMMs become 2 and the outputs need no concatenation
   before attention.
2. The 3D bias-sink token (``_dataset_embedding[1]``) is a constant, not an embedding lookup.
3. The five Gaussian heads are one [14,48] linear map applied to the UV feature map before the bilinear sampling
   (linear maps commute with it), so 14 channels are sampled per Gaussian instead of 48.
4. Precision. ``"fp32"``: the official inference setting. ``"bf16"``: bf16 autocast (the official training
   setting) with the per-frame Linear weights stored in bf16; LayerNorm / RMSNorm and the residual stream stay fp32
   as autocast decides; ``residual="bf16"`` keeps the sample stream's residual in bf16 too (half the bytes of the
   per-layer norms and residual adds, which are memory-bound). ``fp8`` (bf16 only, Hopper or Ada GPUs): the
   sample-stream GEMMs (q|k|v, out, feed forward) take float8 e4m3 weights (one scale per output channel),
   multiplied by ``torch._scaled_mm`` with bf16 output (FP8 inference as in Micikevicius et al. 2022, "FP8 Formats
   for Deep Learning"); their activations are quantised either per row at run time (``fp8="row"``: a row max over
   every activation, which inductor runs as a slow looped reduction) or with one static scale per GEMM
   (``fp8="static"``: a plain multiply + saturating cast that fuses into the kernel producing the activation; the
   scales come from :meth:`DeployedFrameDecoder.calibrate_fp8`, post-training calibration as in TensorRT). Static
   scales are robust here because every one of these GEMMs reads a normalised activation (LayerNorm output, the
   GELU of a projection of one, or attention over RMS-normed q/k), whose range does not grow with the avatar code.
   ``fp8="fused"``: static scales, and the epilogues in the GEMMs (``kernels.fp8_gemm``, a Triton kernel on the
   GPU): ff_in applies the tanh GELU and quantises for ff_out, to_out and ff_out add the residual (bf16 residual
   stream only), so the memory-bound kernels between the GEMMs go away and the product is not rounded to bf16
   before its epilogue (``residual_gemm="rowwise"``, opt-in through ``FLEXRT_FP8_RESIDUAL_GEMM``: to_out and ff_out
   as torch's row-wise FP8 GEMM instead, the residual add left to the LayerNorm kernel after each; slower in the
   H200 stream sweep, docs/SERVING.md "Stream capacity"). ``upsampler="bf16"`` runs the StyleGAN upsampler in bf16 channels-last instead of fp32;
   ``upsampler="fp8"`` also runs its 3x3 convolutions with e4m3 operands (``Fp8ConvLayer``, ``kernels.fp8_conv``:
   per-channel weight scales, a static input scale calibrated with the GEMMs', the layer's bias + leaky ReLU + clamp
   in the convolution's epilogue); each block's up-conv then writes conv1's e4m3 input, pixel-shuffled, from its
   epilogue (its output channels stored phase-major; ``Fp8ConvLayer.output_scale``).

5. Attention token-major: the joint blocks keep q, k, v as [B,S,H,hd] (S = sample + context tokens) from the
   projection to the attention kernel and back, with the q/k RMS norms cast to the stream's dtype in the kernel
   that joins the two streams: the same function with one transposing copy fewer per block (-2 % at batch 64).

The StyleGAN modulation is folded into static weights (ws is always zero, spec §5.5). Everything here is a plain
nn.Module of torch ops: ``torch.compile`` and CUDA graphs apply as to the model itself.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from flexrt.kernels.fp8_conv import (conv_reference, fp8_conv3x3_lrelu, fp8_conv3x3_lrelu_shuffle, quantize_weight,
                                     shuffle_phase_major, to_phase_major)
from flexrt.kernels.fp8_gemm import (FP8_MAX, RESIDUAL_GEMMS, fp8_linear_gelu_quantize, fp8_linear_residual,
                                     fp8_linear_rowwise, fp8_qkv_rmsnorm)

from .flexavatar import DATASET_ID_3D, MAX_SCALE, MAX_XYZ_OFFSET_STEP, FlexAvatarModel
from .gaussians import Gaussians
from .layers import JointAttention, JointTransformerBlock
from .stylegan import SynthesisLayer

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
FP8_MODES = ("off", "row", "static", "fused")
UPSAMPLER_MODES = ("fp32", "bf16", "fp8")
# static activation scale = FP8_CALIBRATION_MARGIN x the calibration's amax / FP8_MAX: headroom for inputs beyond
# the calibration set (saturated, not overflowed, past it); e4m3's relative precision is the same over its normal
# range (2^-6 .. 448), so the margin costs only values below amax * margin / 2^15
FP8_CALIBRATION_MARGIN = 4.0


def fused_linear(linears: list[nn.Linear]) -> nn.Linear:
    """Linears sharing one input -> one Linear whose output is their outputs concatenated (weights copied)."""
    w = torch.cat([m.weight.detach() for m in linears], dim=0)
    b = torch.cat([m.bias.detach() for m in linears], dim=0)
    out = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=w.dtype)
    out.weight.data.copy_(w)
    out.bias.data.copy_(b)
    return out


class _StaticInputScale(nn.Module):
    """What every FP8 layer with a static input scale shares: before :meth:`calibrate` the layer records the running
    max of its inputs' magnitude (``_observe``); ``calibrate`` fixes ``input_scale`` [] = margin x that max / FP8_MAX
    (post-training calibration as in TensorRT; saturating, not overflowing, beyond it). Subclasses register the
    ``input_scale`` buffer (None until calibrated) and set ``scaling``."""

    observed_amax: torch.Tensor | None = None

    @torch.no_grad()
    def calibrate(self, margin: float = FP8_CALIBRATION_MARGIN) -> None:
        if self.scaling != "static":
            raise RuntimeError("calibrate() applies to scaling='static' only")
        if self.observed_amax is None:
            raise RuntimeError(f"{type(self).__name__}.calibrate: no input observed yet; run the decoder on "
                               "calibration inputs")
        self.input_scale = (self.observed_amax.float().clamp_min(1e-12) * margin / FP8_MAX).reshape(())
        self.observed_amax = None

    def _observe(self, x: torch.Tensor) -> None:  # calibration pass: keep the running max of |x|
        amax = x.detach().abs().amax().float()
        self.observed_amax = amax if self.observed_amax is None else torch.maximum(self.observed_amax, amax)


class Fp8Linear(_StaticInputScale):
    """y = x W^T + b with W in float8 e4m3 (scale per output channel) and x quantised to e4m3 at run time.

    weight_fp8 [out,in] e4m3fn, weight_scale [1,out] fp32, bias [out] bf16. ``scaling``: "row" (x's scale per row,
    computed from the row's max at run time) or "static" (one scale for every row, ``input_scale`` [], set by
    :meth:`calibrate`; until then the layer records its inputs' max and multiplies them unquantised by the
    dequantised weight). ``forward`` multiplies with ``torch._scaled_mm``: row scaling needs a GPU with FP8 tensor
    cores, static (tensor-wise) scaling also runs on a CPU; ``forward_reference`` computes the same quantised product
    in fp32 with plain ops on any device (what the tests compare against)."""

    def __init__(self, linear: nn.Linear, scaling: str = "row"):
        super().__init__()
        if scaling not in ("row", "static"):
            raise ValueError(f"scaling must be 'row' or 'static', got {scaling!r}")
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / FP8_MAX  # [out]
        self.register_buffer("weight_fp8", (w / scale[:, None]).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale[None, :].contiguous())
        self.register_buffer("bias", linear.bias.detach().to(torch.bfloat16))
        self.register_buffer("input_scale", None)  # [] fp32, static scaling once calibrated
        self.register_buffer("_one", torch.ones((), dtype=torch.float32), persistent=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scaling = scaling

    @staticmethod
    def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x2 [M,K] -> (float8 e4m3 [M,K], scale [M,1] fp32) with x2 ~= q * scale."""
        scale = x2.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12) / FP8_MAX
        return (x2.float() / scale).to(torch.float8_e4m3fn), scale

    def quantize_static(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 [M,K] -> float8 e4m3 [M,K] with x2 ~= q * input_scale (saturating at +-FP8_MAX)."""
        return (x2.float() / self.input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., in] -> [..., out] bf16
        x2 = x.reshape(-1, self.in_features)
        if self.scaling == "row":
            q, scale = self.quantize_rows(x2)
            y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                                 out_dtype=torch.bfloat16, use_fast_accum=True) + self.bias
        elif self.input_scale is None:  # calibration pass: observe, compute with the dequantised weight
            self._observe(x2)
            y = (x2.float() @ self.dequantized_weight().t() + self.bias.float()).to(torch.bfloat16)
        else:
            # tensor-wise scales on both operands (scale_b = 1); the per-channel weight scale joins the bias add
            y = torch._scaled_mm(self.quantize_static(x2), self.weight_fp8.t(), scale_a=self.input_scale,
                                 scale_b=self._one, out_dtype=torch.bfloat16, use_fast_accum=True)
            y = (y.float() * self.weight_scale + self.bias).to(torch.bfloat16)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _fused_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """x [..., in] bf16 (quantised here with the static scale) or already e4m3 -> (x8 [M,in], the weights)."""
        x2 = x.reshape(-1, self.in_features)
        x8 = x2 if x2.dtype == torch.float8_e4m3fn else self.quantize_static(x2)
        return x8, (self.weight_fp8, self.weight_scale.reshape(-1), self.bias, self.input_scale)

    def forward_gelu_quantized(self, x: torch.Tensor, out_scale: torch.Tensor) -> torch.Tensor:
        """e4m3 [..., out] = clamp(gelu_tanh(x W^T + b) / out_scale, +-FP8_MAX): the feed forward's first GEMM with
        the GELU and the next GEMM's quantisation in its epilogue (kernels.fp8_gemm; static scaling, calibrated)."""
        x8, w = self._fused_operands(x)
        return fp8_linear_gelu_quantize(x8, *w, out_scale).reshape(*x.shape[:-1], self.out_features)

    def forward_qkv_rmsnorm(self, x: torch.Tensor, gains: torch.Tensor, context: torch.Tensor,
                            eps: float) -> torch.Tensor:
        """A joint block's q|k|v projection (this layer's rows q|k|v, D each) with the q and k heads' RMS norms in
        the epilogue, joined with the context stream's: x [B,N,D] bf16, gains [2,hd] fp32, context [3,B,M,H,hd]
        bf16 -> [3,B,N+M,H,hd] bf16 (kernels.fp8_gemm.fp8_qkv_rmsnorm; static scaling, calibrated)."""
        x8, w = self._fused_operands(x)
        return fp8_qkv_rmsnorm(x8, *w, gains, context, eps)

    def forward_residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """bf16 [..., out] = residual + x W^T + b, the residual add in the GEMM's epilogue (kernels.fp8_gemm).
        x: bf16 or already-quantised e4m3 [..., in]; residual: contiguous bf16 [..., out]."""
        x8, w = self._fused_operands(x)
        return fp8_linear_residual(x8, *w, residual.reshape(-1, self.out_features)).reshape(residual.shape)

    def forward_rowwise(self, x: torch.Tensor) -> torch.Tensor:
        """bf16 [..., out] = x W^T + b through torch's row-wise-scaled FP8 GEMM, the bias in its epilogue
        (kernels.fp8_gemm.fp8_linear_rowwise); x: bf16 or already-quantised e4m3 [..., in]."""
        x8, w = self._fused_operands(x)
        return fp8_linear_rowwise(x8, *w).reshape(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:  # [out,in] fp32
        return self.weight_fp8.float() * self.weight_scale.t()

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        if self.scaling == "row":
            q, scale = self.quantize_rows(x2)
            xq = q.float() * scale
        elif self.input_scale is None:
            self._observe(x2)
            xq = x2.float()
        else:
            xq = self.quantize_static(x2).float() * self.input_scale
        y = xq @ self.dequantized_weight().t() + self.bias.float()
        return y.to(torch.bfloat16).reshape(*x.shape[:-1], self.out_features)


class Fp8ConvLayer(_StaticInputScale):
    """A StyleGAN ``SynthesisLayer`` (its folded 3x3 weight; an up-conv in its sub-pixel form, then the pixel
    shuffle) with float8 e4m3 operands: the weight with one scale per output channel, the input with one static
    scale (``input_scale`` [], set by :meth:`calibrate`; until then the layer records its inputs' max and convolves
    them unquantised with the dequantised weight). The bias, leaky ReLU, gain and clamp run in the convolution's
    epilogue (``kernels.fp8_conv``: Triton on the GPU, the reference ops on a CPU).

    x [B,C,H,W] bf16 in channels-last memory -> [B,C',H',W'] bf16 channels-last (the upsampler's bf16 layout).

    An up-conv whose output only feeds another Fp8ConvLayer (a synthesis block's conv0 -> conv1) gets
    ``output_scale`` [] = that layer's ``input_scale`` (``DeployedFrameDecoder.calibrate_fp8`` links them): its
    epilogue then pixel-shuffles and quantises (``fp8_conv3x3_lrelu_shuffle``) and it returns the next layer's input
    as e4m3 [B,H',W',C'] (NHWC), which a layer takes as already quantised with its ``input_scale``."""

    def __init__(self, layer: SynthesisLayer):
        super().__init__()
        if layer.folded is None:
            raise ValueError("Fp8ConvLayer needs a folded SynthesisLayer (StyleGANPixelShuffleUpsampler.fold())")
        self.up = layer.up
        w = layer.folded if layer.up == 1 else layer.folded_subpixel  # [N,C,3,3]
        w8, w_scale = quantize_weight(w)
        bias = layer.bias.detach().float()
        if layer.up != 1:  # sub-pixel channel o*4 + phase carries output channel o's bias (PixelShuffle's order),
            # then every per-channel tensor goes phase-major (channel phase * N' + o), the shuffle epilogue's order
            if layer.up != 2:
                raise ValueError(f"Fp8ConvLayer: up-convs by 2 only (FLEX-1's), got up={layer.up}")
            bias = bias.repeat_interleave(4)
            w8, w_scale, bias = (to_phase_major(t) for t in (w8, w_scale, bias))
        self.register_buffer("weight_fp8", w8)  # [N,3,3,C] (up-convs: output channels phase-major)
        self.register_buffer("weight_scale", w_scale)  # [N]
        self.register_buffer("bias", bias.contiguous())  # [N] fp32
        self.register_buffer("input_scale", None)  # [] fp32 once calibrated
        self.register_buffer("output_scale", None)  # [] fp32: the next Fp8ConvLayer's input_scale (up-convs only)
        self.scaling = "static"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float8_e4m3fn:  # [B,H,W,C] from the previous up-conv's epilogue, in this layer's scale
            x8 = x
        else:
            x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view when x is channels-last
            if self.input_scale is None:  # calibration pass: observe |x|, convolve unquantised
                self._observe(x_nhwc)
                one = torch.ones((), device=x.device)
                y = conv_reference(x_nhwc, self.weight_fp8, self.weight_scale, self.bias, one).to(torch.bfloat16)
                return self._bf16_out(y)
            x8 = (x_nhwc.float() / self.input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        if self.output_scale is not None:  # the next convolution's quantised input, pixel-shuffled in the epilogue
            return fp8_conv3x3_lrelu_shuffle(x8, self.weight_fp8, self.weight_scale, self.bias, self.input_scale,
                                             self.output_scale)
        return self._bf16_out(fp8_conv3x3_lrelu(x8, self.weight_fp8, self.weight_scale, self.bias, self.input_scale))

    def _bf16_out(self, y: torch.Tensor) -> torch.Tensor:
        """y [B,H,W,N] bf16 -> [B,N',H',W'] channels-last (up-convs: shuffled from their phase-major channels)."""
        if self.up != 1:
            y = shuffle_phase_major(y)
        return y.permute(0, 3, 1, 2)  # a view, channels-last memory


class DeployedJointBlock(nn.Module):
    """One SD3 joint block (spec §5.3) with fused q|k|v projections; submodules taken over from the model's block."""

    def __init__(self, block: JointTransformerBlock):
        super().__init__()
        attn: JointAttention = block.attn
        self.dim, self.n_heads, self.context_pre_only = block.dim, attn.n_heads, block.context_pre_only
        self.norm1, self.norm1_context = block.norm1, block.norm1_context
        self.norm_q, self.norm_k = attn.norm_q, attn.norm_k
        self.norm_added_q, self.norm_added_k = attn.norm_added_q, attn.norm_added_k
        self.to_qkv = fused_linear([attn.to_q, attn.to_k, attn.to_v])
        self.add_qkv = fused_linear([attn.add_q_proj, attn.add_k_proj, attn.add_v_proj])
        self.to_out = attn.to_out[0]
        self.to_add_out = None if block.context_pre_only else attn.to_add_out
        self.ff_in, self.ff_out = block.ff.net[0].proj, block.ff.net[2]
        self.fused_epilogues = False  # fp8="fused": set by DeployedFrameDecoder once the sample linears are Fp8Linear
        self.fused_qkv = False  # fp8="fused" where kernels.fp8_gemm.fused_qkv_available: q|k|v + norms in one kernel
        self.residual_gemm = "epilogue"  # fp8="fused": to_out / ff_out add the residual in their epilogue, or
        # "rowwise": torch's row-wise FP8 GEMM, the residual added by the LayerNorm kernel that follows
        self.register_buffer("qk_gains", torch.stack([attn.norm_q.weight, attn.norm_k.weight]).detach().float(),
                             persistent=False)  # [2,hd]: the sample stream's q / k RMS-norm gains, for fused q|k|v
        if not block.context_pre_only:
            self.ff_context_in, self.ff_context_out = block.ff_context.net[0].proj, block.ff_context.net[2]

    def attention(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B,N,D] sample stream, c [B,M,D] context stream -> joint attention's output [B,N+M,D], sample first."""
        d, n, m, h = self.dim, x.shape[1], c.shape[1], self.n_heads
        b, s, hd = x.shape[0], n + m, d // h
        # 1. q|k|v of both streams, each one GEMM, joined along the tokens in [B,S,H,hd] (S = N+M, sample tokens
        #    first). Token-major ("BSHD") all the way: the RMS norms reduce over the contiguous hd, the joins copy
        #    rows, and attention's output comes back token-major too, so step 3 needs no transposing copy.
        #    The q/k norms compute in fp32 (HeadRMSNorm) and are cast back to the stream's dtype here, in the same
        #    kernel, which is what autocast would do at the attention call.
        qc, kc, vc = self.add_qkv(self.norm1_context(c)).view(b, m, 3, h, hd).unbind(2)  # [B,M,H,hd] each
        qc, kc = self.norm_added_q(qc).to(qc.dtype), self.norm_added_k(kc).to(kc.dtype)
        if self.fused_qkv and self.to_qkv.input_scale is not None:
            # 1'. fp8="fused": the sample stream's GEMM writes its normed q, k and v straight into the joined
            #     tensors (kernels.fp8_gemm.fp8_qkv_rmsnorm), the context stream's rows copied after them
            qkv = self.to_qkv.forward_qkv_rmsnorm(self.norm1(x), self.qk_gains, torch.stack([qc, kc, vc]),
                                                  self.norm_q.eps)
            q, k, v = qkv.unbind(0)  # [B,S,H,hd] each
        else:
            qs, ks, vs = self.to_qkv(self.norm1(x)).view(b, n, 3, h, hd).unbind(2)  # [B,N,H,hd] each
            q = torch.cat([self.norm_q(qs).to(qs.dtype), qc], 1)  # [B,S,H,hd]
            k = torch.cat([self.norm_k(ks).to(ks.dtype), kc], 1)
            v = torch.cat([vs, vc], 1)
        # 2. joint attention (scale 1/sqrt(hd)); the kernel takes [B,H,S,hd] views of the token-major tensors
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return y.transpose(1, 2).reshape(b, s, d)  # [B,S,D], sample tokens first

    def forward(self, x: torch.Tensor, c: torch.Tensor):  # x [B,N,D] sample stream, c [B,M,D] context stream
        d, n = self.dim, x.shape[1]
        y = self.attention(x, c)  # steps 1-2
        # 3. output projections, feed forward (LayerNorm without affine, eps 1e-6, tanh GELU), residuals
        if self.fused_epilogues and self.ff_out.input_scale is not None:  # (not during calibration)
            # 3'. the same with the sample stream's epilogues in the FP8 GEMMs: to_out and ff_out add the residual,
            #     ff_in applies the GELU and quantises for ff_out; x stays bf16 [B,N,D]
            if self.residual_gemm == "rowwise":  # the adds fuse into the LayerNorm + quantisation after each
                x = x + self.to_out.forward_rowwise(y[:, :n])
                h8 = self.ff_in.forward_gelu_quantized(F.layer_norm(x, (d,), eps=1e-6), self.ff_out.input_scale)
                x = x + self.ff_out.forward_rowwise(h8)
            else:
                x = self.to_out.forward_residual(y[:, :n], x)
                h8 = self.ff_in.forward_gelu_quantized(F.layer_norm(x, (d,), eps=1e-6), self.ff_out.input_scale)
                x = self.ff_out.forward_residual(h8, x)
        else:
            x = x + self.to_out(y[:, :n])
            x = x + self.ff_out(F.gelu(self.ff_in(F.layer_norm(x, (d,), eps=1e-6)), approximate="tanh"))
        if self.context_pre_only:
            return x, None
        c = c + self.to_add_out(y[:, n:])
        c = c + self.ff_context_out(F.gelu(self.ff_context_in(F.layer_norm(c, (d,), eps=1e-6)), approximate="tanh"))
        return x, c

    def sample_linears(self) -> dict[str, nn.Linear]:
        """The GEMMs over the 1024 sample tokens (where nearly all the FLOPs are)."""
        return {"to_qkv": self.to_qkv, "to_out": self.to_out, "ff_in": self.ff_in, "ff_out": self.ff_out}


class DeployedFrameDecoder(nn.Module):
    """avatar_code [B,HT,D], expression_codes [B,135] -> Gaussians [B,G,*] (fp32), 3D bias sink."""

    def __init__(self, model: FlexAvatarModel, precision: str = "fp32", fp8: str = "off", upsampler: str = "fp32",
                 residual: str = "fp32", fused_qkv: bool = True, residual_gemm: str = "epilogue"):
        super().__init__()
        if residual_gemm not in RESIDUAL_GEMMS:
            raise ValueError(f"residual_gemm must be one of {list(RESIDUAL_GEMMS)}, got {residual_gemm!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if upsampler not in UPSAMPLER_MODES:
            raise ValueError(f"upsampler must be one of {list(UPSAMPLER_MODES)}, got {upsampler!r}")
        if upsampler == "fp8" and precision != "bf16":
            raise ValueError(f"upsampler='fp8' (FP8 convolutions writing bf16) needs precision='bf16', got {precision!r}")
        if fp8 not in FP8_MODES:
            raise ValueError(f"fp8 must be one of {list(FP8_MODES)}, got {fp8!r}")
        if fp8 != "off" and precision != "bf16":
            raise ValueError(f"fp8={fp8!r} needs precision='bf16' (FP8 GEMMs produce bf16), got {precision!r}")
        if residual not in ("fp32", "bf16"):
            raise ValueError(f"residual must be 'fp32' or 'bf16', got {residual!r}")
        if residual == "bf16" and precision != "bf16":
            raise ValueError(f"residual='bf16' needs precision='bf16', got {precision!r}")
        if fp8 == "fused" and residual != "bf16":
            raise ValueError(f"fp8='fused' adds the residual in the GEMM's bf16 epilogue: it needs residual='bf16', "
                             f"got {residual!r}")
        model = copy.deepcopy(model)  # the deployed copy owns its (fused, cast) weights; the caller's stays fp32
        self.cfg = cfg = model.cfg
        self.precision, self.fp8, self.upsampler_precision, self.residual = precision, fp8, upsampler, residual
        self.dtype = PRECISIONS[precision]
        htm, gd = model._head_transformer, model._gaussian_decoder
        self.expression_mlp = htm._expression_mlp
        with torch.no_grad():
            sink = htm._dataset_embedding.weight[DATASET_ID_3D].detach().clone()  # [D]
        self.register_buffer("sink_token", sink.view(1, 1, -1), persistent=False)
        self.use_sink = cfg.use_dataset_ids
        et = htm._expression_transformer
        self.linear_cond_proj = et.linear_cond_proj
        self.blocks = nn.ModuleList([DeployedJointBlock(b) for b in et.layers])
        self.norm = et.norm
        gd._stylegan_upsampler.fold()
        self.upsampler = gd._stylegan_upsampler
        self.upsampler_dtype = torch.float32 if upsampler == "fp32" else torch.bfloat16
        # the five Gaussian heads (spec 5.7) as one [14,48] map, applied BEFORE sampling: bilinear sampling is linear
        # with zero padding, so sample(img) W^T + b == sample(img W^T) + b, and the sampler then moves 14 channels
        # per Gaussian instead of 48 (and no [B,G,48] feature tensor is written)
        heads = gd._mlp_decoder.out_layers
        self.head_names = ("shs", "scaling", "xyz", "opacity", "rotation")
        self.head_widths = tuple(heads[k].out_features for k in self.head_names)
        self.register_buffer("head_weight", torch.cat([heads[k].weight.detach() for k in self.head_names]).clone(),
                             persistent=False)  # [14,Cg]
        self.register_buffer("head_bias", torch.cat([heads[k].bias.detach() for k in self.head_names]).clone(),
                             persistent=False)  # [14]
        self.register_buffer("template_positions", gd._initial_gaussian_positions, persistent=False)  # [1,G,3]
        self.register_buffer("uv_samples", gd._uv_samples, persistent=False)  # [1,G,1,2]
        if self.dtype is not None:  # per-frame Linear weights stored in the compute dtype (autocast would cast them)
            for m in [self.expression_mlp, self.linear_cond_proj, self.blocks]:
                for sub in m.modules():
                    if isinstance(sub, nn.Linear):
                        sub.to(self.dtype)
            self.sink_token = self.sink_token.to(self.dtype)
        if fp8 != "off":
            for block in self.blocks:
                for name, linear in block.sample_linears().items():
                    setattr(block, name, Fp8Linear(linear, scaling="row" if fp8 == "row" else "static"))
                block.fused_epilogues = fp8 == "fused"
                block.fused_qkv = fp8 == "fused" and fused_qkv
                block.residual_gemm = residual_gemm
        if upsampler in ("bf16", "fp8"):
            self.upsampler.to(torch.bfloat16).to(memory_format=torch.channels_last)
        if upsampler == "fp8":  # the 3x3 convolutions (nearly all the upsampler's FLOPs) with e4m3 operands
            for block in self.upsampler.blocks:
                block.conv0, block.conv1 = Fp8ConvLayer(block.conv0), Fp8ConvLayer(block.conv1)
        self.eval().requires_grad_(False)

    @property
    def num_gaussians(self) -> int:
        return self.uv_samples.shape[1]

    def fp8_linears(self) -> list[Fp8Linear]:
        return [m for m in self.modules() if isinstance(m, Fp8Linear)]

    def static_fp8_layers(self) -> list[nn.Module]:
        """The layers with a static FP8 input scale to calibrate: Fp8Linear (fp8="static" / "fused") and
        Fp8ConvLayer (upsampler="fp8")."""
        return [m for m in self.modules() if isinstance(m, (Fp8Linear, Fp8ConvLayer)) and m.scaling == "static"]

    @property
    def needs_calibration(self) -> bool:
        """True until calibrate_fp8 has run (fp8="static" / "fused" and upsampler="fp8" only)."""
        return any(m.input_scale is None for m in self.static_fp8_layers())

    @torch.no_grad()
    def calibrate_fp8(self, avatar_codes: torch.Tensor, expression_codes: torch.Tensor,
                      margin: float = FP8_CALIBRATION_MARGIN) -> dict[str, float]:
        """fp8="static" / "fused": run the decoder on calibration inputs (avatar_codes [N,HT,D], expression_codes
        [N,135]) with every FP8 GEMM observing its input's max (computed unquantised), then fix each GEMM's
        activation scale to margin x max / FP8_MAX. Returns {layer name: observed max}. Call once, before
        compiling or capturing."""
        layers = self.static_fp8_layers()
        if not layers:
            raise RuntimeError(f"calibrate_fp8 applies to fp8='static' / 'fused' or upsampler='fp8', this decoder has "
                               f"fp8={self.fp8!r}, upsampler={self.upsampler_precision!r}")
        for m in layers:
            m.input_scale, m.observed_amax = None, None
            if isinstance(m, Fp8ConvLayer):
                m.output_scale = None
        self(avatar_codes, expression_codes)
        names = {m: n for n, m in self.named_modules()}
        amax = {names[m]: float(m.observed_amax) for m in layers}
        for m in layers:
            m.calibrate(margin)
        for block in self.upsampler.blocks:  # conv0 -> conv1: the up-conv's epilogue quantises for conv1
            if isinstance(block.conv0, Fp8ConvLayer) and isinstance(block.conv1, Fp8ConvLayer) and block.conv0.up == 2:
                block.conv0.output_scale = block.conv1.input_scale
        return amax

    def forward(self, avatar_code: torch.Tensor, expression_codes: torch.Tensor) -> Gaussians:
        cfg = self.cfg
        with torch.autocast(avatar_code.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            # 1. expression tokens (+ the constant 3D bias-sink token first) -> context [B,1+n_tok,D]
            b, ht, d = avatar_code.shape
            tokens = self.expression_mlp(expression_codes.to(avatar_code.dtype)).reshape(b, cfg.n_expression_tokens, d)
            context = torch.cat([self.sink_token.expand(b, -1, -1).to(tokens.dtype), tokens], 1) if self.use_sink else tokens
            # 2. expression transformer over the avatar code (sample stream) -> [B,HT,D]
            x = avatar_code.to(self.dtype) if self.residual == "bf16" else avatar_code  # the sample stream
            c = self.linear_cond_proj(context)
            for block in self.blocks:
                x, c = block(x, c)
            x = self.norm(x)
        # 3. UV feature map [B,D,r,r] -> StyleGAN upsampler -> [B,Cg,4r,4r] (fp32 as in the official code, or bf16)
        r = cfg.res_head_tokens
        uv = x.transpose(1, 2).reshape(b, d, r, r).to(self.upsampler_dtype)
        if self.upsampler_dtype != torch.float32:
            uv = uv.contiguous(memory_format=torch.channels_last)
        img = self.upsampler(uv).float()
        # 4. the heads on the UV map (fp32 matmul), sampled at the Gaussians' template UVs -> [B,G,14]
        head_map = torch.matmul(img.permute(0, 2, 3, 1), self.head_weight.t()).permute(0, 3, 1, 2)  # [B,14,4r,4r]
        z = F.grid_sample(head_map, self.uv_samples.expand(b, -1, -1, -1), mode="bilinear", padding_mode="zeros",
                          align_corners=False)[..., 0].transpose(1, 2) + self.head_bias  # [B,G,14]
        shs, scaling, xyz, opacity, rotation = z.split(self.head_widths, dim=-1)
        return Gaussians(
            positions=self.template_positions + (torch.sigmoid(xyz) - 0.5) * MAX_XYZ_OFFSET_STEP,
            scales=torch.exp(scaling).clamp(0.0, MAX_SCALE),
            rotations=F.normalize(rotation, dim=-1),
            colors=shs,
            opacities=torch.sigmoid(opacity),
        )


__all__ = ["DeployedFrameDecoder", "DeployedJointBlock", "Fp8ConvLayer", "Fp8Linear", "fused_linear", "FP8_MAX",
           "FP8_MODES", "UPSAMPLER_MODES", "FP8_CALIBRATION_MARGIN"]
