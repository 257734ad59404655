"""Model API: FLEX-1 layout, strict checkpoint loading, avatar-code files, input validation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexrt.model import load_avatar_code, load_official, save_avatar_code, save_state_dict
from flexrt.model.config import parse_config


@pytest.fixture(scope="session")
def flex1_model(shared_dir):
    """The FLEX-1-size model (182 M parameters), built once per test session, with the official template."""
    return load_official("flex1", template=shared_dir / "reference" / "assets" / "gghead_template.obj")


@pytest.fixture(scope="session")
def tiny_model():
    return load_official("tiny")


def test_flex1_state_dict_layout_matches_official(flex1_model, shared_dir):
    layout = json.loads((shared_dir / "reference" / "flex1" / "state_dict_layout.json").read_text())
    sd = flex1_model.state_dict()
    assert len(layout["keys"]) == 448
    assert list(sd.keys()) == [k["key"] for k in layout["keys"]]  # same names, same order
    for entry in layout["keys"]:
        assert list(sd[entry["key"]].shape) == entry["shape"], entry["key"]
        assert str(sd[entry["key"]].dtype) == "torch." + entry["dtype"]
    n_params = sum(p.numel() for p in flex1_model.parameters())
    assert n_params == layout["total_parameters"] == 182_410_142
    assert sum(v.numel() for v in sd.values()) == layout["total_state_dict_elements"]
    for sub, count in layout["parameters_per_submodule"].items():
        assert sum(p.numel() for n, p in flex1_model.named_parameters() if n.startswith(sub + ".") or n == sub) == count


def test_flex1_template_samples_equal_official(flex1_model, shared_dir):
    ref = np.load(shared_dir / "reference" / "flex1" / "template_samples.npz")
    assert flex1_model.num_gaussians == int(ref["G"]) == 58361
    np.testing.assert_array_equal(flex1_model._gaussian_decoder._uv_samples.numpy(), ref["uv_samples"])
    np.testing.assert_array_equal(flex1_model._head_transformer._initial_head_xyz.numpy(), ref["initial_head_xyz"])
    np.testing.assert_allclose(flex1_model._gaussian_decoder._initial_gaussian_positions.numpy(),
                               ref["initial_gaussian_positions"], rtol=0, atol=1e-7)


def test_flex1_strict_roundtrip_through_pt_and_safetensors(flex1_model, shared_dir, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_state_dict(flex1_model, path)
    template = shared_dir / "reference" / "flex1" / "template_samples.npz"
    again = load_official("flex1", state_dict=path, template=template)
    for (ka, va), (kb, vb) in zip(flex1_model.state_dict().items(), again.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_tiny_checkpoint_pt_roundtrip(tiny_model, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_model.state_dict(), path)
    again = load_official("tiny", state_dict=path)
    code = torch.randn(1, tiny_model.num_head_tokens, tiny_model.hidden_dim)
    expr = torch.randn(1, 2, 135)
    with torch.no_grad():
        a, b = tiny_model.animate(code, expr), again.animate(code, expr)
    for k in a.keys():
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize("mutation,message", [
    ("drop", "1 missing keys: _feature_projection.bias"),
    ("extra", "1 unexpected keys: extra.weight"),
    ("reshape", "1 mis-shaped keys: _feature_projection.bias"),
])
def test_bad_checkpoint_is_refused_with_named_keys(tiny_model, mutation, message):
    sd = dict(tiny_model.state_dict())
    if mutation == "drop":
        del sd["_feature_projection.bias"]
    elif mutation == "extra":
        sd["extra.weight"] = torch.zeros(3)
    else:
        sd["_feature_projection.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_official("tiny", state_dict=sd)


def test_non_plain_checkpoint_is_refused(tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {"a": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(ValueError, match="not a plain state_dict"):
        load_official("tiny", state_dict=path)


def test_avatar_code_npy_roundtrip_official_layout(tiny_model, tmp_path):
    ht, d = tiny_model.num_head_tokens, tiny_model.hidden_dim
    code = torch.randn(1, ht, d)
    path = tmp_path / "code.npy"
    save_avatar_code(code, path)
    raw = np.load(path)
    assert raw.shape == (ht, 1, d) and raw.dtype == np.float32  # sequence-first, as AvatarCodeManager saves
    np.testing.assert_array_equal(raw[:, 0], code[0].numpy())
    torch.testing.assert_close(load_avatar_code(path), code, rtol=0, atol=0)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"\(HT, 1, D\)"):
        load_avatar_code(tmp_path / "bad.npy")


def test_input_validation(tiny_model):
    ht, d = tiny_model.num_head_tokens, tiny_model.hidden_dim
    code = torch.zeros(2, ht, d)
    with pytest.raises(ValueError, match=r"expression_codes must be \[2,T,135\]"):
        tiny_model.animate(code, torch.zeros(2, 1, 134))
    with pytest.raises(ValueError, match=r"avatar_code must be"):
        tiny_model.animate(torch.zeros(2, ht + 1, d), torch.zeros(2, 1, 135))
    bad = torch.zeros(2, 1, 135)
    bad[1, 0, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny_model.animate(code, bad)
    with pytest.raises(ValueError, match="dataset_ids must be"):
        tiny_model.animate(code, torch.zeros(2, 1, 135), dataset_ids=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"images must be \[B,V,3,H,W\]"):
        tiny_model.encode(torch.zeros(1, 3, 512, 512), torch.eye(4)[None, None], torch.eye(3)[None, None],
                          torch.zeros(1, 1, 64, 16, 16))
    with pytest.raises(ValueError, match="features must be"):
        tiny_model.encode(torch.zeros(1, 1, 3, 512, 512), torch.eye(4)[None, None], torch.eye(3)[None, None],
                          torch.zeros(1, 1, 32, 16, 16))


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        parse_config("no-such-config")
    from flexrt.model.config import FLEX1_CONFIG
    import copy
    cfg = copy.deepcopy(FLEX1_CONFIG)
    cfg["use_plucker"] = False
    with pytest.raises(ValueError, match="use_plucker"):
        parse_config(cfg)
    cfg = copy.deepcopy(FLEX1_CONFIG)
    del cfg["gaussian_decoder"]["upscale_uv_texture"]
    with pytest.raises(ValueError, match="missing field"):
        parse_config(cfg)


def test_template_without_uvs_is_refused(tmp_path):
    obj = tmp_path / "nouv.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="(?i)uv"):
        load_official("tiny", template=obj)


def test_tiny_default_template_animates(tiny_model):
    ht, d = tiny_model.num_head_tokens, tiny_model.hidden_dim
    g = tiny_model.animate(torch.randn(2, ht, d), torch.randn(2, 3, 135))
    assert g.positions.shape == (2, 3, tiny_model.num_gaussians, 3)
    q = g.rotations.norm(dim=-1)
    torch.testing.assert_close(q, torch.ones_like(q))
    assert float(g.scales.max()) <= 0.01 and float(g.scales.min()) >= 0.0
    assert float((g.positions - tiny_model._gaussian_decoder._initial_gaussian_positions).abs().max()) < 0.1


def test_small_preset_shapes_and_size():
    """The `small` preset (docs/TRAINING.md, section 3): tiny at 16x16 tokens, 96 wide, a 128x128 Gaussian grid."""
    from flexrt.model import load_official

    cfg = parse_config("small")
    assert (cfg.res_head_tokens, cfg.d_hidden, cfg.res_uv_map, cfg.res_gaussian_grid) == (16, 96, 64, 128)
    model = load_official("small", None, None, seed=0)
    assert sum(p.numel() for p in model.parameters()) * 4 < 7_000_000  # 6.9 MB of fp32 weights
    code = torch.randn(1, model.num_head_tokens, model.hidden_dim)
    g = model.animate(code, torch.randn(1, 2, 135))
    assert model.num_head_tokens == 256 and g.positions.shape == (1, 2, model.num_gaussians, 3)
    assert model.num_gaussians == (128 - 2) ** 2  # G = (R - 2)^2 on the default template (test_template.py)
