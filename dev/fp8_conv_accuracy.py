"""Development probe (not installed; CPU): would FP8 convolutions in the StyleGAN upsampler keep the rendered PSNR
against fp32 >= 45 dB? The four 3x3 convolutions emulated with e4m3 operands (the input with one static scale, 4x the
amax seen on the same frames; the folded weights with one scale per output channel: what dev/fp8_conv_probe.py's
kernel multiplies), fp32 arithmetic otherwise; the decoder otherwise fp32, or the served FP8 one (``--with-fp8-gemms``:
bf16, static FP8 GEMMs, bf16 residual). Renders EMO-1 frames of the demo's avatar with the PyTorch rasterizer.

    python dev/fp8_conv_accuracy.py shipped [--with-fp8-gemms]     # the shipped tiny model, 8 frames at 128² (~1 min)
    python dev/fp8_conv_accuracy.py flex1 [--with-fp8-gemms]       # FLEX-1, random weights, 4 frames at 256² (~4 min)

Results (this machine's CPU, 2026-12-03; docs/SERVING.md "Stream capacity"): shipped 49.4 dB min (convs
alone), 46.3 dB with the FP8 GEMMs too; FLEX-1 random weights 65.1 dB (convs alone), 62.6 dB with the FP8
GEMMs (~25 min on 2 cores: bf16 on a CPU is slow).
"""
import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexrt.model import stylegan
from flexrt.model.pipeline import build_pipeline
from flexrt.runtime.cli import find_shared_dir
from flexrt.runtime.engines import TorchEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_fp8 import _render  # noqa: E402  (the FP8 tests' renderer: default camera, white background)

FP8_MAX = 448.0
MARGIN = 4.0

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("model", choices=("shipped", "flex1"))
p.add_argument("--with-fp8-gemms", action="store_true", help="the served FP8 decoder (static GEMMs) around the convs")
args = p.parse_args()
torch.set_num_threads(2)
shared = find_shared_dir()
if shared is None:
    raise SystemExit("error: needs the reference data (EMO-1, the example photo): FLEXRT_SHARED or ../shared")
if args.model == "shipped":
    from flexrt.training.shipped import SHIPPED_PRESET, demo_photo, shipped_checkpoint

    pipe, size, n = build_pipeline(SHIPPED_PRESET, str(shipped_checkpoint())), 128, 8
    photo, c2w, K, _ = demo_photo()
else:
    from PIL import Image

    pipe, size, n = build_pipeline("flex1"), 256, 4
    images = shared / "reference/assets/images"
    photo = np.asarray(Image.open(images / "marble_sculpture.png").convert("RGB").resize((512, 512)))
    with np.load(images / "marble_sculpture_input.npz") as z:
        c2w, K = z["input_cam2world"], z["input_intrinsics_normalized"]
ref_engine = TorchEngine(pipe, precision="fp32")
img = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float() / 255
code = ref_engine.encode(img, torch.from_numpy(c2w)[None].float(), torch.from_numpy(K)[None].float())
seq = np.load(shared / "reference/assets/expressions/EMO-1-shout+laugh.npz")["expression_codes"]
expr = torch.from_numpy(seq[:: len(seq) // n][:n].astype(np.float32))
codes = code.expand(n, -1, -1)
ref = ref_engine.decode(codes, expr)
engine = (TorchEngine(pipe, precision="bf16", fp8="static", residual="bf16") if args.with_fp8_gemms
          else TorchEngine(pipe, precision="fp32"))
amax = {}


def fp8_layer(self, x, calibrate: bool):
    """SynthesisLayer.forward (folded weights) with e4m3 operands."""
    dtype, x = x.dtype, x.float()
    w = (self.folded if self.up == 1 else self.folded_subpixel).float()
    if calibrate:
        amax[id(self)] = max(amax.get(id(self), 0.0), float(x.abs().max()))
    else:
        s = amax[id(self)] * MARGIN / FP8_MAX
        x = (x / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s
        ws = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) / FP8_MAX
        w = (w / ws).to(torch.float8_e4m3fn).float() * ws
    y = F.conv2d(x, w, padding=1)
    y = (F.pixel_shuffle(y, 2) if self.up != 1 else y) + self.bias.float().reshape(1, -1, 1, 1)
    return (F.leaky_relu(y, 0.2) * stylegan.LRELU_GAIN).clamp(-stylegan.CONV_CLAMP, stylegan.CONV_CLAMP).to(dtype)


layers = [m for m in engine.decoder.upsampler.modules() if isinstance(m, stylegan.SynthesisLayer)]
for calibrate in (True, False):
    for layer in layers:
        layer.forward = types.MethodType(lambda self, x, c=calibrate: fp8_layer(self, x, c), layer)
    out = engine.decode(codes, expr)
a, b = _render(ref, size), _render(out, size)
psnr = -10 * torch.log10(((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-20))
print(f"{args.model}{' + FP8 GEMMs' if args.with_fp8_gemms else ''}: render PSNR with FP8 convolutions vs fp32, "
      f"{n} EMO-1 frames at {size}²: min {float(psnr.min()):.2f} dB, per frame {[round(float(v), 1) for v in psnr]}")
