"""flexrt.fitting: avatar fitting -- optimise an avatar code against several photos or the frames of a monocular
video with the decoder frozen (spec §9; docs/FITTING.md).

    from flexrt.fitting import fit_avatar, FitConfig
    result = fit_avatar(model, images, cam2world, intrinsics, expression_codes,
                        init_code=None, config=FitConfig(), dino=None, progress=None)

Inputs come from a FLAME tracker (cameras and expression codes; Pixel3DMM in the official pipeline): the runtime
consumes tracked observations, it does not track (``flexrt.fitting.inputs``).
"""
from .fit import (
    FitConfig,
    FitInputError,
    FitProblem,
    FitResult,
    Observations,
    check_observations,
    feed_forward_code,
    fit_avatar,
    render_views,
    run_fit,
)
from .losses import DinoFeatureLoss, l1_loss, load_dino_feature_loss, psnr, ssim

__all__ = [
    "fit_avatar", "FitConfig", "FitResult", "FitInputError", "FitProblem", "Observations", "check_observations",
    "feed_forward_code", "render_views", "run_fit", "DinoFeatureLoss", "load_dino_feature_loss", "l1_loss", "ssim",
    "psnr",
]
