"""Engine backends behind one interface (see :mod:`flexrt.runtime.engines.base`).

    from flexrt.runtime.engines import load_engine
    engine = load_engine("engines/", backend="auto", device="auto")
    code = engine.encode(images, cam2world, intrinsics)        # [B,HT,D]
    g = engine.decode(code, expression_codes)                   # Gaussians [B,G,*]
"""
from .base import Engine, EngineInfo
from .loader import BACKENDS, load_engine
from .torch_engine import TorchEngine

__all__ = ["Engine", "EngineInfo", "TorchEngine", "load_engine", "BACKENDS"]
