"""The comparator's node bounds, in process: each node's float32 error envelope from the float64 reference,
judged on real onnxruntime outputs against a second, independent float32 implementation of the graph (the op
registry's numpy math run in float32: another summation order, as another library has)."""
import weakref

import numpy as np
import pytest

from spec import ops
from spec.onnx_import import import_model, load_onnx
from tests.conftest import SEED_MODEL
from tests.model_zoo import cancellation_cnn
from verify import compare, reference

POLICY = compare.load_policy()


def numpy_float32(spec, x, plant=None) -> dict:
    """Every node's output computed by spec.ops in float32; plant(node, params) may change a node's parameters."""
    values = {spec.input_name: x}
    for node in spec.layers:
        params = {k: np.asarray(v, np.float32) for k, v in spec.params(node).items()}
        if plant:
            params = plant(node, params)
        values[node.name] = ops.get(node.kind).forward(node.attrs, params, [values[t] for t in node.inputs])[0]
        values[node.name] = values[node.name].astype(np.float32)
    return values


def judged(path, x, tmp_path):
    """(spec, onnxruntime's outputs as a NodeStore, every node's envelope) for inputs x."""
    spec = import_model(path)
    store = reference.write_layer_outputs(load_onnx(path), spec, x, tmp_path / "onnxruntime")
    envelope, note = compare.envelopes(spec, reference.float32_errors(spec, x, store), POLICY)
    assert note == "" and all(e is not None for e in envelope.values())
    return spec, store, envelope


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    x = np.random.default_rng(0).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    return (x, *judged(SEED_MODEL, x, tmp_path_factory.mktemp("seed")))


def test_a_second_float32_implementation_is_within_numerics_at_every_node(seed):
    x, spec, store, envelope = seed
    result = compare.compare(spec, numpy_float32(spec, x), store, POLICY, envelope)
    assert result["verdict"] == "pass", result["first_divergent_layer"]
    assert {layer["numerics"] for layer in result["layers"]} == {"within numerics"}
    assert max(layer["envelopes"] for layer in result["layers"]) < POLICY["envelope_k"] / 2


def test_a_tiny_planted_error_is_many_envelopes_off_at_its_node_on_a_shallow_graph(seed):
    # a folded input normalisation 1/0.229 written as 4.367: conv1's kernel 4.3e-5 too large, an error the
    # fixed bound of 1e-4 cannot see
    x, spec, store, envelope = seed
    factor = np.float32(4.367 * 0.229)

    def plant(node, params):
        return {**params, "weight": params["weight"] * factor} if node.name == "conv1" else params
    got = numpy_float32(spec, x, plant)
    assert compare.compare(spec, got, store, POLICY)["verdict"] == "pass"  # the fixed bound misses it
    result = compare.compare(spec, got, store, POLICY, envelope)
    where = result["first_divergent_layer"]
    assert result["verdict"] == "mismatch" and where["name"] == "conv1", where
    assert where["scaled"] < POLICY["layer_scaled_tol"] and where["envelopes"] > 4 * POLICY["envelope_k"], where
    assert where["numerics"] == f"{where['envelopes']:.2g} envelopes off"


def test_a_deep_graphs_legitimate_float32_drift_passes_where_the_fixed_bound_fails(tmp_path):
    path = cancellation_cnn(tmp_path / "cancellation.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    spec, store, envelope = judged(path, x, tmp_path)
    got = numpy_float32(spec, x)
    fixed = compare.compare(spec, got, store, POLICY)
    assert fixed["verdict"] == "mismatch" and fixed["first_divergent_layer"]["kind"] == "batchnorm"
    result = compare.compare(spec, got, store, POLICY, envelope)
    assert result["verdict"] == "pass", result["first_divergent_layer"]
    drift = max(layer["scaled"] for layer in result["layers"])
    assert drift > 2 * POLICY["layer_scaled_tol"], drift


def test_a_softmax_of_logits_tied_within_float32_is_not_held_to_its_digits(tmp_path):
    # AlexNet's 'light' zoo file in miniature: equal weight columns and huge logits, so onnxruntime's logits tie
    # exactly and its softmax is uniform, while a library summing in another order breaks the ties by an ulp
    # and saturates; no float32 implementation can settle this output
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.repeat(np.random.default_rng(2).uniform(0, 1e9, (64, 1)), 10, axis=1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"])],
        "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(10, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "tied.onnx")
    x = np.random.default_rng(3).uniform(0, 1, (8, 64)).astype(np.float32)
    spec, store, envelope = judged(tmp_path / "tied.onnx", x, tmp_path)
    logits = store["logits" if "logits" in store else spec.layers[0].name]
    assert np.ptp(logits, axis=1).max() == 0  # onnxruntime's logits tie exactly
    nudged = logits + np.spacing(logits) * np.random.default_rng(4).integers(-1, 2, logits.shape)
    e = np.exp(nudged - nudged.max(axis=1, keepdims=True))
    got = {spec.layers[0].name: nudged.astype(np.float32), spec.layers[1].name: (e / e.sum(1, keepdims=True))}
    assert compare.compare(spec, got, store, POLICY)["verdict"] == "mismatch"  # the fixed bound false-alarms
    result = compare.compare(spec, got, store, POLICY, envelope)
    assert result["verdict"] == "pass", (result["first_divergent_layer"], result["output"])
    assert result["output"]["argmax_disagree_decided"] == 0 and result["output"]["atol"] >= 0.5


def test_bounds_floor_an_exact_node_and_give_up_where_the_references_disagree():
    spec = import_model(SEED_MODEL)
    names = [node.name for node in spec.layers]
    floor = compare.envelope_floor(POLICY)
    errors = {name: (0.0, 0.0) for name in names}
    envelope, note = compare.envelopes(spec, errors, POLICY)
    assert set(envelope.values()) == {floor} and note == ""
    errors["conv3"] = (1e-2, 1e-7)  # onnxruntime computes something else than the float64 reference here
    envelope, note = compare.envelopes(spec, errors, POLICY)
    after = names[names.index("conv3"):]
    assert [n for n in names if envelope[n] is None] == after
    assert "departs from onnxruntime at conv3" in note and f"{len(after)} node(s)" in note
    envelope, note = compare.envelopes(spec, None, POLICY)
    assert set(envelope.values()) == {None}


def test_onnxruntime_outputs_written_in_chunks_equal_one_run(seed, tmp_path, monkeypatch):
    x, spec, _, _ = seed
    monkeypatch.setattr(reference, "CHUNK_BYTES", 3 * spec.activation_bytes())  # chunks of 3 images
    store = reference.write_layer_outputs(load_onnx(SEED_MODEL), spec, x, tmp_path)
    whole = reference.layer_outputs(load_onnx(SEED_MODEL), spec, x)
    for name in store:
        assert np.array_equal(store[name], whole[name]), name
    assert np.array_equal(store.head("conv2", 2), whole["conv2"][:2])


class Recorded(dict):
    """A library's outputs that note each read and keep a weak reference to what they handed out."""

    def __init__(self, values):
        super().__init__(values)
        self.reads, self.handed = [], []

    def __getitem__(self, name):
        self.reads.append(name)
        alive = [n for n, ref in self.handed if ref() is not None]
        assert not alive, f"{alive} still held when {name} is read"
        array = np.array(super().__getitem__(name))  # a fresh array, as an npz read is
        self.handed.append((name, weakref.ref(array)))
        return array


def test_the_comparator_reads_each_node_once_in_graph_order_and_lets_it_go(seed):
    x, spec, store, envelope = seed
    got = Recorded(numpy_float32(spec, x))
    assert compare.compare(spec, got, store, POLICY, envelope)["verdict"] == "pass"
    assert got.reads == [node.name for node in spec.layers]


def test_where_the_float64_reference_cannot_run_the_fixed_bound_judges_and_the_report_says_so(seed, monkeypatch):
    import dataclasses
    import io

    from verify import equivalence

    x, spec, store, _ = seed
    got = numpy_float32(spec, x)

    def missing(attrs, params, xs):
        raise NotImplementedError("no float64 forward for maxpool")
    monkeypatch.setitem(ops.REGISTRY, "maxpool", dataclasses.replace(ops.REGISTRY["maxpool"], forward=missing))
    log = io.StringIO()
    envelope, account = equivalence.numerics(spec, x, store, log)
    assert set(envelope.values()) == {None} and account["images"] == 0
    assert "cannot run this model (NotImplementedError: no float64 forward for maxpool)" in account["note"]
    assert "fixed bound 0.0001" in account["note"] and account["note"] in log.getvalue()
    result = compare.compare(spec, got, store, POLICY, envelope)
    assert {layer["numerics"] for layer in result["layers"]} == {"within the fixed bound"}
    assert equivalence.envelope_line({"envelope": account}).startswith("node bounds: the float64 reference cannot")
