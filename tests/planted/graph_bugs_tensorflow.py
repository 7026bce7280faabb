"""Graph-op bugs planted in the raw TensorFlow builder (see tests/planted/bugs.py)."""
import importlib


def _concat_order():
    # the Concat built with its inputs in reverse order: same shape, channels in the wrong places
    module = importlib.import_module("builders.tensorflow")
    original = module.op_concat

    def op_concat(tf, spec, node, params):
        concat = original(tf, spec, node, params)
        return lambda xs, training, masks: concat(xs[::-1], training, masks)
    module.op_concat = op_concat


def _lrn_alpha_not_divided():
    # the classic LRN trap: ONNX's alpha handed to tf.nn.local_response_normalization as it is, when TensorFlow
    # multiplies its plain window sum by alpha and ONNX divides alpha by size first
    module = importlib.import_module("builders.tensorflow")

    def op_lrn(tf, spec, node, params):
        a = node.attrs
        return lambda xs, training, masks: tf.nn.local_response_normalization(xs[0], (a["size"] - 1) // 2, a["bias"],
                                                                              a["alpha"], a["beta"])
    module.op_lrn = op_lrn


def _pixel_shuffle_as_dcr():
    # PyTorch's PixelShuffle ported as tf.nn.depth_to_space as it is: TensorFlow's reads the channels in DCR order
    # ((i*b + j)*C' + c), PixelShuffle's are CRD (c*b*b + i*b + j); same shape, pixels from the wrong channels
    module = importlib.import_module("builders.tensorflow")

    def op_depthtospace(tf, spec, node, params):
        return lambda xs, training, masks: tf.nn.depth_to_space(xs[0], node.attrs["blocksize"])
    module.op_depthtospace = op_depthtospace


BUGS = {"concat-order": _concat_order, "lrn-alpha-not-divided": _lrn_alpha_not_divided,
        "tensorflow-pixel-shuffle-as-dcr": _pixel_shuffle_as_dcr}
