"""Avatar fitting (spec §9, official ``model/inversion.py``): optimise the avatar code against N observed images
with the decoder frozen.

    from flexrt.fitting import fit_avatar, FitConfig
    result = fit_avatar(model, images, cam2world, intrinsics, expression_codes,
                        init_code=None, config=FitConfig(), dino=None, progress=None)

Recipe (FlexAvatar, Kirschstein et al., CVPR 2026, §"test-time fitting"; defaults of the official FittingConfig):

1. Initial avatar code: ``init_code``, or the feed-forward code of the first image (``model.encode`` with the
   encoder's DINOv2 features, ``dino``).
2. Parameters: the avatar code [1, HT, D] and, when ``optimize_expression``, one zero-initialised expression-code
   offset [135] per input view (separate parameters, as in the official code, so Adam leaves a view's offset
   untouched on the steps that do not pick it). Every model weight is frozen.
3. Adam (lr 1e-2), cosine annealing to 5e-4 over ``steps``, stepped every iteration.
4. Each step: one input view picked at random (seeded ``numpy`` generator); decode the Gaussians for the tracked
   expression code + offset with the 3D bias sink (``model.decode_frames``); render them from the input camera at
   the input resolution on white with the differentiable rasterizer (``flexrt.kernels.rasterize_differentiable``:
   gsplat on CUDA, the PyTorch reference elsewhere); loss = 0.8 L1 + 0.2 (1 - SSIM) + 1.0 SAM + 1.0 DINO on the
   unclamped render (SAM: a user-exported TorchScript feature module; each perceptual term is off without its
   weights).
5. Only the avatar code is the result (the offsets are returned for inspection).

PSNR before/after is measured on the inputs (renders clamped to [0, 1]): before = the initial code with the
tracked expressions, after = the fitted code with the fitted offsets. Intrinsics are normalised per axis (fx, cx
by the width; fy, cy by the height; ``flexrt.model.camera``); for the square crops of the official pipeline this
equals its "normalised intrinsics x image height".
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from flexrt.kernels import rasterize_differentiable, resolve_differentiable_backend, sh_dc_to_rgb
from flexrt.kernels.differentiable import DIFFERENTIABLE_BACKENDS
from flexrt.model.camera import pixel_intrinsics, viewmat_from_cam2world
from flexrt.model.gaussians import Gaussians

from .losses import (DinoFeatureLoss, SamFeatureLoss, load_dino_feature_loss, load_sam_feature_loss, photometric_loss,
                     psnr)

logger = logging.getLogger("flexrt.fitting")

EXPRESSION_DIM = 135
MIN_IMAGE_SIDE = 16  # the 11x11 SSIM window and the 16-px tiles need at least this much
PRECISIONS = ("fp32", "bf16")


class FitInputError(ValueError):
    """A problem with the observations or options given to a fit (one line, names the problem)."""


@dataclass
class FitConfig:
    """Fitting options; the defaults are the official ``FittingConfig`` (spec §9)."""

    steps: int = 200
    lr: float = 1e-2
    lr_min: float = 5e-4  # CosineAnnealingLR eta_min
    optimize_expression: bool = True  # per-view expression-code offsets
    seed: int = 0  # the view picked at each step
    lambda_l1: float = 0.8
    lambda_ssim: float = 0.2
    lambda_dino: float = 1.0  # used only when dino_weights is given
    lambda_sam: float = 1.0  # used only when sam_module is given
    # DINOv2-small weights for the DINO loss: dinov2_vits14_pretrain.pth, facebook/dinov2-small model.safetensors,
    # a state dict, or a loaded DinoFeatureLoss. None: the term is off (random weights would be noise).
    dino_weights: str | Path | Mapping[str, torch.Tensor] | DinoFeatureLoss | None = None
    # SAM feature module for the SAM loss: a TorchScript file (images [B,3,H,W] in [0,1] -> features; the user's
    # export of SAM2.1-hiera-small's image encoder -> image_embed) or a loaded SamFeatureLoss. None: the term is off.
    sam_module: str | Path | SamFeatureLoss | None = None
    rasterizer: str = "auto"  # "auto" | "torch" | "gsplat" (flexrt.kernels.rasterize_differentiable)
    precision: str = "fp32"  # "fp32" (official) | "bf16" (decoder under CUDA bf16 autocast; upsampler stays fp32)
    preview_every: int = 10  # progress gets a preview render every this many steps (and at the last step)

    def validate(self) -> "FitConfig":
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise FitInputError(f"steps must be a positive int, got {self.steps!r}")
        for name in ("lr", "lr_min", "lambda_l1", "lambda_ssim", "lambda_dino", "lambda_sam"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise FitInputError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0 or self.lr_min > self.lr:
            raise FitInputError(f"need 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")
        if self.rasterizer not in DIFFERENTIABLE_BACKENDS:
            raise FitInputError(f"rasterizer must be one of {DIFFERENTIABLE_BACKENDS}, got {self.rasterizer!r}")
        if self.precision not in PRECISIONS:
            raise FitInputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.preview_every, bool) or not isinstance(self.preview_every, int) or self.preview_every < 1:
            raise FitInputError(f"preview_every must be a positive int, got {self.preview_every!r}")
        return self


@dataclass
class FitResult:
    avatar_code: torch.Tensor  # [HT, D] float32, CPU
    losses: np.ndarray  # [steps_done] float64: the loss of every step
    psnr_before: float  # dB, mean over the input views
    psnr_after: float  # dB, mean over the input views
    expression_offsets: torch.Tensor  # [N, 135] float32, CPU (zeros when optimize_expression is off)
    psnr_before_per_view: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [N]
    psnr_after_per_view: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [N]
    views: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [steps_done] view per step
    steps_done: int = 0
    cancelled: bool = False
    rasterizer: str = ""  # the differentiable rasterizer backend that ran ("torch" | "gsplat")
    terms: dict[str, str] = field(default_factory=dict)  # loss term -> "on (weight w)" | "off: why"
    init: str = ""  # "init_code" | "feed-forward"
    initial_code: torch.Tensor | None = None  # [HT, D] float32, CPU: the code the fit started from
    seconds: float = 0.0

    def summary(self) -> str:
        terms = "; ".join(f"{k}: {v}" for k, v in self.terms.items())
        state = "cancelled after" if self.cancelled else "ran"
        return (f"fit {state} {self.steps_done} steps in {self.seconds:.1f} s ({self.rasterizer} rasterizer); "
                f"PSNR on the inputs {self.psnr_before:.2f} -> {self.psnr_after:.2f} dB; terms: {terms}")


# ---------------------------------------------------------------------------------------------- observations
@dataclass
class Observations:
    """Validated fitting inputs on the model's device, float32."""

    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    cam2world: torch.Tensor  # [N, 4, 4] OpenCV, head-centric
    intrinsics: torch.Tensor  # [N, 3, 3] normalised
    expression_codes: torch.Tensor  # [N, 135]

    @property
    def n(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:  # (H, W)
        return self.images.shape[-2], self.images.shape[-1]


def _as_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise FitInputError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        hint = " (divide uint8 images by 255)" if name == "images" else ""
        raise FitInputError(f"{name} must be floating point, got {x.dtype}{hint}")
    return x


def check_observations(images, cam2world, intrinsics, expression_codes, device=None) -> Observations:
    """Validate the observations (one FitInputError per problem, naming it) -> float32 tensors on ``device``."""
    images = _as_tensor("images", images)
    cam2world = _as_tensor("cam2world", cam2world)
    intrinsics = _as_tensor("intrinsics", intrinsics)
    expression_codes = _as_tensor("expression_codes", expression_codes)
    if images.dim() != 4 or images.shape[1] != 3:
        raise FitInputError(f"images must be [N,3,H,W] RGB, got shape {tuple(images.shape)}")
    n = images.shape[0]
    if n == 0:
        raise FitInputError("empty input: images has N=0 views; fitting needs at least one observation")
    shapes = {"cam2world": (cam2world, (4, 4)), "intrinsics": (intrinsics, (3, 3)),
              "expression_codes": (expression_codes, (EXPRESSION_DIM,))}
    for name, (t, tail) in shapes.items():
        if t.dim() != 1 + len(tail) or tuple(t.shape[1:]) != tail:
            raise FitInputError(f"{name} must be [N,{','.join(map(str, tail))}], got shape {tuple(t.shape)}")
        if t.shape[0] != n:
            raise FitInputError(f"mismatched N: images has {n} views but {name} has {t.shape[0]}")
    h, w = images.shape[-2:]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise FitInputError(f"images are {h}x{w}; fitting needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    for name, t in (("images", images), ("cam2world", cam2world), ("intrinsics", intrinsics),
                    ("expression_codes", expression_codes)):
        bad = ~torch.isfinite(t).reshape(n, -1).all(-1)
        if bool(bad.any()):
            raise FitInputError(f"{name} has NaN or Inf values (views {bad.nonzero()[:, 0].tolist()[:8]})")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise FitInputError(f"images must be in [0,1] (white background = 1), got values in [{lo:.3g}, {hi:.3g}]")
    c2w = cam2world.double()
    if bool((c2w[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=c2w.device)).abs().max() > 1e-4):
        raise FitInputError("cam2world must be rigid 4x4 matrices with last row [0,0,0,1]")
    rot = c2w[:, :3, :3]
    err = (rot.transpose(1, 2) @ rot - torch.eye(3, dtype=torch.float64, device=c2w.device)).abs().amax(dim=(1, 2))
    if bool((err > 1e-3).any()):
        raise FitInputError(f"cam2world rotations are not orthonormal (views {(err > 1e-3).nonzero()[:, 0].tolist()[:8]}; "
                            "expected OpenCV camera-to-world poses)")
    fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]
    if bool((fx <= 0).any() or (fy <= 0).any()):
        raise FitInputError("intrinsics must have fx, fy > 0 (normalised pinhole intrinsics, fx ~ 3 for a head crop)")
    if bool((fx > 1000).any()):
        raise FitInputError(f"intrinsics look like pixel intrinsics (fx up to {float(fx.max()):.0f}); pass them "
                            "normalised: divided by the image width (row 0) and height (row 1)")
    to = dict(device=device, dtype=torch.float32)
    return Observations(images.to(**to).contiguous(), cam2world.to(**to).contiguous(), intrinsics.to(**to).contiguous(),
                        expression_codes.to(**to).contiguous())


def _check_init_code(model, init_code) -> torch.Tensor:
    ht, d = model.num_head_tokens, model.hidden_dim
    code = init_code
    if isinstance(code, np.ndarray):
        code = torch.from_numpy(np.ascontiguousarray(code))
    if not isinstance(code, torch.Tensor) or not code.is_floating_point():
        raise FitInputError(f"init_code must be a float tensor [{ht},{d}], got {type(init_code).__name__}")
    if code.dim() == 3 and code.shape[0] == 1:
        code = code[0]
    if tuple(code.shape) != (ht, d):
        raise FitInputError(f"init_code must be [{ht},{d}] (this model's avatar code), got {tuple(init_code.shape)}")
    if not bool(torch.isfinite(code).all()):
        raise FitInputError("init_code has NaN or Inf values")
    return code


# ---------------------------------------------------------------------------------------------- rendering
def render_gaussians(g: Gaussians, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                     backend: str = "auto") -> torch.Tensor:
    """Gaussians [V, G, *] (raw SH-DC colours) seen by cameras viewmats [V, 4, 4], Ks [V, 3, 3] (pixels) on white
    -> rgb [V, 3, H, W], differentiable, not clamped."""
    white = torch.ones(3, dtype=g.positions.dtype, device=g.positions.device)
    rgb, _ = rasterize_differentiable(
        g.positions, g.rotations, g.scales, g.opacities[..., 0], sh_dc_to_rgb(g.colors),
        viewmats[:, None], Ks[:, None], width, height, background=white, backend=backend,
    )  # [V, 1, H, W, 3]
    return rgb[:, 0].permute(0, 3, 1, 2)


@torch.no_grad()
def render_views(model, avatar_code: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor,
                 expression_codes: torch.Tensor, width: int, height: int, backend: str = "auto",
                 chunk: int = 4) -> torch.Tensor:
    """Render an avatar code [HT, D] | [1, HT, D] for N (camera, expression) pairs: cam2world [N, 4, 4],
    intrinsics [N, 3, 3] normalised, expression_codes [N, 135] -> rgb [N, 3, H, W] in [0, 1] (clamped), on
    white, with the fitting renderer. For before/after comparisons and held-out views."""
    dev = next(model.parameters()).device
    code = avatar_code.reshape(1, model.num_head_tokens, model.hidden_dim).to(dev, torch.float32)
    backend = resolve_differentiable_backend(dev, backend)
    out = []
    for s in range(0, cam2world.shape[0], chunk):
        c2w = cam2world[s: s + chunk].to(dev, torch.float32)
        n = c2w.shape[0]
        g = model.decode_frames(code.expand(n, -1, -1), expression_codes[s: s + chunk].to(dev, torch.float32))
        view = viewmat_from_cam2world(c2w)
        K = pixel_intrinsics(intrinsics[s: s + chunk].to(dev, torch.float32), width, height)
        out.append(render_gaussians(g, view, K, width, height, backend).clamp(0.0, 1.0))
    return torch.cat(out)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """[3, H, W] float -> uint8 [H, W, 3] (clamped, rounded)."""
    return (rgb.detach().clamp(0.0, 1.0).permute(1, 2, 0) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------- one step
class FitProblem:
    """The pieces of one fitting step over validated observations (also used by benchmarks/bench_fitting.py to
    time them separately): ``decode`` -> ``render`` -> ``loss``."""

    def __init__(self, model, obs: Observations, config: FitConfig, dino_loss: DinoFeatureLoss | None,
                 sam_loss: SamFeatureLoss | None = None):
        self.model, self.obs, self.config = model, obs, config
        self.device = obs.images.device
        self.height, self.width = obs.size
        self.backend = resolve_differentiable_backend(self.device, config.rasterizer)
        if config.precision == "bf16" and self.device.type != "cuda":
            raise FitInputError("precision 'bf16' needs the model on CUDA; use precision 'fp32' on the CPU")
        self.viewmats = viewmat_from_cam2world(obs.cam2world)  # [N, 4, 4]
        self.Ks = pixel_intrinsics(obs.intrinsics, self.width, self.height)  # [N, 3, 3]
        self.dino_loss, self.sam_loss = dino_loss, sam_loss
        # the targets are fixed: their DINO / SAM features once, not every step
        self.target_dino = self._target_features(dino_loss, config.lambda_dino)
        self.target_sam = self._target_features(sam_loss, config.lambda_sam)

    @torch.no_grad()
    def _target_features(self, loss, weight: float) -> torch.Tensor | None:
        """The feature loss's features of every target image [N, ...], or None when the term is off."""
        if loss is None or weight <= 0:
            return None
        return torch.cat([loss.features(self.obs.images[i: i + 1]) for i in range(self.obs.n)])

    def decode(self, code: torch.Tensor, expression_codes: torch.Tensor) -> Gaussians:
        """code [1, HT, D], expression_codes [V, 135] -> Gaussians [V, G, *] (3D bias sink)."""
        v = expression_codes.shape[0]
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            return self.model.decode_frames(code.expand(v, -1, -1), expression_codes)

    def render(self, g: Gaussians, views: list[int]) -> torch.Tensor:
        """Gaussians [V, G, *] for the input views ``views`` -> rgb [V, 3, H, W] (unclamped)."""
        return render_gaussians(g, self.viewmats[views], self.Ks[views], self.width, self.height, self.backend)

    def loss(self, rgb: torch.Tensor, views: list[int]) -> torch.Tensor:
        """rgb [V, 3, H, W] against the targets of ``views`` -> scalar loss."""
        cfg, target = self.config, self.obs.images[views]
        loss = photometric_loss(rgb, target, cfg.lambda_l1, cfg.lambda_ssim)[0]
        if self.target_sam is not None:
            loss = loss + cfg.lambda_sam * self.sam_loss(rgb, target_features=self.target_sam[views])
        if self.target_dino is not None:
            loss = loss + cfg.lambda_dino * self.dino_loss(rgb, target_features=self.target_dino[views])
        return loss


def _perceptual_term(given, weight: float, lambda_name: str, cls, load, off: str, label: str, device):
    """A perceptual loss term from its FitConfig fields -> (loss module on ``device`` or None, term description)."""
    if given is None:
        return None, off
    if weight == 0:
        return None, f"off: {lambda_name} = 0"
    loss = given if isinstance(given, cls) else load(given)
    return loss.to(device), f"on (weight {weight:g}, {label} {loss.source})"


@torch.no_grad()
def feed_forward_code(model, dino, image: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """The feed-forward avatar code of one image: image [3, H, W] in [0, 1] (square; resized to the model's input
    size with antialiased bilinear), cam2world [4, 4], intrinsics [3, 3] normalised -> [1, HT, D]."""
    res = model.cfg.image_resolution
    h, w = image.shape[-2:]
    if h != w:
        raise FitInputError(f"the feed-forward initial code needs a square first image, got {h}x{w}; crop it or "
                            "pass init_code")
    x = image[None]
    if h != res:
        x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)
    features = dino(x)  # [1, C, h', w']
    return model.encode(x[:, None], cam2world[None, None], intrinsics[None, None], features[:, None])


# ---------------------------------------------------------------------------------------------- the fit
StepCallback = Callable[[int, torch.Tensor, int, torch.Tensor, torch.Tensor], Any]


def fit_avatar(model, images, cam2world, intrinsics, expression_codes, init_code=None, config: FitConfig = FitConfig(),
               dino=None, progress: Callable[[int, float, np.ndarray | None], Any] | None = None) -> FitResult:
    """Fit an avatar code to N observations with the decoder frozen (spec §9).

    model: FlexAvatarModel (``flexrt.model.load_official``); images [N, 3, H, W] float in [0, 1] on white;
    cam2world [N, 4, 4] OpenCV head-centric; intrinsics [N, 3, 3] normalised; expression_codes [N, 135] (tracked);
    init_code [HT, D] or None (then the feed-forward code of the first image, which needs ``dino``, the encoder's
    DINOv2 feature extractor, e.g. ``flexrt.model.pipeline.build_dino``).
    progress(step, loss, preview) is called after every step (step counts from 0; preview is a uint8 [H, W, 3]
    render every ``config.preview_every`` steps and at the last one, else None); returning False cancels, and
    the result then holds the code reached so far (``cancelled=True``).
    """
    on_step = None
    if progress is not None:
        every = config.preview_every

        def on_step(step, loss, view, rgb, target):
            last = step + 1 == config.steps
            preview = to_uint8(rgb) if (step + 1) % every == 0 or last else None
            return progress(step, float(loss), preview)

    return run_fit(model, images, cam2world, intrinsics, expression_codes, init_code, config, dino, on_step)


def run_fit(model, images, cam2world, intrinsics, expression_codes, init_code=None, config: FitConfig = FitConfig(),
            dino=None, on_step: StepCallback | None = None, cancel=None) -> FitResult:
    """``fit_avatar`` with a lower-level step hook: on_step(step, loss (0-dim tensor), view, rgb [3, H, W]
    (detached, unclamped), target [3, H, W]) -> False cancels. ``cancel``: a threading.Event checked every step."""
    t_start = time.perf_counter()
    config = FitConfig(**vars(config)).validate()  # a copy: the caller's config is never modified
    device = next(model.parameters()).device
    obs = check_observations(images, cam2world, intrinsics, expression_codes, device)
    if init_code is None and dino is None:
        raise FitInputError("init_code=None needs `dino` (the encoder's DINOv2 feature extractor, "
                            "flexrt.model.pipeline.build_dino) for the feed-forward initial code; or pass init_code")
    code0 = _check_init_code(model, init_code).to(device, torch.float32)[None] if init_code is not None else None
    dino_loss, dino_term = _perceptual_term(
        config.dino_weights, config.lambda_dino, "lambda_dino", DinoFeatureLoss, load_dino_feature_loss,
        "off: no DINOv2-small weights given (FitConfig.dino_weights / --dino-loss-weights)", "DINOv2-small", device)
    sam_loss, sam_term = _perceptual_term(
        config.sam_module, config.lambda_sam, "lambda_sam", SamFeatureLoss, load_sam_feature_loss,
        "off (no --sam-module / FitConfig.sam_module; SAM2.1 is not bundled)", "TorchScript module", device)
    terms = {"l1": f"on (weight {config.lambda_l1:g})", "ssim": f"on (weight {config.lambda_ssim:g}, as 1 - SSIM)",
             "dino": dino_term, "sam": sam_term}

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # the decoder is frozen: gradients reach only the code and the offsets
    try:
        # 1. initial avatar code
        if code0 is None:
            code0 = feed_forward_code(model, dino.to(device), obs.images[0], obs.cam2world[0], obs.intrinsics[0])
            init = "feed-forward"
        else:
            init = "init_code"
        problem = FitProblem(model, obs, config, dino_loss, sam_loss)
        logger.info("fitting %d view(s) at %dx%d for %d steps on %s; rasterizer %s; DINO: %s; SAM: %s", obs.n,
                    problem.width, problem.height, config.steps, device, problem.backend, dino_term, sam_term)
        zeros = torch.zeros(obs.n, EXPRESSION_DIM, device=device)
        before = psnr(render_views(model, code0, obs.cam2world, obs.intrinsics, obs.expression_codes, problem.width,
                                   problem.height, problem.backend), obs.images)

        # 2. parameters, optimiser, schedule
        code = torch.nn.Parameter(code0.detach().clone())  # [1, HT, D]
        offsets = [torch.nn.Parameter(torch.zeros(EXPRESSION_DIM, device=device)) for _ in range(obs.n)] \
            if config.optimize_expression else []
        optimizer = torch.optim.Adam([code, *offsets], lr=config.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr_min)
        rng = np.random.default_rng(config.seed)

        # 3. steps
        losses, views, cancelled = [], [], False
        with torch.enable_grad():
            for step in range(config.steps):
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                i = int(rng.integers(obs.n))
                expr = obs.expression_codes[i: i + 1]
                if offsets:
                    expr = expr + offsets[i][None]
                rgb = problem.render(problem.decode(code, expr), [i])  # [1, 3, H, W]
                loss = problem.loss(rgb, [i])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.detach())
                views.append(i)
                if on_step is not None and on_step(step, losses[-1], i, rgb[0].detach(), obs.images[i]) is False:
                    cancelled = True
                    break

        # 4. result
        fitted_offsets = torch.stack([o.detach() for o in offsets]) if offsets else zeros
        after = psnr(render_views(model, code.detach(), obs.cam2world, obs.intrinsics,
                                  obs.expression_codes + fitted_offsets, problem.width, problem.height,
                                  problem.backend), obs.images)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)
    result = FitResult(
        avatar_code=code.detach()[0].float().cpu(),
        losses=torch.stack(losses).double().cpu().numpy() if losses else np.zeros(0),
        psnr_before=float(before.mean()), psnr_after=float(after.mean()),
        expression_offsets=fitted_offsets.float().cpu(),
        psnr_before_per_view=before.double().cpu().numpy(), psnr_after_per_view=after.double().cpu().numpy(),
        views=np.asarray(views, dtype=np.int64), steps_done=len(losses), cancelled=cancelled,
        rasterizer=problem.backend, terms=terms, init=init, initial_code=code0.detach()[0].float().cpu(),
        seconds=time.perf_counter() - t_start,
    )
    logger.info("%s", result.summary())
    return result


__all__ = ["FitConfig", "FitResult", "FitInputError", "FitProblem", "Observations", "fit_avatar", "run_fit",
           "check_observations", "render_views", "render_gaussians", "feed_forward_code", "to_uint8"]
