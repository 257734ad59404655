"""The engine interface the streaming service and the benchmarks use.

An engine runs the two exported graphs of a FLEX-style model on one device:

    encode(images [B,3,512,512] float32 in [0,1], cam2world [B,4,4] OpenCV, intrinsics [B,3,3] normalised)
        -> avatar_code [B,HT,D] float32                      (once per person; DINOv2 included)
    decode(avatar_code [B,HT,D], expression_codes [B,135])
        -> Gaussians, each attribute [B,G,*] float32         (per frame; bias sink fixed to the 3D id)

Inputs and outputs are torch tensors on ``engine.device``; a GPU engine never copies them to the host.
Implementations: ``TorchEngine`` (eager / CUDA graphs), ``OrtEngine`` (ONNX Runtime CPU or CUDA EP with IO
binding), ``TensorRTEngine`` (TensorRT 10; not exercised in this workplace).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch

from flexrt.model.gaussians import Gaussians

EXPRESSION_DIM = 135


@dataclass
class EngineInfo:
    backend: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu" or "cuda:0"
    precision: str  # "fp32", "fp16", "bf16"
    detail: dict = field(default_factory=dict)  # providers, versions, manifest identity ...

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{self.backend} on {self.device} ({self.precision}{', ' + extra if extra else ''})"


class Engine(abc.ABC):
    info: EngineInfo
    num_head_tokens: int  # HT
    hidden_dim: int  # D
    num_gaussians: int  # G
    image_size: int = 512

    @property
    def device(self) -> torch.device:
        return torch.device(self.info.device)

    @abc.abstractmethod
    def encode(self, images: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
        """images [B,3,512,512], cam2world [B,4,4], intrinsics [B,3,3] -> avatar code [B,HT,D]."""

    @abc.abstractmethod
    def decode(self, avatar_code: torch.Tensor, expression_codes: torch.Tensor) -> Gaussians:
        """avatar_code [B,HT,D], expression_codes [B,135] -> Gaussians with attributes [B,G,*]."""

    def warmup(self, max_batch: int, progress=None) -> None:
        """Prepare every batch size up to ``max_batch`` (compilation, CUDA-graph capture) before serving, so
        that no stream waits for it later. Backends with nothing to prepare do nothing. ``progress(done, total,
        what)``: called after each batch size prepared (the server logs it; a fresh GPU takes minutes)."""

    # ---- input validation shared by every backend -------------------------------------------------
    def check_decode_inputs(self, avatar_code: torch.Tensor, expression_codes: torch.Tensor) -> None:
        if avatar_code.dim() != 3 or tuple(avatar_code.shape[1:]) != (self.num_head_tokens, self.hidden_dim):
            raise ValueError(
                f"avatar_code must be [B,{self.num_head_tokens},{self.hidden_dim}], got {tuple(avatar_code.shape)}"
            )
        if expression_codes.dim() != 2 or expression_codes.shape[1] != EXPRESSION_DIM:
            raise ValueError(f"expression_codes must be [B,{EXPRESSION_DIM}], got {tuple(expression_codes.shape)}")
        if expression_codes.shape[0] != avatar_code.shape[0]:
            raise ValueError(
                f"batch mismatch: avatar_code has {avatar_code.shape[0]} rows, "
                f"expression_codes has {expression_codes.shape[0]}"
            )
        if expression_codes.device.type == "cpu" and not bool(torch.isfinite(expression_codes).all()):
            # GPU tensors are not checked here (that would synchronise); the server validates on the host
            raise ValueError("expression_codes contain NaN or Inf")

    def check_encode_inputs(self, images: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor) -> None:
        s = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"images must be [B,3,{s},{s}], got {tuple(images.shape)}")
        b = images.shape[0]
        if tuple(cam2world.shape) != (b, 4, 4):
            raise ValueError(f"cam2world must be [{b},4,4], got {tuple(cam2world.shape)}")
        if tuple(intrinsics.shape) != (b, 3, 3):
            raise ValueError(f"intrinsics must be [{b},3,3], got {tuple(intrinsics.shape)}")
        for name, t in (("images", images), ("cam2world", cam2world), ("intrinsics", intrinsics)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contain NaN or Inf")
