"""ONNX export of the encoder and decoder graphs, and their fp16 variants.

- TorchScript-based exporter (``dynamo=False``), opset 17 by default, dynamic batch axis ``B``, constant folding
  on: the StyleGAN modulation/demodulation (``ws`` is always zero) folds into constant conv weights, and the
  template positions and UV samples become initializers.
- Graphs over 2 GB are saved with external data (``<name>.onnx.data``); FLEX-1's are about 0.5-0.7 GB.
- fp16: ``onnxruntime.transformers.float16`` converts weights and activations to fp16 with fp32 inputs/outputs,
  keeping in fp32 the ops listed in :data:`FP16_KEEP_FP32_OPS` (chosen by measurement: see docs/EXPORT.md).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from flexrt.model.pipeline import DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, Pipeline

DEFAULT_OPSET = 17
TWO_GB = 2**31
# Ops kept in fp32 in the fp16 graphs: normalisations (LayerNormalization, and the RMSNorm / demodulation
# reductions), attention softmax, and the final activations (exp of scales, sigmoids of offsets/opacities).
FP16_KEEP_FP32_OPS = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Reciprocal", "Softmax", "Exp", "Sigmoid",
                      "GridSample", "Einsum", "Sin", "Cos", "Range"]


def _save(model_proto: onnx.ModelProto, path: Path) -> list[str]:
    """Save, with external data when the graph is over 2 GB; returns the external-data file names."""
    if model_proto.ByteSize() >= TWO_GB or sum(t.ByteSize() for t in model_proto.graph.initializer) >= TWO_GB:
        data_name = path.name + ".data"
        onnx.save_model(model_proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        return [data_name]
    onnx.save_model(model_proto, str(path))
    return []


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, opset: int) -> list[str]:
    tmp = path.with_suffix(".tmp.onnx")
    dynamic = {n: {0: "B"} for n in (*input_names, *output_names)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python-int shape checks; shapes are static but B
        torch.onnx.export(module, args, str(tmp), dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic, do_constant_folding=True)
    proto = onnx.load(str(tmp), load_external_data=True)
    for f in tmp.parent.glob(tmp.name + "*"):
        f.unlink()
    extra = _save(proto, path)
    onnx.checker.check_model(str(path))
    return extra


def example_encoder_inputs(batch: int, image_size: int = 512):
    from flexrt.model.camera import default_camera

    c2w, K = default_camera()
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 3, image_size, image_size, generator=g), c2w.expand(batch, 4, 4).clone(),
            K.expand(batch, 3, 3).clone())


def example_decoder_inputs(batch: int, ht: int, d: int):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, ht, d, generator=g), torch.randn(batch, 135, generator=g) * 0.5)


def export_encoder(pipeline: Pipeline, path: Path, opset: int = DEFAULT_OPSET) -> list[str]:
    return _export(pipeline.encoder, example_encoder_inputs(2), path, ENCODER_INPUTS, ENCODER_OUTPUTS, opset)


def export_decoder(pipeline: Pipeline, path: Path, opset: int = DEFAULT_OPSET) -> list[str]:
    m = pipeline.model
    args = example_decoder_inputs(2, m.num_head_tokens, m.hidden_dim)
    return _export(pipeline.decoder, args, path, DECODER_INPUTS, DECODER_OUTPUTS, opset)


def convert_fp16(src: Path, dst: Path, keep_fp32_ops: list[str] | None = None) -> list[str]:
    """fp32 ONNX -> fp16 ONNX with fp32 inputs/outputs and fp32 islands for ``keep_fp32_ops``."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src), load_external_data=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the model has values out of fp16 range" warnings are reported by parity
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                        op_block_list=FP16_KEEP_FP32_OPS if keep_fp32_ops is None else keep_fp32_ops)
    _drop_duplicate_casts(half.graph)  # some onnxruntime versions emit the same Cast twice (an SSA violation)
    _toposort(half.graph)  # the converter appends its input casts at the end of the node list
    extra = _save(half, dst)
    onnx.checker.check_model(str(dst))
    return extra


def _drop_duplicate_casts(graph: onnx.GraphProto) -> None:
    producers: dict[str, onnx.NodeProto] = {}
    kept = []
    for node in graph.node:
        dup = [o for o in node.output if o in producers]
        if dup:
            prev = producers[dup[0]]
            if node.op_type == "Cast" and prev.op_type == "Cast" and list(prev.input) == list(node.input) \
                    and list(prev.attribute) == list(node.attribute):
                continue  # an identical Cast of the same value: keep the first
            raise ValueError(f"fp16 conversion produced {dup[0]!r} twice from different nodes")
        producers.update({o: node for o in node.output})
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically (stable: keeps the original order where dependencies allow)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed, rest = False, []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise ValueError(f"graph has a cycle or undefined inputs at node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def graph_io(path: Path) -> dict[str, list[dict]]:
    """Tensor names, shapes (symbolic dims as names) and dtypes of a saved graph."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output), "opset": model.opset_import[0].version}
