"""Export formats (one table); importing this package registers ONNX and TorchScript."""

# registration order = the order of --format's and --backend's choices
from . import onnx_file, torchscript_file  # noqa: F401, I001
from .registry import (EXPORT_FORMAT, EXPORT_FORMATS, EXPORT_VERSION, INPUT, OUTPUTS, ExportFormat, export_backends, export_format, format_of,
                       format_of_backend, load_export, p_covid, preprocessing_of, read_metadata,
                       register_export_format, set_metadata)

__all__ = ["EXPORT_FORMAT", "EXPORT_FORMATS", "EXPORT_VERSION", "INPUT", "OUTPUTS", "ExportFormat", "export_backends", "export_format", "format_of",
           "format_of_backend", "load_export", "p_covid", "preprocessing_of", "read_metadata",
           "register_export_format", "set_metadata"]
