"""ONNX files, run by onnxruntime on the CPU (extra [onnx]); metadata in the model's metadata_props."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..errors import CrossSiteError, require_extra
from .registry import INPUT, METADATA_KEY, ExportFormat, register_export_format

ONNX_OPSET = 17


def import_onnxruntime():
    return require_extra("onnxruntime", "the onnxruntime backend", "onnx")


def check_installed() -> None:
    """Writing needs onnx (the metadata) and onnxruntime (the agreement check runs the file)."""
    require_extra("onnx", "ONNX export", "onnx")
    import_onnxruntime()


def write_onnx(model, example, path: Path) -> None:
    import torch

    outputs = list(model.outputs)

    with warnings.catch_warnings():  # the legacy exporter's deprecation note and the input check's trace note
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter (dynamo=False): the dynamo one needs onnxscript, another dependency
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]},
                          opset_version=ONNX_OPSET, dynamo=False)


def set_metadata(path: Path, text: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.save(proto, str(path))


def load(path: Path, threads: int | None = None):
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime has its own exception types for a file that is not ONNX
        raise CrossSiteError(f"{path}: not a crosssite export (not an ONNX file)") from None
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return (lambda x: session.run(None, {INPUT: x})), text


ONNX = register_export_format(ExportFormat(
    name="onnx", backend="onnxruntime", files="ONNX exports (.onnx)", suffix=".onnx",
    recognizes=lambda path: path.suffix == ".onnx", write=write_onnx, set_metadata=set_metadata, load=load,
    check_installed=check_installed))
