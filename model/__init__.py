"""The FLEX-1 PyTorch model: the numerical truth of the project.

    from flexrt.model import load_official
    model = load_official("flex1", state_dict="ckpt-900k.pt", template="gghead_template.obj")
    code = model.encode(images, cam2world, intrinsics, features)    # [B,HT,D]
    g = model.animate(code, expression_codes)                         # Gaussians [B,T,G,*]
"""
from .checkpoint import (
    avatar_code_from_numpy,
    check_state_dict,
    file_sha256,
    load_avatar_code,
    load_official,
    load_state_dict_file,
    save_avatar_code,
    save_state_dict,
)
from .config import PRESETS, FlexConfig, parse_config
from .flexavatar import DATASET_ID_2D, DATASET_ID_3D, FlexAvatarModel, plucker_embedding
from .gaussians import GAUSSIAN_ATTRIBUTES, Gaussians

__all__ = [
    "load_official", "FlexAvatarModel", "FlexConfig", "parse_config", "PRESETS", "Gaussians", "GAUSSIAN_ATTRIBUTES",
    "DATASET_ID_2D", "DATASET_ID_3D", "plucker_embedding", "load_avatar_code", "save_avatar_code",
    "avatar_code_from_numpy", "load_state_dict_file", "check_state_dict", "save_state_dict", "file_sha256",
]
