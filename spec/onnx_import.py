"""Read an ONNX file of the supported op set into a ModelSpec.

The only place that parses ONNX protobuf. Every way a file can be unusable ends in a
ModelError whose message is one line naming the file, node, op or tensor at fault.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from spec import ops
from spec.ir import ModelSpec, Node, same_pads, window_output_size
from spec.onnx_normalize import READ_RANGE, NormalizeError, default_opset, normalize

OPSET_RANGE = READ_RANGE  # read as they are; other opsets are converted first (spec.onnx_normalize)
_TRANSLATED = ("Conv (groups, dilations)", "MaxPool", "AveragePool", "Dropout", "Flatten", "Reshape (as flatten)",
               "Gemm", "MatMul+Add", "Softmax (one axis)", "LogSoftmax (one axis)", "Clip",
               "ReduceMean/ReduceSum (C, H, W)", "Tile (C, H, W)", "LRN", "Add/Sub/Mul/Div by a constant", "Mul of two tensors",
               "Reshape-Transpose-Reshape (channel shuffle, depth to space)",
               "Identity", "Constant", "Pad (H, W)", "ConvTranspose", "PRelu", "InstanceNormalization", "DepthToSpace",
               "Squeeze/Unsqueeze ([N, C, 1, 1] <-> [N, C])", "Transpose (an NHWC input; NCHW -> NHWC before a flatten "
               "or a mean over H, W)")


class ModelError(ValueError):
    """A model file this tool cannot use; the message is meant for the user as it is."""


# Memory guard: what a model declares is checked before anything of that size is allocated.
BUDGET_VARIABLE = "XV_MEMORY_BUDGET_GIB"
DEFAULT_BUDGET_GIB = 8.0
WEIGHT_COPIES = 4  # onnxruntime's, a library's, RMSprop's mean square and the gradient
ACTIVATION_COPIES = 3  # forward outputs, their gradients and the verifier's copy of every layer's output


def memory_budget_gib() -> float:
    text = os.environ.get(BUDGET_VARIABLE, "")
    try:
        value = float(text) if text else DEFAULT_BUDGET_GIB
    except ValueError:
        raise ModelError(f"{BUDGET_VARIABLE}={text!r} is not a number of GiB") from None
    if not value > 0:
        raise ModelError(f"{BUDGET_VARIABLE}={text!r} must be a positive number of GiB")
    return value


def _within_budget(path: Path, what: str, need_bytes: float) -> None:
    budget = memory_budget_gib()
    if need_bytes > budget * 2**30:
        raise ModelError(f"{path}: {what} need about {need_bytes / 2**30:,.1f} GiB, over the memory budget of "
                         f"{budget:g} GiB; refused before allocating it (raise it with {BUDGET_VARIABLE}=...)")


def _declared_bytes(path: Path, tensor) -> int:
    """prod(dims) * itemsize of a TensorProto, from its header alone."""
    if any(d < 0 for d in tensor.dims):
        raise ModelError(f"{path}: tensor {tensor.name!r} declares a negative dimension {list(tensor.dims)}")
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - an unknown or undefined dtype: the importer refuses it later
        itemsize = 1
    return int(np.prod([int(d) for d in tensor.dims], dtype=object)) * itemsize


def load_onnx(path) -> onnx.ModelProto:
    """Load and check a model file, external data included; raises ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    _within_budget(path, "the model file's bytes", path.stat().st_size)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes; truncated or another kind of file?)")
    _check_names(path, model)
    _check_opset(path, model)
    declared = sum(_declared_bytes(path, t) for t in onnx.external_data_helper._get_all_tensors(model))
    _within_budget(path, f"its weights ({declared / 2**30:,.2f} GiB declared, {WEIGHT_COPIES} copies)",
                   WEIGHT_COPIES * declared)
    _load_external_data(path, model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: ONNX checker rejected the model: {_one_line(exc)}") from None
    return model


def import_model(path) -> ModelSpec:
    """The ModelSpec of the ONNX model at path (converted and folded first where needed, spec.onnx_normalize,
    which the spec's notes say); raises ModelError."""
    model = load_onnx(path)
    try:
        model, notes = normalize(model)
    except NormalizeError as exc:
        raise ModelError(f"{path}: {exc}") from None
    try:
        return _Importer(Path(path), model, notes).run()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - still one line for the user; the fuzz test fails on this wording
        raise ModelError(f"{path}: {IMPORTER_BUG}: {type(exc).__name__}: {_first_line(exc)}") from exc


def normalized_model(path) -> onnx.ModelProto:
    """The model at path in the form the importer reads (spec.onnx_normalize), for a reference that cannot run
    the original (onnxruntime implements no kernels for some ops of old opsets)."""
    try:
        return normalize(load_onnx(path))[0]
    except NormalizeError as exc:
        raise ModelError(f"{path}: {exc}") from None


IMPORTER_BUG = "the importer failed on this model (a bug: please report it with the file)"


def _check_names(path: Path, model: onnx.ModelProto) -> None:
    """protobuf hands out names that are not valid UTF-8 as bytes: a corrupt file."""
    graph = model.graph
    names = [graph.name, *(v.name for v in [*graph.input, *graph.output, *graph.value_info]),
             *(t.name for t in graph.initializer)]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output,
                  *(a.name for a in node.attribute)]
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise ModelError(f"{path}: the model names something with bytes that are not UTF-8 ({bad[:40]!r}); "
                         f"the file is corrupt")


def _one_line(exc: Exception) -> str:
    """The whole message on one line (the checker names the node on the lines after the first)."""
    return " ".join((str(exc).strip() or type(exc).__name__).split())[:400]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _check_opset(path: Path, model: onnx.ModelProto) -> None:
    version = default_opset(model)
    if version is None:
        raise ModelError(f"{path}: model imports no default ONNX opset")
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= version <= newest:
        raise ModelError(f"{path}: opset {version} is not an ONNX opset this onnx ({onnx.__version__}) knows "
                         f"(1-{newest})")


def _load_external_data(path: Path, model: onnx.ModelProto) -> None:
    base = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        try:
            target = (base / location).resolve()
            offset, length = int(entries.get("offset", 0) or 0), int(entries.get("length", 0) or 0)
        except (ValueError, OSError) as exc:  # a NUL in the name, an offset that is not a number, ...
            raise ModelError(f"{path}: tensor {tensor.name!r} has unusable external data entries "
                             f"({_first_line(exc)})") from None
        if not location or Path(location).is_absolute() or not target.is_relative_to(base):
            raise ModelError(f"{path}: tensor {tensor.name!r} points to external data {location!r} "
                             f"outside the model's folder; refused")
        if not target.is_file():
            raise ModelError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
        if offset < 0 or length < 0:
            raise ModelError(f"{path}: external data of tensor {tensor.name!r} has a negative offset or length")
        size = target.stat().st_size
        if offset + length > size:
            raise ModelError(f"{path}: external data of tensor {tensor.name!r} lies beyond the end of "
                             f"{location!r} ({size} bytes); the file is truncated")
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelError(f"{path}: cannot read external data: {_first_line(exc)}") from None


class _Importer:
    def __init__(self, path: Path, model: onnx.ModelProto, notes=()):
        self.path, self.model, self.graph, self.notes = path, model, model.graph, tuple(notes)
        self.constants = {t.name: t for t in self.graph.initializer}
        self.layers: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.names: set[str] = set()
        self.tensors: dict[str, tuple] = {}  # ONNX tensor -> (IR tensor name, shape without the batch axis)
        self.consumed: set[str] = set()  # ONNX nodes already imported as part of another (MatMul's Add)
        self.nhwc_views: dict[str, tuple] = {}  # ONNX tensor -> (IR tensor, shape) it is an NHWC transpose of

    def fail(self, node, message: str):
        raise ModelError(f"{self.path}: node {node.name or '(unnamed)'!r} ({node.op_type}): {message}")

    # -- graph walk --------------------------------------------------------------------
    def run(self) -> ModelSpec:
        inputs = [i for i in self.graph.input if i.name not in self.constants]
        if len(inputs) > 1:  # the data input is the one the first node reads; others lack initializers
            first = next((n for n in self.graph.node if n.op_type != "Constant"), None)
            inputs = [i for i in inputs if first is not None and first.input and i.name == first.input[0]]
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: cannot tell the model's data input (graph inputs without initializer: "
                             f"{[i.name for i in self.graph.input if i.name not in self.constants]})")
        if len(self.graph.output) != 1:
            raise ModelError(f"{self.path}: expected one graph output, found {len(self.graph.output)}")
        self.input_name = inputs[0].name
        dims = self._input_dims(inputs[0])
        nodes = list(self.graph.node)
        self.layout = self._channels_last_input(nodes)
        self.tensors[self.input_name] = (self.input_name, self.shape_in)
        self.batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        for node in nodes:  # constants read no input: known before any node that reads them, wherever they stand
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constants[node.output[0]] = self._constant_node_tensor(node)
        for i in range(len(nodes)):
            if i not in self.consumed:
                self._visit(nodes, i)
        output = self.graph.output[0].name
        if output not in self.tensors or self.tensors[output][0] == self.input_name:
            raise ModelError(f"{self.path}: graph output {output!r} is not computed by the model's nodes")
        if not self.layers:
            raise ModelError(f"{self.path}: the model has no layers")
        self._keep_what_the_output_needs(self.tensors[output][0])
        # one image must fit; how many images a verification or a training batch holds is chosen by them
        per_image = 4 * sum(int(np.prod(layer.output_shape, dtype=object)) for layer in self.layers)
        _within_budget(self.path, f"its activations ({per_image / 2**20:,.1f} MiB per image, {ACTIVATION_COPIES} "
                                  f"copies of one image)", ACTIVATION_COPIES * per_image)
        return ModelSpec(self.shape_in, self.layers, self.weights, self.input_name, str(self.path), self.batch,
                         self.notes, self.layout)

    def _channels_last_input(self, nodes: list) -> str:
        """"NHWC" when every reader of a 4-D graph input is a Transpose to NCHW (as tf2onnx writes a Keras model's
        input): the spec then takes NCHW images and those Transposes read as the input itself; else "NCHW"."""
        readers = [(j, n) for j, n in enumerate(nodes) if self.input_name in n.input]
        if len(self.shape_in) != 3 or not readers or any(
                n.op_type != "Transpose" or list(self._attrs(n).get("perm", [])) != [0, 3, 1, 2] for _, n in readers):
            return "NCHW"
        h, w, c = self.shape_in
        self.shape_in = (c, h, w)
        for j, n in readers:
            self.consumed.add(j)
            self.tensors[n.output[0]] = (self.input_name, self.shape_in)
        self.notes += (f"input {self.input_name!r} is NHWC {['N', h, w, c]}; its Transpose to NCHW is read as the "
                       f"input, and onnxruntime is given the images channels-last",)
        return "NHWC"

    def _keep_what_the_output_needs(self, output: str) -> None:
        """Drop nodes the output does not depend on, and make the output node the last one."""
        needed, by_name = {output}, {n.name: n for n in self.layers}
        for node in reversed(self.layers):
            if node.name in needed:
                needed.update(node.inputs)
        kept = [n for n in self.layers if n.name in needed and n.name != output]
        self.layers = kept + [by_name[output]]
        self.weights = {k: v for k, v in self.weights.items() if k.split(".")[0] in needed}

    def _input_dims(self, value_info) -> list:
        t = value_info.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"{self.path}: input {value_info.name!r} must be float32")
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        if len(dims) not in (2, 4) or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            raise ModelError(f"{self.path}: input {value_info.name!r} has shape {dims}; supported are "
                             f"[N, C, H, W] and [N, F] with fixed C, H, W, F")
        self.shape_in = tuple(dims[1:])
        return dims

    def _visit(self, nodes: list, i: int) -> None:
        node = nodes[i]
        if node.domain not in ("", "ai.onnx"):
            self.fail(node, f"op domain {node.domain!r} is not supported; supported ops: {', '.join(supported_ops())}")
        if node.op_type == "Constant":
            self.constants[node.output[0]] = self._constant_node_tensor(node)
            return
        if not node.input or not node.input[0]:
            self.fail(node, "has no data input")
        if node.op_type in ("Add", "Mul") and len(node.input) == 2 and node.input[0] not in self.tensors and \
                node.input[1] in self.tensors:
            node = onnx.helper.make_node(node.op_type, node.input[::-1], node.output, name=node.name)  # c + x
        if node.input[0] in self.nhwc_views:
            return self._read_nhwc_view(node, i)
        if node.input[0] not in self.tensors:
            where = "a weight, not a tensor the model computes" if node.input[0] in self.constants else \
                "not computed by any earlier node (graph not in topological order, or a cycle)"
            self.fail(node, f"its input {node.input[0]!r} is {where}")
        self.source, self.shape = self.tensors[node.input[0]]
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None and node.op_type in ops.onnx_ops():
            handler = self._op_plain
        if handler is None:
            self.fail(node, f"op {node.op_type!r} is not supported; supported ops: {', '.join(supported_ops())}")
        handler(node, nodes, i)

    def _add(self, node, kind: str, attrs: dict, shape: tuple | None, output: str, weights=None,
             sources=None) -> None:
        """Append an IR node reading `sources` ((IR tensor, shape) pairs; default: the ONNX node's first input).
        `shape` None: the registry's shape rule decides (a rule that refuses the inputs fails the node)."""
        base = re.sub(r"[^A-Za-z0-9_]+", "_", node.name).strip("_") or f"{kind}"
        name, n = base, 1
        while name in self.names or name == self.input_name:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        for key, value in (weights or {}).items():
            self.weights[f"{name}.{key}"] = np.ascontiguousarray(value, dtype=np.float32)
        sources = sources or [(self.source, self.shape)]
        try:
            expected = tuple(ops.get(kind).shape(attrs, [shape for _, shape in sources]))
        except ValueError as exc:
            self.fail(node, str(exc))
        shape = expected if shape is None else tuple(shape)
        if expected != shape:  # the importer and the registry must agree
            self.fail(node, f"output shape {shape} disagrees with the op registry's {expected}")
        self.layers.append(Node(name, kind, attrs, shape, output, tuple(source for source, _ in sources)))
        self.tensors[output] = (name, tuple(shape))

    # -- helpers -----------------------------------------------------------------------
    def _constant_node_tensor(self, node):
        for a in node.attribute:
            if a.name == "value":
                return a.t
            if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                value = np.array(onnx.helper.get_attribute_value(a),
                                 dtype=np.float32 if "float" in a.name else np.int64)
                return numpy_helper.from_array(value, node.output[0])
        self.fail(node, "only Constant nodes with a 'value' tensor or numbers are supported")

    def _const(self, node, name: str, what: str) -> np.ndarray:
        if name not in self.constants:
            self.fail(node, f"{what} {name!r} is not an initializer or constant (missing initializer?)")
        try:
            return numpy_helper.to_array(self.constants[name])
        except Exception as exc:
            self.fail(node, f"cannot read tensor {name!r}: {_first_line(exc)}")

    def _scalar(self, node, name: str, what: str) -> float:
        value = self._const(node, name, what)
        if value.size != 1 or value.dtype.kind not in "biuf":
            self.fail(node, f"{what} {name!r} must be a single number, not {value.dtype} of shape {value.shape}")
        return float(value.reshape(()))

    @staticmethod
    def _non_default(attrs: dict, **defaults) -> dict:
        """The attributes among `defaults` whose value differs from the default (tuples for lists), so that a
        plain model's nodes keep the attributes they always had."""
        out = {}
        for name, default in defaults.items():
            value = attrs.get(name, default)
            value = tuple(value) if isinstance(value, list) else value
            if value != default:
                out[name] = value
        return out

    @staticmethod
    def _attrs(node) -> dict:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _require_spatial(self, node):
        if len(self.shape) != 3:
            self.fail(node, f"expects an NCHW input, got a tensor of shape {('N',) + self.shape}")

    def _window(self, node, attrs: dict, kernel: tuple) -> tuple:
        strides = tuple(attrs.get("strides", (1, 1)))
        if len(kernel) != 2 or len(strides) != 2:
            self.fail(node, "only 2-D windows are supported")
        if not all(isinstance(v, int) and v >= 1 for v in (*kernel, *strides)):
            self.fail(node, f"invalid kernel {kernel} or strides {strides}")
        dilations = tuple(attrs.get("dilations", (1, 1)))
        if len(dilations) != 2 or not all(isinstance(d, int) and d >= 1 for d in dilations):
            self.fail(node, f"invalid dilations {dilations}")
        kernel = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))  # the extent the window covers
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        hw = self.shape[1:]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = same_pads(hw, kernel, strides, upper=auto_pad == "SAME_UPPER")
        elif auto_pad == "VALID":
            pads = (0, 0, 0, 0)
        elif auto_pad == "NOTSET":
            pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        else:
            self.fail(node, f"auto_pad {auto_pad!r} is not supported")
        if len(kernel) != 2 or len(strides) != 2 or len(pads) != 4:
            self.fail(node, "only 2-D windows are supported")
        if any(p < 0 for p in pads) or any(s < 1 for s in strides):
            self.fail(node, f"invalid pads {pads} or strides {strides}")
        out_hw = tuple(window_output_size(hw[a], kernel[a], strides[a], pads[a], pads[a + 2]) for a in (0, 1))
        if min(out_hw) < 1:
            self.fail(node, f"window {kernel} does not fit the {hw[0]}x{hw[1]} input")
        return strides, pads, out_hw

    # -- ops ---------------------------------------------------------------------------
    def _op_Identity(self, node, nodes, i):
        self.tensors[node.output[0]] = (self.source, self.shape)

    def _op_plain(self, node, nodes, i):
        """An op the registry imports one-to-one: its inputs, and the attributes the registry names (with their
        ONNX defaults); several inputs for Add, Sum, Concat."""
        op = ops.get(ops.onnx_ops()[node.op_type])
        given = self._attrs(node)
        unknown = sorted(set(given) - set(op.attrs))
        if unknown:
            self.fail(node, f"attribute(s) {', '.join(unknown)} not supported")
        attrs = {name: given.get(name, default) for name, default in op.attrs.items()}
        sources = self._computed_inputs(node)
        if op.arity is not None and len(sources) != op.arity:
            self.fail(node, f"expected {op.arity} input(s), got {len(sources)}")
        self._add(node, op.kind, attrs, None, node.output[0], sources=sources)

    def _computed_inputs(self, node) -> list:
        """[(IR tensor, shape)] of every input of `node`; each must be computed by the model, not a weight."""
        sources = []
        for name in node.input:
            if name in self.tensors:
                sources.append(self.tensors[name])
            elif name in self.constants:
                self.fail(node, f"input {name!r} is a constant; {node.op_type} with a constant operand is not "
                                f"supported yet (only of tensors the model computes)")
            else:
                self.fail(node, f"its input {name!r} is not computed by any earlier node (graph not in topological "
                                f"order, or a cycle)")
        return sources

    def _op_Conv(self, node, nodes, i):
        self._require_spatial(node)
        attrs = self._attrs(node)
        w = self._const(node, node.input[1], "weight")
        group = attrs.get("group", 1)
        if not isinstance(group, int) or group < 1 or self.shape[0] % group or (w.ndim and w.shape[0] % group):
            self.fail(node, f"group {group} does not divide the {self.shape[0]} input channels and the outputs")
        if w.ndim != 4 or w.shape[1] * group != self.shape[0]:
            self.fail(node, f"weight {node.input[1]!r} has shape {w.shape}; expected (out, {self.shape[0] // group}, "
                            f"kh, kw) for group {group}")
        kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
        if kernel != w.shape[2:]:
            self.fail(node, f"kernel_shape {kernel} does not match weight shape {w.shape}")
        strides, pads, out_hw = self._window(node, attrs, kernel)
        b = self._const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        if b.shape != (w.shape[0],):
            self.fail(node, f"bias {node.input[2]!r} has shape {b.shape}; expected ({w.shape[0]},)")
        attrs_out = {"filters": int(w.shape[0]), "kernel": kernel, "strides": strides, "pads": pads,
                     **self._non_default(attrs, group=1, dilations=(1, 1))}
        self._add(node, "conv", attrs_out, (w.shape[0],) + out_hw, node.output[0], {"weight": w, "bias": b})
        return i + 1

    def _pool(self, node, kind: str, i: int, extra: dict):
        self._require_spatial(node)
        attrs = self._attrs(node)
        if attrs.get("storage_order", 0):
            self.fail(node, "storage_order=1 is not supported")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the Indices output is not supported")
        kernel = tuple(attrs["kernel_shape"])
        strides, pads, out_hw = self._window(node, attrs, kernel)
        if attrs.get("ceil_mode", 0):
            pads, out_hw = self._ceil_pads(node, kind, attrs, kernel, strides, pads, extra)
        if kind == "avgpool" and tuple(attrs.get("dilations", (1, 1))) != (1, 1):
            self.fail(node, "dilated average pooling is not supported")
        if kind == "maxpool":
            extra = {**extra, **self._non_default(attrs, dilations=(1, 1))}
        self._add(node, kind, {"kernel": kernel, "strides": strides, "pads": pads, **extra},
                  (self.shape[0],) + out_hw, node.output[0])
        return i + 1

    def _ceil_pads(self, node, kind, attrs, kernel, strides, pads, extra) -> tuple:
        """ceil_mode=1 as extra bottom and right padding: windows that start inside the input or its top/left
        padding and hang over the end (ONNX's and PyTorch's rule); those cells count as -inf for max pooling and
        are not counted by an average that excludes padding."""
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, attrs.get("dilations", (1, 1))))
        more, out_hw = [0, 0], []
        for a in (0, 1):
            size, before, after = self.shape[1 + a], pads[a], pads[a + 2]
            out = -(-(size + before + after - extent[a]) // strides[a]) + 1
            if (out - 1) * strides[a] >= size + before:
                out -= 1
            more[a] = max((out - 1) * strides[a] + extent[a] - (size + before + after), 0)
            out_hw.append(out)
        if kind == "avgpool" and extra.get("count_include_pad") and any(more):
            self.fail(node, "ceil_mode=1 with count_include_pad=1 is not supported (the cells past the end are not "
                            "counted while the padding is)")
        return (pads[0], pads[1], pads[2] + more[0], pads[3] + more[1]), tuple(out_hw)

    def _op_MaxPool(self, node, nodes, i):
        return self._pool(node, "maxpool", i, {})

    def _op_AveragePool(self, node, nodes, i):
        include = bool(self._attrs(node).get("count_include_pad", 0))
        return self._pool(node, "avgpool", i, {"count_include_pad": include})

    def _op_Dropout(self, node, nodes, i):
        attrs = self._attrs(node)
        rate = attrs.get("ratio", 0.5)
        if len(node.input) > 1 and node.input[1]:
            rate = self._scalar(node, node.input[1], "ratio")
        if len(node.input) > 2 and node.input[2] and self._scalar(node, node.input[2], "training_mode"):
            self.fail(node, "training_mode=True is not supported for a model description")
        if not isinstance(rate, (int, float)):
            self.fail(node, f"ratio must be a number, not {rate!r}")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the mask output is not supported")
        if not 0.0 <= rate < 1.0:
            self.fail(node, f"ratio {rate} is outside [0, 1)")
        self._add(node, "dropout", {"rate": float(rate)}, self.shape, node.output[0])
        return i + 1

    def _flatten(self, node, i, order: str = "CHW", output: str | None = None):
        self._add(node, "flatten", {"order": order} if order != "CHW" else {}, (int(np.prod(self.shape)),),
                  output or node.output[0])
        return i + 1

    def _op_Transpose(self, node, nodes, i):
        """NCHW -> NHWC: a view that a flatten (in (H, W, C) order) or a mean over H and W may read, as tf2onnx
        writes a Keras model's Flatten and GlobalAveragePooling2D."""
        perm = list(self._attrs(node).get("perm", []))
        if perm != [0, 2, 3, 1] or len(self.shape) != 3:
            self.fail(node, f"Transpose {perm} of {('N',) + self.shape} is supported only as NCHW -> NHWC before a "
                            f"flatten or a mean over H and W, or as part of a channel shuffle or depth to space")
        self.nhwc_views[node.output[0]] = (self.source, self.shape)

    def _read_nhwc_view(self, node, i):
        self.source, self.shape = self.nhwc_views[node.input[0]]
        if self._flattens(node):
            return self._flatten(node, i, order="HWC")
        if node.op_type == "ReduceMean":
            axes = self._axes(node)
            keep = self._attrs(node).get("keepdims", 1)
            if axes is not None and sorted(a % 4 for a in axes) == [1, 2] and not keep:
                return self._add(node, "globalavgpool", {"keepdims": False}, (self.shape[0],), node.output[0])
        self.fail(node, "reads an NHWC view (a Transpose (0, 2, 3, 1)) of a map; only a flatten or a mean over H and W "
                        "without kept axes may read one")

    def _flattens(self, node) -> bool:
        """Whether `node` (reading an NHWC view of this tensor) flattens it to [N, F]."""
        if node.op_type == "Flatten":
            return self._attrs(node).get("axis", 1) == 1
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in self.constants:
            return False
        target = [int(v) for v in numpy_helper.to_array(self.constants[node.input[1]]).reshape(-1)]
        return len(target) == 2 and target[0] in (-1, 0, self.batch) and target[1] in (-1, int(np.prod(self.shape)))

    def _op_Flatten(self, node, nodes, i):
        if self._attrs(node).get("axis", 1) != 1:
            self.fail(node, "only axis=1 (keep the batch axis) is supported")
        return self._flatten(node, i)

    def _op_Reshape(self, node, nodes, i):
        if len(self.shape) == 3 and (self._op_Reshape_shuffle(node, nodes, i) or
                                     self._op_Reshape_depth_to_space(node, nodes, i)):
            return i + 3
        shape = self._const(node, node.input[1], "shape")
        if shape.dtype.kind not in "iu":
            self.fail(node, f"the target shape must hold integers, not {shape.dtype}")
        target = [int(v) for v in shape.reshape(-1)]
        features = int(np.prod(self.shape))
        ok_batch = target[:1] and target[0] in (-1, 0) + ((self.batch,) if self.batch else ())
        if len(self.shape) == 1 and ok_batch and target[1:] in ([features, 1, 1], [-1, 1, 1]):
            return self._add(node, "unsqueeze", {}, None, node.output[0])
        if len(target) != 2 or not ok_batch or target[1] not in (-1, features) or target == [-1, -1]:
            self.fail(node, f"Reshape to {target} is supported only as a flatten to [N, {features}]")
        return self._flatten(node, i)

    def _dense(self, node, w: np.ndarray, b: np.ndarray, output: str, i_next: int):
        if len(self.shape) != 1 or w.ndim != 2 or w.shape[0] != self.shape[0]:
            self.fail(node, f"weight of shape {w.shape} cannot follow a tensor of shape {('N',) + self.shape}; "
                            f"dense layers need a flattened [N, F] input")
        try:
            b = np.broadcast_to(b, (w.shape[1],))
        except ValueError:
            self.fail(node, f"bias of shape {b.shape} does not fit {w.shape[1]} outputs")
        self._add(node, "dense", {"units": int(w.shape[1])}, (w.shape[1],), output, {"weight": w, "bias": b})
        return i_next

    def _op_Gemm(self, node, nodes, i):
        attrs = self._attrs(node)
        if attrs.get("transA", 0):
            self.fail(node, "transA=1 is not supported")
        w = self._const(node, node.input[1], "weight")
        if attrs.get("transB", 0):
            w = w.T
        w = w * attrs.get("alpha", 1.0)
        units = w.shape[1] if w.ndim == 2 else 0
        b = (self._const(node, node.input[2], "bias") * attrs.get("beta", 1.0)
             if len(node.input) > 2 and node.input[2] else np.zeros(units))
        return self._dense(node, w, b, node.output[0], i + 1)

    def _op_MatMul(self, node, nodes, i):
        w = self._const(node, node.input[1], "weight")
        readers = [j for j, n in enumerate(nodes) if node.output[0] in n.input]
        nxt = nodes[readers[0]] if len(readers) == 1 else None
        if nxt is not None and nxt.op_type == "Add" and node.output[0] not in [o.name for o in self.graph.output]:
            other = [n for n in nxt.input if n != node.output[0]]
            if len(other) != 1:
                self.fail(nxt, "Add after MatMul must add one bias tensor")
            b = self._const(nxt, other[0], "bias")
            self.consumed.add(readers[0])
            return self._dense(node, w, b.reshape(-1) if b.size == w.shape[-1] else b, nxt.output[0], i + 2)
        units = w.shape[1] if w.ndim == 2 else 0
        return self._dense(node, w, np.zeros(units), node.output[0], i + 1)

    def _op_Softmax(self, node, nodes, i):
        self._softmax(node, "softmax")

    def _softmax(self, node, kind: str):
        """Softmax or LogSoftmax over the features of [N, F] or one axis of an NCHW map (opset >= 13: one axis)."""
        axis = self._attrs(node).get("axis", -1)
        rank = len(self.shape) + 1
        if not -rank <= axis < rank or axis % rank == 0:
            self.fail(node, f"{node.op_type} over axis {axis} of a tensor of shape {('N',) + self.shape} is not "
                            f"supported (the batch axis, or no such axis)")
        axis %= rank
        self._add(node, kind, {} if axis == 1 else {"axis": axis}, self.shape, node.output[0])

    def _op_LRN(self, node, nodes, i):
        self._require_spatial(node)
        attrs = self._attrs(node)
        size = attrs.get("size")
        if not isinstance(size, int) or size < 1:
            self.fail(node, f"size must be a positive integer, not {size!r}")
        self._add(node, "lrn", {"size": size, "alpha": float(attrs.get("alpha", 1e-4)),
                                "beta": float(attrs.get("beta", 0.75)), "bias": float(attrs.get("bias", 1.0))},
                  self.shape, node.output[0])

    def _op_Add(self, node, nodes, i):
        if len(node.input) == 2 and any(n in self.constants and n not in self.tensors for n in node.input):
            return self._constant_operand(node, "shift", lambda v: v)
        return self._op_plain(node, nodes, i)

    def _op_Sub(self, node, nodes, i):
        return self._constant_operand(node, "shift", lambda v: -v)

    def _op_Mul(self, node, nodes, i):
        if len(node.input) == 2 and all(n in self.tensors for n in node.input):
            sources = sorted(self._computed_inputs(node), key=lambda s: -int(np.prod(s[1])))  # the full map first
            return self._add(node, "mul", {}, None, node.output[0], sources=sources)
        return self._constant_operand(node, "scale", lambda v: v)

    def _op_Div(self, node, nodes, i):
        return self._constant_operand(node, "scale", lambda v: 1.0 / v)

    def _constant_operand(self, node, kind: str, convert):
        """x + c, x - c, x * c, x / c (c an initializer broadcast onto x): a shift or scale node holding c
        at the input's rank (Div and Sub: by the reciprocal and the negation)."""
        if len(node.input) != 2:
            self.fail(node, f"expected 2 inputs, got {len(node.input)}")
        data, constant = node.input
        if data not in self.tensors and node.op_type in ("Add", "Mul"):
            data, constant = constant, data
        if data not in self.tensors or constant not in self.constants:
            self.fail(node, f"{node.op_type} is supported of a computed tensor and a constant (x {node.op_type} c), "
                            f"or for Add of two computed tensors")
        self.source, self.shape = self.tensors[data]
        value = self._broadcast_constant(node, constant, "constant")
        if kind == "scale" and node.op_type == "Div" and (value == 0).any():
            self.fail(node, f"divides by zero (constant {constant!r})")
        self._add(node, kind, {}, self.shape, node.output[0], {"value": convert(value.astype(np.float64))})

    def _broadcast_constant(self, node, name: str, what: str) -> np.ndarray:
        """Initializer `name` at the input's rank without the batch axis, as ONNX broadcasting (right-aligned)
        lays it onto the input."""
        value = self._const(node, name, what)
        if value.ndim > len(self.shape) + 1 or (value.ndim == len(self.shape) + 1 and value.shape[0] != 1):
            self.fail(node, f"{what} {name!r} of shape {value.shape} would broadcast over the batch axis")
        value = value.reshape(value.shape[-len(self.shape):] if value.ndim > len(self.shape) else value.shape)
        value = value.reshape((1,) * (len(self.shape) - value.ndim) + value.shape)
        try:
            np.broadcast_shapes(value.shape, self.shape)
        except ValueError:
            self.fail(node, f"{what} {name!r} of shape {value.shape} does not broadcast onto {self.shape}")
        if np.broadcast_shapes(value.shape, self.shape) != tuple(self.shape):
            self.fail(node, f"{what} {name!r} of shape {value.shape} would enlarge the tensor {self.shape}")
        return value

    def _op_Reshape_shuffle(self, node, nodes, i):
        """Reshape (N, g, C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape (N, C, H, W): a channel shuffle."""
        readers = [j for j, n in enumerate(nodes) if node.output[0] in n.input]
        transpose = nodes[readers[0]] if len(readers) == 1 else None
        if transpose is None or transpose.op_type != "Transpose" or \
                list(self._attrs(transpose).get("perm", [])) != [0, 2, 1, 3, 4]:
            return None
        after = [j for j, n in enumerate(nodes) if transpose.output[0] in n.input]
        back = nodes[after[0]] if len(after) == 1 else None
        if back is None or back.op_type != "Reshape":
            return None
        target = [int(v) for v in self._const(back, back.input[1], "shape").reshape(-1)]
        first = [int(v) for v in self._const(node, node.input[1], "shape").reshape(-1)]
        c, h, w = self.shape
        if len(first) != 5 or first[1] * first[2] != c or tuple(first[3:]) != (h, w) or target[1:] not in ([c, h, w],
                                                                                                          [-1, h, w]):
            return None
        self.consumed.update(readers + after)
        self._add(node, "channelshuffle", {"groups": first[1]}, self.shape, back.output[0])
        return True

    def _op_Concat(self, node, nodes, i):
        sources = self._computed_inputs(node)
        rank = len(sources[0][1]) + 1
        axis = self._attrs(node).get("axis")
        if axis is None or axis % rank != 1:
            self.fail(node, f"only concatenation on the channel axis (1) is supported, not axis {axis}")
        self._add(node, "concat", {}, None, node.output[0], sources=sources)

    def _op_BatchNormalization(self, node, nodes, i):
        self._require_spatial(node)
        attrs = self._attrs(node)
        if attrs.get("training_mode", 0):
            self.fail(node, "training_mode=1 is not supported for a model description")
        if len(node.output) > 1 and any(node.output[1:]):
            self.fail(node, "the running statistics outputs are not supported")
        if len(node.input) != 5:
            self.fail(node, f"expected 5 inputs (X, scale, B, mean, var), got {len(node.input)}")
        channels = self.shape[0]
        params = {}
        for name, what in zip(node.input[1:], ("scale", "bias", "mean", "var")):
            value = self._const(node, name, what)
            if value.shape != (channels,):
                self.fail(node, f"{what} {name!r} has shape {value.shape}; expected ({channels},)")
            params[what] = value
        if (params["var"] < 0).any():
            self.fail(node, "the running variance has negative entries")
        self._add(node, "batchnorm", {"epsilon": float(attrs.get("epsilon", 1e-5)),
                                      "momentum": float(attrs.get("momentum", 0.9))},
                  self.shape, node.output[0], params)

    def _op_GlobalAveragePool(self, node, nodes, i):
        self._require_spatial(node)
        self._add(node, "globalavgpool", {}, (self.shape[0], 1, 1), node.output[0])

    def _op_ReduceMean(self, node, nodes, i):
        self._reduce(node, "mean")

    def _op_ReduceSum(self, node, nodes, i):
        self._reduce(node, "sum")

    def _reduce(self, node, mode: str):
        """A mean over H and W is a global average pool; any other set of C, H, W a reduce node."""
        self._require_spatial(node)
        attrs, axes = self._attrs(node), self._axes(node)
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                self.tensors[node.output[0]] = (self.source, self.shape)
                return None
            axes = [0, 1, 2, 3]
        axes = sorted({a % 4 for a in axes})
        if 0 in axes:
            self.fail(node, f"reduces over the batch axis (axes {axes}); only C, H and W (axes 1 to 3) may be reduced")
        keep = bool(attrs.get("keepdims", 1))
        if mode == "mean" and axes == [2, 3]:
            return self._add(node, "globalavgpool", {} if keep else {"keepdims": False},
                             (self.shape[0], 1, 1) if keep else (self.shape[0],), node.output[0])
        self._add(node, "reduce", {"mode": mode, "axes": axes, "keepdims": keep}, None, node.output[0])

    def _op_Tile(self, node, nodes, i):
        self._require_spatial(node)
        repeats = [int(r) for r in self._const(node, node.input[1], "repeats").reshape(-1)]
        if len(repeats) != 4 or repeats[0] != 1 or min(repeats) < 1:
            self.fail(node, f"repeats {repeats}: only C, H and W may be repeated (4 entries, the batch's 1)")
        self._add(node, "tile", {"repeats": repeats[1:]}, None, node.output[0])

    def _op_Clip(self, node, nodes, i):
        attrs = self._attrs(node)
        low, high = attrs.get("min", -np.inf), attrs.get("max", np.inf)  # opset < 11: attributes
        if len(node.input) > 1 and node.input[1]:
            low = self._scalar(node, node.input[1], "min")
        if len(node.input) > 2 and node.input[2]:
            high = self._scalar(node, node.input[2], "max")
        if not low <= high:
            self.fail(node, f"min {low} is above max {high}")
        if low == 0.0 and high == np.inf:
            return self._add(node, "relu", {}, self.shape, node.output[0])
        self._add(node, "clip", {"min": float(low), "max": float(high)}, self.shape, node.output[0])

    def _op_LogSoftmax(self, node, nodes, i):
        self._softmax(node, "logsoftmax")

    def _op_Pad(self, node, nodes, i):
        self._require_spatial(node)
        attrs = self._attrs(node)
        mode = attrs.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ops.PAD_MODES:
            self.fail(node, f"mode {mode!r} is not supported (constant, reflect, edge)")
        pads = attrs.get("pads")  # opset < 11: an attribute
        if len(node.input) > 1 and node.input[1]:
            pads = self._const(node, node.input[1], "pads").reshape(-1)
        if len(node.input) > 3 and node.input[3]:
            self.fail(node, "the axes input is not supported")
        pads = [int(p) for p in (pads if pads is not None else [])]
        if len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)):
            self.fail(node, f"pads {pads}: only padding of H and W of an NCHW tensor is supported")
        if any(p < 0 for p in pads):
            self.fail(node, f"negative pads {pads} (cropping) are not supported")
        top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
        if mode == "reflect" and (max(top, bottom) >= self.shape[1] or max(left, right) >= self.shape[2]):
            self.fail(node, f"reflect padding {pads} reaches beyond the {self.shape[1]}x{self.shape[2]} input")
        value = attrs.get("value", 0.0)
        if len(node.input) > 2 and node.input[2]:
            value = self._scalar(node, node.input[2], "constant_value")
        extra = {"value": float(value)} if mode == "constant" and value else {}
        self._add(node, "pad", {"pads": (top, left, bottom, right), "mode": mode, **extra}, None, node.output[0])

    def _op_ConvTranspose(self, node, nodes, i):
        self._require_spatial(node)
        attrs = self._attrs(node)
        w = self._const(node, node.input[1], "weight")
        if w.ndim != 4 or w.shape[0] != self.shape[0]:
            self.fail(node, f"weight {node.input[1]!r} has shape {w.shape}; expected ({self.shape[0]}, out, kh, kw)")
        if attrs.get("group", 1) != 1:
            self.fail(node, f"group {attrs['group']} is not supported (transposed convolution of one group only)")
        if "output_shape" in attrs:
            self.fail(node, "the output_shape attribute is not supported; give pads and output_padding")
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
            self.fail(node, f"auto_pad {auto_pad!r} is not supported; give pads")
        kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
        strides, pads = tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("pads", (0, 0, 0, 0)))
        dilations, padding = tuple(attrs.get("dilations", (1, 1))), tuple(attrs.get("output_padding", (0, 0)))
        if kernel != w.shape[2:] or len(strides) != 2 or len(pads) != 4 or len(dilations) != 2 or len(padding) != 2:
            self.fail(node, f"kernel {kernel}, strides {strides}, pads {pads}: only 2-D windows matching the weight "
                            f"{w.shape} are supported")
        if min(*strides, *dilations) < 1 or min(pads) < 0 or not all(0 <= p < s for p, s in zip(padding, strides)):
            self.fail(node, f"invalid strides {strides}, dilations {dilations}, pads {pads} or output_padding "
                            f"{padding} (each below its stride)")
        b = self._const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[1])
        if b.shape != (w.shape[1],):
            self.fail(node, f"bias {node.input[2]!r} has shape {b.shape}; expected ({w.shape[1]},)")
        out = {"filters": int(w.shape[1]), "kernel": kernel, "strides": strides, "pads": pads,
               **self._non_default({"output_padding": padding, "dilations": dilations}, output_padding=(0, 0),
                                   dilations=(1, 1))}
        shape = ops.get("convtranspose").shape(out, [self.shape])
        if min(shape[1:]) < 1:
            self.fail(node, f"pads {pads} crop the whole output")
        self._add(node, "convtranspose", out, shape, node.output[0], {"weight": w, "bias": b})

    def _op_PRelu(self, node, nodes, i):
        slope = self._broadcast_constant(node, node.input[1], "slope")
        if slope.shape[1:] != (1,) * (len(self.shape) - 1):
            self.fail(node, f"slope {node.input[1]!r} lies on {('N',) + self.shape} as {slope.shape}: only one slope "
                            f"per channel or one shared slope is supported")
        self._add(node, "prelu", {}, self.shape, node.output[0], {"slope": slope})

    def _op_InstanceNormalization(self, node, nodes, i):
        self._require_spatial(node)
        params = {}
        for name, what in zip(node.input[1:3], ("scale", "bias")):
            params[what] = self._const(node, name, what)
            if params[what].shape != (self.shape[0],):
                self.fail(node, f"{what} {name!r} has shape {params[what].shape}; expected ({self.shape[0]},)")
        if len(params) != 2:
            self.fail(node, "expected 3 inputs (input, scale, B)")
        self._add(node, "instancenorm", {"epsilon": float(self._attrs(node).get("epsilon", 1e-5))}, self.shape,
                  node.output[0], params)

    def _op_DepthToSpace(self, node, nodes, i):
        self._require_spatial(node)
        attrs = self._attrs(node)
        mode = attrs.get("mode", b"DCR")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        block = attrs.get("blocksize")
        if mode not in ("DCR", "CRD") or not isinstance(block, int) or block < 1 or self.shape[0] % block**2:
            self.fail(node, f"blocksize {block} (must divide the {self.shape[0]} channels as its square) or mode "
                            f"{mode!r} (DCR, CRD) not supported")
        self._add(node, "depthtospace", {"blocksize": block, "mode": mode}, None, node.output[0])

    def _op_Squeeze(self, node, nodes, i):
        axes = self._axes(node)
        if len(self.shape) != 3 or self.shape[1:] != (1, 1) or sorted(a % 4 for a in (axes or (2, 3))) != [2, 3]:
            self.fail(node, f"Squeeze of axes {axes} of {('N',) + self.shape} is supported only from [N, C, 1, 1] to "
                            f"[N, C]")
        return self._flatten(node, i)

    def _op_Unsqueeze(self, node, nodes, i):
        axes = self._axes(node)
        if len(self.shape) != 1 or sorted(a % 4 for a in (axes or ())) != [2, 3]:
            self.fail(node, f"Unsqueeze of axes {axes} of {('N',) + self.shape} is supported only from [N, F] to "
                            f"[N, F, 1, 1]")
        self._add(node, "unsqueeze", {}, None, node.output[0])

    def _axes(self, node):
        axes = self._attrs(node).get("axes")  # opset < 13: an attribute
        if len(node.input) > 1 and node.input[1]:
            axes = self._const(node, node.input[1], "axes").reshape(-1)
        return None if axes is None else [int(a) for a in axes]

    def _op_Reshape_depth_to_space(self, node, nodes, i):
        """Reshape (N, C', b, b, H, W) -> Transpose (0, 1, 4, 2, 5, 3) -> Reshape (N, C', H*b, W*b), PyTorch's
        pixel shuffle, or the DCR order (N, b, b, C', H, W) with (0, 3, 4, 1, 5, 2): a depth to space."""
        readers = [j for j, n in enumerate(nodes) if node.output[0] in n.input]
        transpose = nodes[readers[0]] if len(readers) == 1 else None
        if transpose is None or transpose.op_type != "Transpose":
            return None
        perm = list(self._attrs(transpose).get("perm", []))
        modes = {(0, 1, 4, 2, 5, 3): "CRD", (0, 3, 4, 1, 5, 2): "DCR"}
        after = [j for j, n in enumerate(nodes) if transpose.output[0] in n.input]
        back = nodes[after[0]] if len(after) == 1 else None
        if tuple(perm) not in modes or back is None or back.op_type != "Reshape":
            return None
        mode = modes[tuple(perm)]
        first = [int(v) for v in self._const(node, node.input[1], "shape").reshape(-1)]
        c, h, w = self.shape
        block = first[2] if mode == "CRD" and len(first) == 6 else first[1] if len(first) == 6 else 0
        if block < 1 or c % block**2:
            return None
        expected = [c // block**2, block, block, h, w] if mode == "CRD" else [block, block, c // block**2, h, w]
        target = [int(v) for v in self._const(back, back.input[1], "shape").reshape(-1)]
        if first[1:] != expected or target[1:] != [c // block**2, h * block, w * block]:
            return None
        self.consumed.update(readers + after)
        self._add(node, "depthtospace", {"blocksize": block, "mode": mode}, None, back.output[0])
        return True


def supported_ops() -> tuple:
    """The ONNX ops the importer reads: those it translates, and the registry's one-to-one ops."""
    plain = sorted(n for n in ops.onnx_ops() if not hasattr(_Importer, f"_op_{n}"))
    return (*_TRANSLATED, *plain)


def describe(spec: ModelSpec) -> str:
    """A short human-readable summary, one layer per line."""
    lines = [f"input {spec.input_name} {spec.input_shape}"]
    chain = spec.is_chain()
    for layer in spec.layers:
        attrs = ", ".join(f"{k}={v}" for k, v in layer.attrs.items())
        reads = "" if chain else f" <- {', '.join(layer.inputs)}"
        lines.append(f"{layer.name:>14} {layer.kind:<8} -> {layer.output_shape} {attrs}{reads}")
    lines.append(f"parameters: {spec.parameter_count():,}")
    lines += [f"note: {note}" for note in spec.notes]
    return "\n".join(lines)

