"""Graph-op bugs planted into the PyTorch builder (collected by tests/planted/bugs.py)."""
import importlib


def _leakyrelu_slope():
    # nn.LeakyReLU() with PyTorch's default negative_slope 0.01 instead of the node's alpha
    module = importlib.import_module("builders.pytorch")

    def op_leakyrelu(spec, node, **_options):
        import torch.nn as nn
        return nn.LeakyReLU()
    module.op_leakyrelu = op_leakyrelu


BUGS = {"leakyrelu-slope": _leakyrelu_slope}
