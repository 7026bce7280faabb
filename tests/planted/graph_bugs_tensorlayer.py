"""Graph-op bugs planted in the tensorlayer builder (see tests/planted/bugs.py)."""
import importlib


def _bn_scale_bias_swapped():
    # BatchNorm's scale loaded into tensorlayer's beta and its bias into gamma: names that read alike
    # (gamma/beta, scale/bias), the same shape, so nothing fails; only the values are wrong
    module = importlib.import_module("builders.tensorlayer")
    original = module._Network.hold

    def hold(self, node, **variables):
        if node.kind == "batchnorm":
            variables["scale"], variables["bias"] = variables["bias"], variables["scale"]
        return original(self, node, **variables)
    module._Network.hold = hold


BUGS = {"bn-scale-bias-swapped": _bn_scale_bias_swapped}
