"""`python -m verify export`: each library exports its own build with its own ecosystem's exporter
(builders.exporter, in the library's worker process), and the exported file is verified against the canonical
model on the same inputs `verify equivalence` uses.

The exported file runs in onnxruntime; its output is judged against onnxruntime's on the canonical model by the
tolerance machinery of verify.compare: each node's float32 envelope times the policy's K (onnxruntime runs both,
so the TensorFlow-based libraries' larger K, which is for TensorFlow's own convolutions, does not apply); a
BatchNorm an exporter folded into the conv before it is judged at that Conv. Node by node where the exported names
allow: an exported node whose name holds a canonical node's name as one of its '/'-separated parts
(builders name layers and modules after nodes) stands for that node when its value, brought to the canonical
layout, has the node's shape; the last such node in the exported graph is the node's output. Layouts are followed
through the exported graph by what each ONNX op means (Conv and pooling write NCHW, a Transpose moves it, a
flatten of an NHWC map keeps (H, W, C) order, ...).
"""
from __future__ import annotations

import collections
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from builders import FAST_PATHS, LIBRARIES, layouts
from builders.exporter import EXPORTERS, NO_EXPORTER, paths
from workers import Status, number, results
from workers import run as run_worker
from workers.records import OMIT_NONE, Typed

MODULE = "builders.exporter"
PASS, MISMATCH, EXPORT_FAILED, NO_EXPORTER_STATUS = "pass", "mismatch", "export failed", "no exporter"
STATUSES = (PASS, MISMATCH, EXPORT_FAILED, NO_EXPORTER_STATUS)

CHANNELS_FIRST = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                  "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth"}
FLATTENING = {"Flatten", "Reshape"}
FEATURES = {"Gemm", "MatMul"}
NOT_DATA = {"Shape", "Size", "Constant", "ConstantOfShape", "Range"}
TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


@dataclass
class ExportRow(Typed):
    """One library's exporter: what it wrote and how the file compares with the canonical model."""
    library: str
    exporter: str  # "torchscript", "dynamo", "tf2onnx", or "-" where there is none
    status: str  # pass, mismatch, export failed, no exporter
    message: str
    wall_s: float
    exporter_version: str | None = field(default=None, metadata=OMIT_NONE)
    versions: dict[str, str] | None = field(default=None, metadata=OMIT_NONE)
    opset: int | None = field(default=None, metadata=OMIT_NONE)
    op_counts: dict[str, int] | None = field(default=None, metadata=OMIT_NONE)
    input_layout: str | None = field(default=None, metadata=OMIT_NONE)  # of the exported file's input
    output: dict | None = field(default=None, metadata=OMIT_NONE)  # verify.compare.output_stats
    nodes_matched: int | None = field(default=None, metadata=OMIT_NONE)
    nodes_total: int | None = field(default=None, metadata=OMIT_NONE)
    first_divergent: dict | None = field(default=None, metadata=OMIT_NONE)  # a node, or the output
    layers: list[dict] | None = field(default=None, metadata=OMIT_NONE)  # each matched node's error
    imports: str | None = field(default=None, metadata=OMIT_NONE)  # "yes", or the importer's refusal
    file: str | None = field(default=None, metadata=OMIT_NONE)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: expected one of {', '.join(STATUSES)}")


# --- the command line -------------------------------------------------------------------------------------

def add_parser(sub, seconds) -> None:
    """The `export` subcommand of `python -m verify`; `seconds` is the parser's type for a time limit."""
    ex = sub.add_parser("export", help="each library's own exporter on its build, verified against the canonical "
                                       "model",
                        description="Each library exports its build of the model with its own ecosystem's exporter "
                                    "(torch.onnx TorchScript and dynamo for pytorch, tf2onnx for the TensorFlow-based "
                                    "libraries, none for keras-theano); the exported file runs in onnxruntime on the "
                                    "inputs of `verify equivalence` and is compared with the canonical model, node by "
                                    "node where its names allow. Exit 0 when every exported file passes, 1 otherwise, "
                                    "2 on bad input.")
    ex.add_argument("--model", default=None, help="ONNX model (default: the canonical spec/seed_cnn.onnx)")
    ex.add_argument("--libraries", default="all",
                    help=f"comma-separated: 'all' (the six libraries) or any of {', '.join(LIBRARIES)} (default all)")
    ex.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON here")
    ex.add_argument("--out", default=None, metavar="FOLDER",
                    help="keep the exported files here (default: a temporary folder, removed at the end)")
    ex.add_argument("--data", default=None, metavar="PATH", help="CIFAR-10 archive, folder or npz")
    ex.add_argument("--timeout", type=seconds, default=900, help="seconds one export may take (default 900)")


def check(args, usage_error) -> None:
    """Refuse fast paths and an --out that is a file, before any work (the libraries are parsed already)."""
    fast = [name for name in args.libraries if name in FAST_PATHS]
    if fast:
        raise usage_error(f"--libraries {','.join(fast)}: a fast path runs its library's model a faster way; export "
                          f"takes libraries ({', '.join(LIBRARIES)}), and the fast path's library exports that model")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise usage_error(f"--out {args.out}: is a file; name a folder")


def main(args) -> int:
    """Run the parsed `export` command; the caller maps bad-input exceptions to one `error:` line."""
    from spec import experiments

    model = Path(args.model or experiments.model_path(experiments.load("verification")))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="verify-export-"))
    try:
        report = run(model, args.libraries, out, args.data, args.timeout)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print(table(report))
    print(notes(report))
    print(f"\n{report['summary']}")
    print(f"exported files {'kept in ' + str(out) if args.out else 'removed (' + str(out) + '); --out keeps them'}",
          file=sys.stderr)
    if args.json:
        results.write_json(args.json, report)
    return 0 if report["passed"] else 1


# --- the run ----------------------------------------------------------------------------------------------

def run(model_path: Path, libraries: list, out: Path, data_path=None, timeout: float = 900, log=sys.stderr) -> dict:
    """Export and verify every (library, exporter); the report as plain data. Raises ModelError/DataError on bad
    input."""
    from spec.onnx_import import import_model
    from verify.equivalence import environment, make_inputs, numerics, onnxruntime_outputs

    started = time.perf_counter()
    spec = import_model(model_path)
    x, inputs = make_inputs(spec, data_path, workers=1)
    print(f"model {model_path} ({len(spec.layers)} layers); {inputs}; exported files go to {out}", file=log,
          flush=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="export-ref-") as tmp:
        ref, converted = onnxruntime_outputs(model_path, spec, x, Path(tmp))
        envelope, account = numerics(spec, x, ref, log)
        spec.save(out)
        for library in libraries:
            for row in _library_rows(library, spec, x, ref, envelope, out, timeout):
                rows.append(row.to_json())
                print(f"{library:<17} {row.exporter:<12} {row.status:<13} {row.wall_s:6.1f} s"
                      + (f"  {row.message}" if row.message else ""), file=log, flush=True)
    exportable = [r for r in rows if r["status"] != NO_EXPORTER_STATUS]
    passed = sum(r["status"] == PASS for r in exportable)
    return {"model": str(model_path), "inputs": inputs + converted, "environment": environment(),
            "envelope": account, "rows": rows, "passed": passed == len(exportable),
            "summary": f"{passed}/{len(exportable)} exported files match the canonical model; "
                       f"{time.perf_counter() - started:.1f} s",
            "wall_s": round(time.perf_counter() - started, 2)}


def _library_rows(library: str, spec, x, ref, envelope, out: Path, timeout: float) -> list:
    if library in NO_EXPORTER:
        return [ExportRow(library, "-", NO_EXPORTER_STATUS, NO_EXPORTER[library], 0.0)]
    return [_export_one(library, exporter, spec, x, ref, envelope, out, timeout) for exporter in EXPORTERS[library]]


def _export_one(library: str, exporter: str, spec, x, ref, envelope, out: Path, timeout: float) -> ExportRow:
    onnx_path, info_path = paths(out, library, exporter)
    outcome = run_worker(MODULE, [library, exporter, out], LIBRARIES[library][1], timeout,
                         out / f"{library}.{exporter}.log")
    if outcome.status != Status.OK:
        return ExportRow(library, exporter, EXPORT_FAILED, outcome.reason, round(outcome.wall_s, 2))
    info = results.read_json(info_path)
    row = ExportRow(library, exporter, PASS, "", round(outcome.wall_s, 2), info["exporter_version"],
                    info["versions"], input_layout=info["input_layout"], file=str(onnx_path))
    try:
        _verify_file(row, onnx_path, spec, x, ref, envelope)
    except Exception as exc:  # noqa: BLE001 - a file onnxruntime cannot run is this row's failure only
        row.status, row.message = MISMATCH, f"onnxruntime cannot run the exported file: {_first(exc)}"
    row.imports = _imports(onnx_path)
    return row


def _first(exc: BaseException) -> str:
    from workers import first_line

    return f"{type(exc).__name__}: {first_line(exc)}"


def _imports(path: Path) -> str:
    """'yes' when the project's importer reads the exported file, else its one-line refusal."""
    from spec.onnx_import import import_model

    try:
        import_model(path)
    except Exception as exc:  # noqa: BLE001 - the refusal is the finding
        return "no: " + _first(exc).replace(f"{path}: ", "")
    return "yes"


# --- judging an exported file -----------------------------------------------------------------------------

def _verify_file(row: ExportRow, path: Path, spec, x, ref, envelope) -> None:
    import onnx

    from verify import compare

    model = onnx.load(str(path))
    graph = model.graph
    row.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    row.op_counts = dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))
    row.input_layout = input_layout(graph, spec, row.input_layout)
    layouts_of = tensor_layouts(graph, row.input_layout)
    candidates = _candidates(spec, graph)
    values = _run(model, sorted({t for ts in candidates.values() for t in ts}), x, row.input_layout)
    policy = compare.load_policy()  # onnxruntime runs the file: the TensorFlow libraries' own K is for their convs
    output_name, sources = spec.output().name, dict(zip((n.name for n in spec.layers), layouts.flatten_sources(spec)))
    final = _canonical(values[graph.output[0].name], layouts_of.get(graph.output[0].name), spec.output(),
                       sources[output_name])
    matched = {}
    for node in spec.layers:
        for tensor in reversed(candidates.get(node.name, [])):
            value = _canonical(values[tensor], layouts_of.get(tensor), node, sources[node.name])
            if value is not None:
                matched[node.name] = (tensor, value)
                break
    if final is None:
        row.status, row.message = MISMATCH, (f"exported output has shape {list(values[graph.output[0].name].shape)}; "
                                             f"the canonical output {[len(x), *spec.output().output_shape]}")
        return
    matched[output_name] = (graph.output[0].name, final)
    _folded_batchnorms(spec, graph, matched)
    row.nodes_matched, row.nodes_total = len(matched), len(spec.layers)
    row.layers = []
    for node in spec.layers:
        if node.name in matched:
            tensor, value = matched[node.name]
            err = compare.judge_layer(value, np.asarray(ref[node.name]), envelope.get(node.name), policy)
            row.layers.append({"name": node.name, "kind": node.kind, "exported": tensor, **err})
    row.output = compare.output_stats(final, np.asarray(ref[output_name]), policy, envelope.get(output_name))
    _verdict(row, spec)


def _folded_batchnorms(spec, graph, matched: dict) -> None:
    """Exporters fold an inference BatchNorm into the convolution before it (TorchScript's constant folding,
    tf2onnx's optimizer): the Conv named after the conv node then computes the BatchNorm's output. Where the
    BatchNorm has no exported node of its own, its conv is its only reader's input, and nothing in the exported
    graph normalises the conv's tensor, that tensor stands for the BatchNorm and the conv is unmatched."""
    readers = collections.defaultdict(set)
    for onnx_node in graph.node:
        for tensor in onnx_node.input:
            readers[tensor].add(onnx_node.op_type)
    for node in spec.layers:
        source = node.inputs[0]
        if node.kind != "batchnorm" or node.name in matched or source not in matched:
            continue
        if spec.consumers(source) == [node] and "BatchNormalization" not in readers[matched[source][0]]:
            matched[node.name] = matched.pop(source)


def _verdict(row: ExportRow, spec) -> None:
    from verify import compare

    first = next((layer for layer in row.layers if compare.diverges(layer)), None)
    out = row.output
    if first is not None:
        row.first_divergent = {k: first[k] for k in ("name", "kind", "exported", "scaled", "bound", "envelopes",
                                                     "numerics") if first.get(k) is not None}
        row.status, row.message = MISMATCH, f"first divergent node {first['name']} ({first['numerics']})"
    elif not out["allclose"] or out["argmax_disagree_decided"]:
        why = "output not allclose" if not out["allclose"] else "output argmax differs"
        row.first_divergent = {"name": spec.output().name, "kind": spec.output().kind, "numerics": why}
        row.status, row.message = MISMATCH, f"{why} at the output"


def input_layout(graph, spec, claimed: str) -> str:
    """The layout the exported file's input takes, read from its shape: NHWC when it is [N, H, W, C] (the images are
    then handed over channels-last), NCHW when [N, C, H, W]; what the exporter said where both read alike."""
    dims = tuple(d.dim_value or None for d in _dims(graph.input[0]))[1:]
    nchw, nhwc = tuple(spec.input_shape), layouts.native_shape(spec.input_shape)
    if len(dims) != 3 or nchw == nhwc or dims not in (nchw, nhwc):
        return claimed
    return "NHWC" if dims == nhwc else "NCHW"


def _run(model, names: list, x, layout: str) -> dict:
    """onnxruntime on the exported file, unfused, with the candidate tensors exposed beside the output."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    feed = layouts.nchw_to_nhwc(x) if layout == "NHWC" else x
    wanted = [o.name for o in model.graph.output]
    batch = _fixed_batch(model) or len(x)
    parts = [session.run(wanted, {model.graph.input[0].name: feed[i:i + batch]}) for i in range(0, len(x), batch)]
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(wanted)}


def _fixed_batch(model) -> int | None:
    dim = model.graph.input[0].type.tensor_type.shape.dim
    return dim[0].dim_value if dim and dim[0].dim_value > 0 else None


def _parts(text: str) -> set:
    return set(filter(None, re.split(r"[/:]", text)))


def _node_parts(onnx_node) -> set:
    """The name parts of an exported node: of its name (TorchScript's "/nodes/conv1/Conv", tf2onnx's
    "model/conv1/Conv2D") and of the module scopes the dynamo exporter records in its metadata ("nodes.conv1")."""
    found = _parts(onnx_node.name)
    for prop in onnx_node.metadata_props:
        if prop.key.endswith("name_scopes"):
            found |= set(filter(None, re.split(r"[\]\[',.\s]+", prop.value)))
    return found


def _candidates(spec, graph) -> dict:
    """{canonical node: the float outputs of exported nodes named after it, in exported graph order}."""
    found = {}
    for node in spec.layers:
        names = {node.name, layouts.safe_name(node.name), layouts.scope_name(node.name), re.sub(r"\W", "_", node.name)}
        pattern = re.compile("|".join(rf"{re.escape(n)}(_\d+)?" for n in names))
        found[node.name] = [out for onnx_node in graph.node if onnx_node.op_type not in NOT_DATA
                            if any(pattern.fullmatch(p) for p in _node_parts(onnx_node))
                            for out in onnx_node.output[:1]]
    return found


def tensor_layouts(graph, input_layout: str) -> dict:
    """{tensor: its layout} as the exported graph's ops make it: NCHW, NHWC, flat-CHW, flat-HWC (a flatten of an
    NCHW or NHWC map), features (after a Gemm or MatMul), or None where unknown."""
    known = {graph.input[0].name: input_layout if len(_dims(graph.input[0])) == 4 else "features"}
    for node in graph.node:
        first = next((known[t] for t in node.input if known.get(t)), None)
        if node.op_type in NOT_DATA:
            layout = None
        elif node.op_type in CHANNELS_FIRST:
            layout = "NCHW"
        elif node.op_type == "Transpose":
            perm = tuple(next((list(a.ints) for a in node.attribute if a.name == "perm"), ()))
            layout = {("NCHW", TO_NHWC): "NHWC", ("NHWC", TO_NCHW): "NCHW"}.get((first, perm))
        elif node.op_type in FLATTENING:
            layout = {"NHWC": "flat-HWC", "NCHW": "flat-CHW"}.get(first, first)
        elif node.op_type in FEATURES:
            layout = "features"
        else:
            layout = first
        known.update(dict.fromkeys(node.output, layout))
    return known


def _dims(value_info) -> list:
    return list(value_info.type.tensor_type.shape.dim)


def _canonical(value: np.ndarray, layout: str | None, node, flatten_from):
    """An exported tensor in the canonical layout of `node`'s output, or None when it cannot be that output."""
    if value.dtype.kind != "f":
        return None
    if value.ndim == 4:
        if layout not in ("NCHW", "NHWC"):
            return None
        value = value.transpose(*TO_NCHW) if layout == "NHWC" else value
    elif value.ndim == 2 and layout == "flat-HWC" and flatten_from is not None:
        value = layouts.to_canonical(value, flatten_from)
    elif value.ndim == 2 and layout == "flat-CHW" and flatten_from is None and _hwc_flatten(node):
        return None  # a (C, H, W)-ordered vector where the canonical node holds (H, W, C) order
    if tuple(value.shape[1:]) != tuple(node.output_shape):
        return None
    return np.ascontiguousarray(value, dtype=np.float32)


def _hwc_flatten(node) -> bool:
    return node.kind == "flatten" and node.attrs.get("order") == "HWC"


# --- the table --------------------------------------------------------------------------------------------

def table(report: dict) -> str:
    head = ("| library | exporter | version | opset | input | exported ops | max abs diff | max rel diff | "
            "nodes matched | numerics | imports | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *(_table_row(r) for r in report["rows"])])


def notes(report: dict) -> str:
    """Lines under the table: how the inputs were handed over and how the nodes were judged."""
    nhwc = [f"{r['library']} ({r['exporter']})" for r in report["rows"] if r.get("input_layout") == "NHWC"]
    lines = [f"inputs: {report['inputs']}"]
    if nhwc:
        lines.append(f"NHWC input in {', '.join(nhwc)}: the same images handed to the exported file channels-last "
                     f"(transposed from NCHW), its outputs compared in the canonical layout")
    lines.append("nodes matched: canonical nodes an exported node is named after (the output always); each judged "
                 "as `verify equivalence` judges onnxruntime's own numerics, K = "
                 f"{report['envelope']['k']:g} x its float32 envelope (verify/tolerances.json)")
    return "\n".join(lines)


def _table_row(r: dict) -> str:
    out = r.get("output") or {}
    ops = ", ".join(f"{op} {n}" for op, n in r["op_counts"].items()) if r.get("op_counts") else "-"
    matched = f"{r['nodes_matched']}/{r['nodes_total']}" if r.get("nodes_matched") is not None else "-"
    verdict = r["status"].upper() + (f": {r['message']}" if r["message"] else "")
    return (f"| {r['library']} | {r['exporter']} | {r.get('exporter_version') or '-'} | {r.get('opset') or '-'} | "
            f"{r.get('input_layout') or '-'} | {ops} | {number(out.get('max_abs'), '.1e')} | "
            f"{number(out.get('max_rel'), '.1e')} | {matched} | {_worst(r.get('layers'))} | {_short(r.get('imports'))} "
            f"| {verdict} |")


def _worst(layers) -> str:
    judged = [layer["envelopes"] for layer in layers or [] if layer.get("envelopes") is not None]
    return f"≤ {max(judged):.2g} envelopes" if judged else "-"


def _short(text: str | None) -> str:
    return "-" if text is None else text if len(text) <= 100 else text[:97] + "..."
