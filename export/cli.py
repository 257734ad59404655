"""`flexavatar export-engines`."""
from __future__ import annotations

import argparse

from flexrt.model.config import PRESETS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export-engines",
        help="export the encoder and decoder to ONNX (fp32, fp16) and optionally TensorRT FP16",
        description=(
            "Build an engine directory: encoder.onnx (image, cam2world, intrinsics -> avatar_code, DINOv2 inside), "
            "decoder.onnx (avatar_code, expression_codes -> Gaussians, 3D bias sink), their fp16 variants, PyTorch "
            "weights, and manifest.json with file hashes and a parity report against the PyTorch fp32 model. "
            "Without --checkpoint the engines hold seeded random weights (said loudly, also in the manifest)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default="tiny",
                   help=f"model config: a preset ({', '.join(PRESETS)}) or an official model_config.json")
    p.add_argument("--checkpoint", help="FLEX checkpoint (.pt/.pth state_dict or .safetensors), loaded strictly")
    p.add_argument("--dinov2", help="DINOv2 checkpoint (dinov2_vitb14_reg4_pretrain.pth or .safetensors)")
    p.add_argument("--template", help="head template: OBJ, or official template_samples.npz (default: the "
                                      "project's own head; use the official gghead_template.obj for FLEX-1)")
    p.add_argument("--stylegan-channel-base", type=int, help="StyleGAN upsampler channel_base (official: 32768)")
    p.add_argument("--stylegan-channel-max", type=int, help="StyleGAN upsampler channel_max (official: 512)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--precision", default="fp32,fp16", help="comma-separated subset of fp32,fp16")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT FP16 engines (needs tensorrt + GPU)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the TensorRT profile allows")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check against PyTorch")
    p.set_defaults(func=run)


def run(args) -> int:
    from .build import export_engines
    from .tensorrt_build import TensorRTUnavailable

    try:
        manifest = export_engines(
            config=args.config, checkpoint=args.checkpoint, dinov2=args.dinov2, template=args.template,
            out_dir=args.out, precisions=[p.strip() for p in args.precision.split(",") if p.strip()],
            tensorrt=args.tensorrt, max_batch=args.max_batch, stylegan_channel_base=args.stylegan_channel_base,
            stylegan_channel_max=args.stylegan_channel_max, opset=args.opset, parity=not args.no_parity,
        )
    except (TensorRTUnavailable, ValueError, FileNotFoundError) as e:
        print(f"error: {e}")
        return 2
    return 0 if manifest["parity"]["ok"] else 1
