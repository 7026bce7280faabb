"""Graph-op bugs planted into the Keras-on-Theano builder (collected by tests/planted/bugs.py)."""
import dataclasses
import importlib


def _dilation_ignored():
    # a dilated convolution built as a plain one: dilation_rate dropped and the pads shrunk by the extent the
    # kernel no longer spans, so every shape still matches and only the values are wrong
    module = importlib.import_module("builders.keras_theano")
    original = module.op_conv

    def op_conv(spec, node, inputs, **options):
        dilations = tuple(node.attrs.get("dilations", (1, 1)))
        if dilations != (1, 1):
            lost = [(d - 1) * (k - 1) for k, d in zip(node.attrs["kernel"], dilations)]
            top, left, bottom, right = node.attrs["pads"]
            pads = (top - lost[0] // 2, left - lost[1] // 2, bottom - (lost[0] - lost[0] // 2), right - (lost[1] - lost[1] // 2))
            attrs = {k: v for k, v in node.attrs.items() if k != "dilations"} | {"pads": pads}
            node = dataclasses.replace(node, attrs=attrs)
        return original(spec, node, inputs, **options)
    module.op_conv = op_conv


def _shuffle_groups_swapped():
    # the channel shuffle's channels viewed as (C / groups, groups) instead of (groups, C / groups) before the
    # transpose: every shape stays valid, the channels land in another order (a shuffle of C / groups groups)
    module = importlib.import_module("builders.keras_theano")

    def op_channelshuffle(spec, node, inputs, **_options):
        L, groups = module.library().layers, node.attrs["groups"]
        channels, height, width = spec.input_shapes(node)[0]
        y = L.Reshape((channels // groups, groups, height, width), name=f"{node.name}_groups")(*inputs)
        y = L.Permute((2, 1, 3, 4), name=f"{node.name}_transpose")(y)
        return L.Reshape((channels, height, width), name=node.name)(y)
    module.op_channelshuffle = op_channelshuffle


def _transposed_kernel_unflipped():
    # ConvTranspose weights loaded into Conv2DTranspose in its (kh, kw, out, in) layout without the spatial flip:
    # Keras 2 on Theano transposes a true convolution (filter_flip), so the taps land mirrored; shapes all match
    module = importlib.import_module("builders.keras_theano")
    original = module.transposed_kernel
    module.transposed_kernel = lambda w: original(w)[::-1, ::-1]


BUGS = {"dilation-ignored": _dilation_ignored, "shuffle-groups-swapped": _shuffle_groups_swapped,
        "transposed-kernel-unflipped": _transposed_kernel_unflipped}
