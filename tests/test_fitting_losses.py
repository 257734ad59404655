"""Fitting losses: SSIM against an independent per-pixel implementation, closed forms and scikit-image; the DINOv2
feature loss against Hugging Face transformers' Dinov2Model (same ViT-S/14 architecture, random weights) and its
preprocessing against torch's own interpolation; strict weight loading; the SAM feature loss over a real
TorchScript module against its eager original."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flexrt.fitting.losses import (
    DINOV2_SMALL,
    SSIM_C1,
    SSIM_C2,
    DinoFeatureLoss,
    _dino_resize_crop,
    convert_hf_dinov2_state_dict,
    l1_loss,
    load_dino_feature_loss,
    load_sam_feature_loss,
    psnr,
    ssim,
    ssim_map,
)
from flexrt.model.dinov2 import DinoV2Config, DinoVisionTransformer
from fitting_helpers import write_feature_module


# ----------------------------------------------------------------------------------------------- SSIM
def _naive_ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two [C, H, W] float64 images written plainly: for every pixel an explicit 11x11 window
    of Gaussian weights (sigma 1.5, normalised over the full window) over the zero-padded images."""
    c, h, w = x.shape
    r = 5
    t = np.arange(-r, r + 1, dtype=np.float64)
    g1 = np.exp(-t * t / (2 * 1.5 * 1.5))
    win = np.outer(g1, g1)
    win /= win.sum()
    xp = np.pad(x, ((0, 0), (r, r), (r, r)))
    yp = np.pad(y, ((0, 0), (r, r), (r, r)))
    out = np.zeros_like(x)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                a = xp[ch, i: i + 2 * r + 1, j: j + 2 * r + 1]
                b = yp[ch, i: i + 2 * r + 1, j: j + 2 * r + 1]
                mx, my = (win * a).sum(), (win * b).sum()
                vx = (win * a * a).sum() - mx * mx
                vy = (win * b * b).sum() - my * my
                cxy = (win * a * b).sum() - mx * my
                out[ch, i, j] = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / (
                    (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2))
    return out


def test_ssim_equals_naive_per_pixel_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 19, 23, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.randn(2, 3, 19, 23, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim_map(x, y)
    ref = np.stack([_naive_ssim_map(x[b].numpy(), y[b].numpy()) for b in range(2)])
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)
    assert float(ssim(x, y)) == pytest.approx(ref.mean(), abs=1e-12)
    # float32 (what fitting runs) stays within 1e-5 of the float64 values
    np.testing.assert_allclose(ssim_map(x.float(), y.float()).numpy(), ref, rtol=0, atol=1e-5)


def test_ssim_closed_forms():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 40, 40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)
    inner = (slice(None), slice(None), slice(5, -5), slice(5, -5))  # pixels whose window sees no padding
    # constant images a, b: the structure term is C2/C2 = 1, SSIM = (2ab + C1) / (a² + b² + C1)
    a, b = 0.3, 0.7
    m = ssim_map(torch.full_like(x, a), torch.full_like(x, b))[inner]
    torch.testing.assert_close(m, torch.full_like(m, (2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1)), rtol=0, atol=1e-12)
    # a constant shift y = x + c leaves the (co)variances equal: SSIM = luminance term of the local means
    c = 0.1
    y = x + c
    k = torch.exp(-torch.arange(-5, 6, dtype=torch.float64) ** 2 / (2 * 1.5**2))
    k2 = torch.outer(k, k) / torch.outer(k, k).sum()
    mu = F.conv2d(x.reshape(3, 1, 40, 40), k2[None, None], padding=5).reshape(1, 3, 40, 40)
    expect = (2 * mu * (mu + c) + SSIM_C1) / (mu * mu + (mu + c) ** 2 + SSIM_C1)
    torch.testing.assert_close(ssim_map(x, y)[inner], expect[inner], rtol=0, atol=1e-10)


def test_ssim_matches_scikit_image_inside_the_border():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image (dev extra) is the external SSIM oracle")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 48, 40, generator=g, dtype=torch.float64)
    y = (0.7 * x + 0.3 * torch.rand(3, 48, 40, generator=g, dtype=torch.float64))
    _, full = skm.structural_similarity(x.numpy(), y.numpy(), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0, channel_axis=0, full=True)
    ours = ssim_map(x[None], y[None])[0].numpy()
    # scikit-image filters with reflected borders, 3DGS with zero padding: compare where no window touches a border
    np.testing.assert_allclose(ours[:, 5:-5, 5:-5], full[:, 5:-5, 5:-5], rtol=0, atol=1e-12)


def test_l1_and_psnr():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.1)
    assert float(l1_loss(x, y)) == pytest.approx(0.1)
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0), rtol=0, atol=1e-4)  # MSE 0.01 -> 20 dB
    # renders are clamped to [0, 1] first; a perfect match is capped at 120 dB (MSE floor 1e-12)
    torch.testing.assert_close(psnr(y + 5.0, torch.ones_like(y)), torch.full((2,), 120.0))


# ----------------------------------------------------------------------------------------------- DINO
def _random_vits14(seed: int = 0) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    return DinoVisionTransformer(DINOV2_SMALL).eval()


def test_dino_resize_crop_matches_torch_interpolate():
    g = torch.Generator().manual_seed(3)
    for h, w in ((512, 512), (256, 256), (300, 200), (96, 160)):
        x = torch.rand(2, 3, h, w, generator=g)
        got = _dino_resize_crop(x, 512, 504)
        # torchvision Resize(512, BICUBIC) on a tensor: shorter side 512, F.interpolate(bicubic, antialias=True)
        nh, nw = (512, int(512 * w / h)) if h <= w else (int(512 * h / w), 512)
        ref = x if (nh, nw) == (h, w) else F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False,
                                                           antialias=True)
        ref = ref[..., 4: nh - 4, 4: nw - 4]  # Pad(-4 per side)
        top, left = int(round((ref.shape[-2] - 504) / 2.0)), int(round((ref.shape[-1] - 504) / 2.0))
        ref = ref[..., top: top + 504, left: left + 504]  # CenterCrop(504)
        assert got.shape == (2, 3, 504, 504)
        torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)


def test_dino_features_match_transformers_dinov2():
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) is the DINOv2 oracle")
    cfg = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518,
                                    patch_size=14, layerscale_value=1.0)
    torch.manual_seed(0)
    hf = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():  # layer scales away from their init value, so a swapped ls1/ls2 would show
        for layer in hf.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.5, 1.5)
            layer.layer_scale2.lambda1.uniform_(0.5, 1.5)
    sd = {k: v.clone() for k, v in hf.state_dict().items()}
    loss = load_dino_feature_loss(sd)
    # the released facebook/dinov2-small files spell the attention keys the transformers < 5 way: same weights
    legacy = {k.replace("attention.q_proj", "attention.attention.query").replace("attention.k_proj", "attention.attention.key")
              .replace("attention.v_proj", "attention.attention.value").replace("attention.o_proj", "attention.output.dense"): v
              for k, v in sd.items()}
    for k, v in load_dino_feature_loss(legacy).vit.state_dict().items():
        assert torch.equal(v, loss.vit.state_dict()[k]), k
    g = torch.Generator().manual_seed(4)
    images = F.avg_pool2d(torch.rand(2, 3, 512, 512, generator=g), 9, 1, 4)  # smooth, in [0, 1]
    with torch.no_grad():
        ours = loss.features(images)
        pix = (images[..., 4:508, 4:508] - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        states = hf(pixel_values=pix, output_hidden_states=True).hidden_states
        ref = torch.cat([states[i] for i in (5, 8, 11)], dim=1)
    assert ours.shape == ref.shape == (2, 3 * (1 + 36 * 36), 384)
    err = (ours - ref).abs().max() / ref.abs().max()
    print(f"DINO loss features vs transformers {transformers.__version__}: max rel err {float(err):.2e}")
    assert err < 1e-4


def test_dino_loss_gradients_reach_the_render_only():
    # a 2-block ViT keeps this quick; the full ViT-S/14 is checked against transformers above
    torch.manual_seed(0)
    small = DinoVisionTransformer(DinoV2Config(embed_dim=64, depth=2, num_heads=4, num_register_tokens=0))
    loss = DinoFeatureLoss(small, layers=(1, 2))
    g = torch.Generator().manual_seed(5)
    target = torch.rand(1, 3, 64, 64, generator=g)
    render = torch.rand(1, 3, 64, 64, generator=g, requires_grad=True)
    value = loss(render, target)
    torch.testing.assert_close(value, (loss.features(render) - loss.features(target)).abs().mean())
    value.backward()
    assert render.grad is not None and float(render.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    assert float(loss(target, target)) == 0.0


def test_dino_weights_load_strictly(tmp_path):
    vit = _random_vits14(1)
    hub = {k: v.clone() for k, v in vit.state_dict().items()}
    loaded = load_dino_feature_loss(hub)
    for k, v in loaded.vit.state_dict().items():
        assert torch.equal(v, hub[k])
    from safetensors.torch import save_file

    save_file(hub, str(tmp_path / "vits14.safetensors"))
    assert load_dino_feature_loss(tmp_path / "vits14.safetensors").source == "file:vits14.safetensors"
    with pytest.raises(ValueError, match="missing keys"):
        load_dino_feature_loss({k: v for k, v in hub.items() if k != "blocks.3.mlp.fc1.weight"})
    with pytest.raises(ValueError, match="unexpected keys"):
        load_dino_feature_loss({**hub, "register_tokens": torch.zeros(1, 4, 384)})
    vitb = DinoVisionTransformer().state_dict()  # ViT-B/14-reg weights are not ViT-S/14
    with pytest.raises(ValueError, match="do not fit ViT-S/14"):
        load_dino_feature_loss(vitb)
    with pytest.raises(FileNotFoundError):
        load_dino_feature_loss(tmp_path / "missing.pth")


def test_hf_conversion_refuses_leftovers():
    sd = {"embeddings.cls_token": torch.zeros(1, 1, 384), "pooler.dense.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="lacks"):
        convert_hf_dinov2_state_dict(sd, depth=12)


# ----------------------------------------------------------------------------------------------- SAM
def test_sam_feature_loss_runs_a_torchscript_module(tmp_path):
    """A stand-in module (no SAM2.1 export exists here): the loss is the L1 between the eager module's features of
    render and target; gradients reach the render, never the module."""
    net = write_feature_module(tmp_path / "features.pt")
    loss = load_sam_feature_loss(tmp_path / "features.pt")
    assert loss.source == str(tmp_path / "features.pt")
    g = torch.Generator().manual_seed(6)
    target = torch.rand(2, 3, 32, 32, generator=g)
    render = torch.rand(2, 3, 32, 32, generator=g, requires_grad=True)
    value = loss(render, target)
    with torch.no_grad():
        expect = (net(render) - net(target)).abs().mean()
    torch.testing.assert_close(value.detach(), expect, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss(render, target_features=loss.features(target)), value)
    value.backward()
    assert render.grad is not None and float(render.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    assert float(loss(target, target)) == 0.0
    with pytest.raises(ValueError, match=r"images must be \[B,3,H,W\]"):
        loss(render[:, :2], target[:, :2])


def test_sam_module_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="SAM feature module not found") as info:
        load_sam_feature_loss(tmp_path / "missing.pt")
    assert "\n" not in str(info.value) and "TorchScript" in str(info.value)
    (tmp_path / "weights.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(ValueError, match="is not a TorchScript file") as info:
        load_sam_feature_loss(tmp_path / "weights.pt")
    assert "\n" not in str(info.value)
    torch.jit.save(torch.jit.script(torch.nn.Flatten(0)), str(tmp_path / "flat.pt"))  # [B,3,H,W] -> [B*3*H, W]
    with pytest.raises(ValueError, match=r"expected one tensor \[B, ...\] for 2 image\(s\)"):
        load_sam_feature_loss(tmp_path / "flat.pt").features(torch.rand(2, 3, 8, 8))
