"""Engine backends behind one interface (see :mod:`flexrt.runtime.engines.base`)."""
from .base import Engine, EngineInfo

__all__ = ["Engine", "EngineInfo"]
