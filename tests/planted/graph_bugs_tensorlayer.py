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


def _shift_sign():
    # ONNX Sub by a constant arrives as a shift by its negation; building the shift as a subtraction (the Sub the
    # file had in mind) subtracts twice: same shape, every value off by twice the constant
    module = importlib.import_module("builders.tensorlayer")
    module.op_shift = lambda net, node, x: module._with_constant(net, node, x, net.tf.subtract)


def _deconv_kernel_flipped():
    # the transposed convolution's kernel flipped in H and W on loading, in the belief that a "deconvolution" is a
    # true convolution (Theano's filter_flip); tf.nn.conv2d_transpose flips nothing itself: same shape, wrong values
    module = importlib.import_module("builders.tensorlayer")
    original = module.deconv_kernel
    module.deconv_kernel = lambda w: original(w[:, :, ::-1, ::-1])


BUGS = {"bn-scale-bias-swapped": _bn_scale_bias_swapped, "shift-sign": _shift_sign,
        "deconv-kernel-flipped": _deconv_kernel_flipped}
