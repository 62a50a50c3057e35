"""pydarknet: a Darknet-compatible deep-learning framework (C core, cffi, Python).

    import pydarknet
    net = pydarknet.load("yolov4-tiny.cfg", "yolov4-tiny.weights", names="coco.names")
    for d in net.detect("dog.jpg"):
        print(d.name, d.confidence, d.corners)
"""
from ._native import (DarknetError, blas_available, cpu_kernel, cuda_devices, set_cpu_kernel, set_tuning,
                      tuning_file, tuning_machine, version)
from .cfg import CfgError, CfgWarning, parse_cfg
from .detection import Detection, draw_detections
from .modelfile import ModelFileError, load_model, write_model
from .network import Layer, Network, load
from .onnx_export import OnnxExportError, export_onnx
from .video import VideoError, VideoSource, video_frames
from .weights import WeightsError, WeightsHeader

__version__ = "0.1.0"

__all__ = [
    "load", "Network", "Layer", "Detection", "draw_detections", "video_frames", "VideoSource", "VideoError",
    "parse_cfg", "CfgError", "CfgWarning",
    "DarknetError", "WeightsError", "WeightsHeader", "blas_available", "cpu_kernel", "cuda_devices", "set_cpu_kernel",
    "set_tuning", "tuning_file", "tuning_machine", "version",
    "load_model", "write_model", "ModelFileError", "export_onnx", "OnnxExportError",
]
