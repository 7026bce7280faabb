"""Graph-op bugs planted into the PyTorch builder (collected by tests/planted/bugs.py)."""
import importlib


def _leakyrelu_slope():
    # nn.LeakyReLU() with PyTorch's default negative_slope 0.01 instead of the node's alpha
    module = importlib.import_module("builders.pytorch")

    def op_leakyrelu(spec, node, **_options):
        import torch.nn as nn
        return nn.LeakyReLU()
    module.op_leakyrelu = op_leakyrelu


def _lrn_alpha():
    # alpha multiplied by size, TensorFlow's convention ported to nn.LocalResponseNorm, which divides by size itself
    module = importlib.import_module("builders.pytorch")

    def op_lrn(spec, node, **_options):
        import torch.nn as nn
        a = node.attrs
        return nn.LocalResponseNorm(a["size"], alpha=a["alpha"] * a["size"], beta=a["beta"], k=a["bias"])
    module.op_lrn = op_lrn


def _depthtospace_mode():
    # nn.PixelShuffle for every DepthToSpace: PyTorch's CRD order also for ONNX's default DCR
    module = importlib.import_module("builders.pytorch")

    def op_depthtospace(spec, node, **_options):
        import torch.nn as nn
        return nn.PixelShuffle(node.attrs["blocksize"])
    module.op_depthtospace = op_depthtospace


BUGS = {"leakyrelu-slope": _leakyrelu_slope, "lrn-alpha": _lrn_alpha, "pytorch-depthtospace-mode": _depthtospace_mode}
