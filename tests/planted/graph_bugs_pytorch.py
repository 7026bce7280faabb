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



def _selu_constants_rounded():
    # SELU written out with the paper's four decimals (alpha 1.6733, lambda 1.0507) instead of the node's values:
    # off by 2e-5 of the negative side, 1.2e-5 of the node's range, below the fixed bound of 1e-4
    module = importlib.import_module("builders.pytorch")

    def op_selu(spec, node, **_options):
        import torch.nn as nn

        class PaperSelu(nn.Module):
            def forward(self, x):
                return 1.0507 * nn.functional.elu(x, 1.6733)
        return PaperSelu()
    module.op_selu = op_selu


def _tile_as_repeat_interleave():
    # ONNX Tile (numpy's tile, torch's Tensor.repeat) ported as torch.repeat_interleave, which repeats each element in
    # place: [a, b] -> [a, a, b, b] instead of [a, b, a, b]; same shape
    module = importlib.import_module("builders.pytorch")

    def op_tile(spec, node, **_options):
        import torch.nn as nn

        class Interleave(nn.Module):
            def forward(self, x):
                for axis, r in enumerate(node.attrs["repeats"], start=1):
                    x = x.repeat_interleave(r, dim=axis)
                return x
        return Interleave()
    module.op_tile = op_tile


BUGS = {"leakyrelu-slope": _leakyrelu_slope, "lrn-alpha": _lrn_alpha, "pytorch-depthtospace-mode": _depthtospace_mode,
        "selu-constants-rounded": _selu_constants_rounded, "tile-as-repeat-interleave": _tile_as_repeat_interleave}


def _batch_statistics_at_evaluation():
    # BatchNorm that keeps no running statistics (track_running_stats=False): it normalises with the batch's
    # statistics in eval mode too, the "forgot model.eval()" family of bugs
    module = importlib.import_module("builders.pytorch")

    def op_batchnorm(spec, node, **_options):
        import torch
        import torch.nn as nn
        bn = nn.BatchNorm2d(spec.input_shapes(node)[0][0], eps=node.attrs["epsilon"], track_running_stats=False)
        with torch.no_grad():  # gamma and beta loaded; the running statistics have nowhere to go
            bn.weight.copy_(torch.from_numpy(spec.params(node)["scale"]))
            bn.bias.copy_(torch.from_numpy(spec.params(node)["bias"]))
        return bn
    module.op_batchnorm = op_batchnorm


BUGS["batch-statistics-at-evaluation"] = _batch_statistics_at_evaluation
