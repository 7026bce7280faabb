"""Graph-op bugs planted into the Keras 3 builder (collected by tests/planted/bugs.py)."""
import importlib


def _bn_epsilon():
    # BatchNormalization built with Keras's default epsilon 1e-3 instead of the node's (ONNX's default 1e-5)
    module = importlib.import_module("builders.keras_tensorflow")

    def op_batchnorm(graph, node, xs):
        bn = graph.keras.layers.BatchNormalization(axis=-1, momentum=node.attrs["momentum"], name=node.name)
        return module._loaded(graph, bn, node, xs[0])
    module.op_batchnorm = op_batchnorm


BUGS = {"bn-epsilon": _bn_epsilon}
