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


BUGS = {"concat-order": _concat_order}
