"""Engine export: ONNX (fp32, fp16) and TensorRT FP16 graphs of the encoder and decoder, with a manifest.

    from flexrt.export import export_engines
    manifest = export_engines("tiny", out_dir="engines")
"""
from .build import export_engines
from .manifest import ManifestError, read_manifest, verify_file

__all__ = ["export_engines", "read_manifest", "verify_file", "ManifestError"]
