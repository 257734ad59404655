"""FlexAvatarModel: the FLEX-1 network with the official module names (strict checkpoint loading).

Public entry points (batch-first tensors):

    encode(images [B,V,3,H,W] in [0,1], cam2world [B,V,4,4] OpenCV, intrinsics [B,V,3,3] normalised,
           features [B,V,C,h,w] DINOv2 patch features)              -> avatar code [B,HT,D]
    animate(avatar_code [B,HT,D], expression_codes [B,T,135], dataset_ids [B] | [B,1] | None (= 3D sink))
                                                                      -> Gaussians, attributes [B,T,G,*]
    decode_frames(avatar_code [B,HT,D], expression_codes [B,135])     -> Gaussians [B,G,*] (3D sink; the engine graph)

Both accept ``intermediates=dict()`` to collect the stages under the golden fixture's names, in the official
(sequence-first where the official code is) layouts. See spec sections 4 and 5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import EXPRESSION_MLP_HIDDEN, FlexConfig
from .gaussians import Gaussians
from .layers import GPTEncoder, JointTransformer, PointEmbed
from .stylegan import StyleGANPixelShuffleUpsampler

DATASET_ID_2D = 0  # bias sink of monocular video sources ("2D")
DATASET_ID_3D = 1  # bias sink of multi-view studio data ("3D"): the inference default of the official scripts
MAX_XYZ_OFFSET_STEP = 0.2  # offset = (sigmoid(z) - 0.5) * 0.2, i.e. within (-0.1, 0.1)
MAX_SCALE = 0.01


def plucker_embedding(cam2world: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-pixel Plücker rays (o x d, d) -> [N, 6, H, W] (spec 3.3).

    cam2world [N, 4, 4] OpenCV; intrinsics [N, 3, 3] normalised. Pixel (row i, col j) sits at
    (j / (W-1), i / (H-1)): no +0.5 centre offset, division by W-1 and H-1, as in the official code.
    """
    dtype, device = torch.float32, cam2world.device
    c2w = cam2world.to(dtype)
    K = intrinsics.to(dtype)
    xs = torch.arange(width, dtype=dtype, device=device) / (width - 1)  # [W]
    ys = torch.arange(height, dtype=dtype, device=device) / (height - 1)  # [H]
    fx, fy = K[:, 0, 0].reshape(-1, 1, 1), K[:, 1, 1].reshape(-1, 1, 1)
    cx, cy = K[:, 0, 2].reshape(-1, 1, 1), K[:, 1, 2].reshape(-1, 1, 1)
    x = (xs.reshape(1, 1, width) - cx) / fx  # [N, 1, W]
    y = (ys.reshape(1, height, 1) - cy) / fy  # [N, H, 1]
    n = c2w.shape[0]
    dirs_cam = torch.stack(
        [x.expand(n, height, width), y.expand(n, height, width), torch.ones(n, height, width, dtype=dtype, device=device)],
        dim=-1,
    )  # [N, H, W, 3]
    rot = c2w[:, :3, :3]  # [N, 3, 3]
    dirs = torch.einsum("nij,nhwj->nhwi", rot, dirs_cam)
    dirs = F.normalize(dirs, dim=-1)
    origin = c2w[:, :3, 3].reshape(n, 1, 1, 3).expand_as(dirs)  # [N, H, W, 3]
    moment = torch.linalg.cross(origin, dirs, dim=-1)
    return torch.cat([moment, dirs], dim=-1).permute(0, 3, 1, 2)  # [N, 6, H, W]


class HeadTransformer(nn.Module):
    def __init__(self, cfg: FlexConfig):
        super().__init__()
        d, ht = cfg.d_hidden, cfg.num_head_tokens
        self._head_token_embeddings = nn.Parameter(torch.zeros(ht, 1, d))  # unused in FLEX-1, in the checkpoint
        self._query_point_embedder = PointEmbed(d)
        self._transformer = JointTransformer(d, cfg.n_heads, cfg.n_layers_head_transformer)
        h = EXPRESSION_MLP_HIDDEN
        self._expression_mlp = nn.Sequential(
            nn.Linear(cfg.d_expression_codes, h), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(h, h), nn.ReLU(), nn.Dropout(0.0),
            nn.Linear(h, cfg.n_expression_tokens * d), nn.Dropout(0.0),
        )
        self._expression_transformer = JointTransformer(d, cfg.n_heads, cfg.n_layers_expression_transformer)
        self._dataset_embedding = nn.Embedding(2, d)
        self.register_buffer("_initial_head_xyz", torch.zeros(1, ht, 3), persistent=False)  # [1, HT, 3]


class GSLayer(nn.Module):
    """Five linear heads on the sampled UV features (LAM GSLayer, SH degree 0, RGB)."""

    WIDTHS = {"shs": 3, "scaling": 3, "xyz": 3, "opacity": 1, "rotation": 4}

    def __init__(self, channels: int):
        super().__init__()
        self.out_layers = nn.ModuleDict({name: nn.Linear(channels, n) for name, n in self.WIDTHS.items()})


class GaussianDecoder(nn.Module):
    def __init__(self, cfg: FlexConfig, num_gaussians: int):
        super().__init__()
        self._mlp_decoder = GSLayer(cfg.gaussian_channels)
        self._stylegan_upsampler = StyleGANPixelShuffleUpsampler(
            cfg.d_hidden, cfg.res_head_tokens, cfg.num_upsampler_blocks,
            cfg.stylegan_channel_base, cfg.stylegan_channel_max,
        )
        self.register_buffer("_initial_gaussian_positions", torch.zeros(1, num_gaussians, 3), persistent=False)
        self.register_buffer("_uv_samples", torch.zeros(1, num_gaussians, 1, 2), persistent=False)


class FlexAvatarModel(nn.Module):
    def __init__(self, cfg: FlexConfig, num_gaussians: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_hidden
        self._conv_patchify = nn.Conv2d(9, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self._transformer_encoder = GPTEncoder(
            d, cfg.n_heads, cfg.n_layers_encoder, block_size=cfg.num_image_tokens, causal=cfg.use_causal_attention
        )
        self._head_transformer = HeadTransformer(cfg)
        self._gaussian_decoder = GaussianDecoder(cfg, num_gaussians)
        self._feature_projection = nn.Linear(d + cfg.feature_dim, d)

    # ------------------------------------------------------------------ sizes
    @property
    def num_gaussians(self) -> int:
        return self._gaussian_decoder._uv_samples.shape[1]

    @property
    def num_head_tokens(self) -> int:
        return self.cfg.num_head_tokens

    @property
    def hidden_dim(self) -> int:
        return self.cfg.d_hidden

    def set_template(self, initial_head_xyz: torch.Tensor, initial_gaussian_positions: torch.Tensor,
                     uv_samples: torch.Tensor) -> None:
        """Install the template buffers: [1,HT,3], [1,G,3], [1,G,1,2] (G may differ from construction)."""
        ht = self.cfg.num_head_tokens
        if tuple(initial_head_xyz.shape) != (1, ht, 3):
            raise ValueError(f"initial_head_xyz must be [1,{ht},3], got {tuple(initial_head_xyz.shape)}")
        g = initial_gaussian_positions.shape[1]
        if tuple(initial_gaussian_positions.shape) != (1, g, 3) or tuple(uv_samples.shape) != (1, g, 1, 2):
            raise ValueError(
                "template Gaussians must be [1,G,3] positions and [1,G,1,2] uv_samples, got "
                f"{tuple(initial_gaussian_positions.shape)} and {tuple(uv_samples.shape)}"
            )
        dev = self._conv_patchify.weight.device
        self._head_transformer._initial_head_xyz = initial_head_xyz.to(dev, torch.float32).contiguous()
        self._gaussian_decoder._initial_gaussian_positions = initial_gaussian_positions.to(dev, torch.float32).contiguous()
        self._gaussian_decoder._uv_samples = uv_samples.to(dev, torch.float32).contiguous()

    def template_buffers(self) -> dict[str, torch.Tensor]:
        """The installed template (the inverse of ``set_template``): initial_head_xyz [1,HT,3],
        initial_gaussian_positions [1,G,3], uv_samples [1,G,1,2] (template_samples.npz names)."""
        return {"initial_head_xyz": self._head_transformer._initial_head_xyz,
                "initial_gaussian_positions": self._gaussian_decoder._initial_gaussian_positions,
                "uv_samples": self._gaussian_decoder._uv_samples}

    def animation_parameters(self):
        """The parameters of stage (b), the Gaussian decoder (expression MLP and transformer, bias-sink
        embedding, upsampler, Gaussian heads); everything else belongs to stage (a), avatar creation."""
        return self._gaussian_decoder.parameters()

    # ------------------------------------------------------------------ stage (a): avatar creation
    def encode(self, images: torch.Tensor, cam2world: torch.Tensor, intrinsics: torch.Tensor,
               features: torch.Tensor, intermediates: dict | None = None) -> torch.Tensor:
        cfg = self.cfg
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B,V,3,H,W], got {tuple(images.shape)}")
        b, v, _, h, w = images.shape
        if v != cfg.n_input_views:
            raise ValueError(f"the model takes {cfg.n_input_views} input view(s), got V={v}")
        if (h, w) != (cfg.image_resolution, cfg.image_resolution):
            raise ValueError(f"images must be {cfg.image_resolution}x{cfg.image_resolution}, got {h}x{w}")
        if tuple(cam2world.shape) != (b, v, 4, 4):
            raise ValueError(f"cam2world must be [{b},{v},4,4], got {tuple(cam2world.shape)}")
        if tuple(intrinsics.shape) != (b, v, 3, 3):
            raise ValueError(f"intrinsics must be [{b},{v},3,3], got {tuple(intrinsics.shape)}")
        if features.dim() != 5 or tuple(features.shape[:3]) != (b, v, cfg.feature_dim):
            raise ValueError(
                f"features must be [{b},{v},{cfg.feature_dim},h,w] (DINOv2 patch features), got {tuple(features.shape)}"
            )
        d, r = cfg.d_hidden, cfg.res_image_tokens

        with torch.autocast(device_type=images.device.type, enabled=False):  # Plücker rays are float32 (spec 3.3)
            plucker = plucker_embedding(cam2world.reshape(b * v, 4, 4), intrinsics.reshape(b * v, 3, 3), h, w)
        x = torch.cat([images.reshape(b * v, 3, h, w).to(plucker.dtype), plucker], dim=1)  # [BV, 9, H, W]
        patches = self._conv_patchify(x)  # [BV, D, r, r]
        tokens = patches.reshape(b, v, d, r * r).permute(0, 1, 3, 2).reshape(b, v * r * r, d)  # (v h w) order
        encoded = self._transformer_encoder(tokens)  # [B, T_img, D]

        # DINO features, 16x16 -> r x r by bilinear grid_sample at linspace(-1, 1, r), zeros padding
        lin = torch.linspace(-1.0, 1.0, r, dtype=torch.float32, device=features.device)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(b * v, r, r, 2)  # [BV, r, r, 2] (x=col, y=row)
        feats = F.grid_sample(features.reshape(b * v, *features.shape[2:]).float(), grid,
                              mode="bilinear", padding_mode="zeros", align_corners=False)  # [BV, C, r, r]
        feats = feats.reshape(b, v, cfg.feature_dim, r * r).permute(0, 1, 3, 2).reshape(b, v * r * r, -1)
        context = self._feature_projection(torch.cat([encoded, feats], dim=-1))  # [B, T_img, D]

        ht_mod = self._head_transformer
        queries = ht_mod._query_point_embedder(ht_mod._initial_head_xyz)  # [1, HT, D]
        code = ht_mod._transformer(queries.expand(b, -1, -1), context)  # [B, HT, D]

        if intermediates is not None:
            seq = lambda t: t.transpose(0, 1)  # noqa: E731  [B, T, D] -> [T, B, D] (official layout)
            intermediates.update(
                plucker=plucker.reshape(b, v, 6, h, w),
                patch_tokens=patches.reshape(b, v, d, r, r),
                encoder_tokens=seq(encoded),
                resampled_features=seq(feats),
                feature_projection_output=seq(context),
                head_query_embeddings=queries,
                avatar_code=seq(code),
            )
        return code

    # ------------------------------------------------------------------ stage (b): per-frame animation
    def animate(self, avatar_code: torch.Tensor, expression_codes: torch.Tensor,
                dataset_ids: torch.Tensor | None = None, intermediates: dict | None = None) -> Gaussians:
        cfg = self.cfg
        ht, d = cfg.num_head_tokens, cfg.d_hidden
        if avatar_code.dim() != 3 or tuple(avatar_code.shape[1:]) != (ht, d):
            raise ValueError(f"avatar_code must be [B,{ht},{d}], got {tuple(avatar_code.shape)}")
        b = avatar_code.shape[0]
        if expression_codes.dim() != 3 or expression_codes.shape[0] != b or expression_codes.shape[2] != cfg.d_expression_codes:
            raise ValueError(
                f"expression_codes must be [{b},T,{cfg.d_expression_codes}], got {tuple(expression_codes.shape)}"
            )
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(expression_codes).all()):
            raise ValueError("expression_codes contain NaN or Inf")
        t = expression_codes.shape[1]
        ids = self._dataset_ids(dataset_ids, b, avatar_code.device)  # [B, 1] int64
        gaussians = self._decode(avatar_code, expression_codes.reshape(b * t, -1), ids, t, intermediates)
        return gaussians.map(lambda x: x.reshape(b, t, *x.shape[1:]))

    def decode_frames(self, avatar_code: torch.Tensor, expression_codes: torch.Tensor) -> Gaussians:
        """One frame per person with the 3D bias sink: [B,HT,D], [B,135] -> Gaussians [B,G,*] (no checks, no syncs)."""
        b = avatar_code.shape[0]
        ids = torch.full((b, 1), DATASET_ID_3D, dtype=torch.long, device=avatar_code.device)
        return self._decode(avatar_code, expression_codes, ids, 1, None)

    def deploy_decoder(self, precision: str = "fp32", fp8: str = "off", upsampler: str = "fp32",
                       residual: str = "fp32", fused_qkv: bool = True, residual_gemm: str = "epilogue") -> nn.Module:
        """The per-frame decoder specialised for serving (model/deploy.py): same function as ``decode_frames``, fused
        projections, weights in ``precision`` (optionally FP8 GEMMs "row" / "static", a bf16 upsampler, a bf16
        residual stream; with fp8="fused", ``fused_qkv``: the q|k|v GEMM and its head norms in one kernel where the
        device runs it; ``residual_gemm``: how to_out / ff_out add the residual, model/deploy.py). This model is
        unchanged."""
        from .deploy import DeployedFrameDecoder

        return DeployedFrameDecoder(self, precision=precision, fp8=fp8, upsampler=upsampler, residual=residual,
                                    fused_qkv=fused_qkv, residual_gemm=residual_gemm)

    def _dataset_ids(self, dataset_ids, b: int, device) -> torch.Tensor:
        if dataset_ids is None:
            return torch.full((b, 1), DATASET_ID_3D, dtype=torch.long, device=device)
        ids = torch.as_tensor(dataset_ids, device=device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(1)
        if tuple(ids.shape) != (b, 1):
            raise ValueError(f"dataset_ids must be [{b}] or [{b},1], got {tuple(ids.shape)}")
        if ids.is_floating_point() or bool(((ids != DATASET_ID_2D) & (ids != DATASET_ID_3D)).any()):
            raise ValueError("dataset_ids must be integers 0 (2D sink) or 1 (3D sink)")
        return ids.long()

    def _decode(self, avatar_code, expr, ids, t: int, intermediates: dict | None) -> Gaussians:
        # avatar_code [B, HT, D], expr [B*T, 135], ids [B, 1]; frames of one person are contiguous (b*T + t)
        cfg, htm, gd = self.cfg, self._head_transformer, self._gaussian_decoder
        b, ht, d = avatar_code.shape
        bt = b * t
        expr_mlp = htm._expression_mlp(expr.to(avatar_code.dtype))  # [BT, n_tok * D]
        expr_tokens = expr_mlp.reshape(bt, cfg.n_expression_tokens, d)
        if cfg.use_dataset_ids:
            ds = htm._dataset_embedding(ids)  # [B, 1, D]
            context = torch.cat([ds.repeat_interleave(t, dim=0), expr_tokens], dim=1)  # [BT, 1+n_tok, D]
        else:
            ds, context = None, expr_tokens
        sample = avatar_code.repeat_interleave(t, dim=0) if t > 1 else avatar_code  # [BT, HT, D]
        out = htm._expression_transformer(sample, context)  # [BT, HT, D]
        r = cfg.res_head_tokens
        uv_map = out.transpose(1, 2).reshape(bt, d, r, r)  # token = row * r + col
        with torch.autocast(device_type=uv_map.device.type, enabled=False):  # fp32 even under bf16 autocast
            img = gd._stylegan_upsampler(uv_map.float(), intermediates)  # [BT, Cg, 4r, 4r]
        grid = gd._uv_samples.expand(bt, -1, -1, -1)  # [BT, G, 1, 2]
        feats = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = feats.flatten(2).transpose(1, 2)  # [BT, Cg, G, 1] -> [BT, G, Cg]
        heads = gd._mlp_decoder.out_layers
        colors = heads["shs"](feats)
        scales = torch.exp(heads["scaling"](feats)).clamp(0.0, MAX_SCALE)
        offsets = (torch.sigmoid(heads["xyz"](feats)) - 0.5) * MAX_XYZ_OFFSET_STEP
        opacities = torch.sigmoid(heads["opacity"](feats))
        rotations = F.normalize(heads["rotation"](feats), dim=-1)
        positions = gd._initial_gaussian_positions + offsets
        if intermediates is not None:
            intermediates.update(
                expression_mlp_output=expr_mlp.reshape(b, t, -1),
                dataset_embedding_output=ds,
                expression_context_tokens=context.transpose(0, 1),
                expression_transformer_input=sample.transpose(0, 1),
                expression_transformer_output=out.transpose(0, 1),
                uv_feature_map=uv_map,
                upsampled_uv_feature_map=img,
                sampled_uv_features=feats,
                xyz_offsets=offsets,
            )
        return Gaussians(positions=positions.float(), scales=scales.float(), rotations=rotations.float(),
                         colors=colors.float(), opacities=opacities.float())
