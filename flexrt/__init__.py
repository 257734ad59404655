"""FlexAvatar Runtime.

One distribution, one import namespace. The repository's top-level folders install as:

    flexrt.model      model/      the FLEX-1 PyTorch model: the numerical truth (checkpoint I/O, template, DINOv2)
    flexrt.kernels    kernels/    Gaussian rasterizer: functional API, CPU reference, CuPy/CUDA kernels
    flexrt.export     export/     ONNX / TensorRT export, manifest, parity report
    flexrt.runtime    runtime/    engine backends, gRPC server and client, avatar store
    flexrt.proto      proto/      flexavatar.v1 service definition and generated stubs
    flexrt.benchmarks benchmarks/ latency benchmarks

Dependencies point one way: runtime -> export -> model; runtime -> kernels; kernels depends on nothing here.
"""

__version__ = "0.1.0"
