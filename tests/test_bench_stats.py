"""benchmarks.stats, bench.precision and benchmarks.compare on synthetic runs whose truth is known: intervals that
cover it, disturbed epochs left out, a planted 5 % slowdown flagged in the one library it was planted in."""
import numpy as np

from benchmarks import bench, compare, stats

LIBS = ("a", "b", "c")


def _epochs(rng, seconds: float, n: int, noise: float, pressure: float = 0.0) -> list:
    walls = seconds * np.exp(noise * rng.standard_normal(n))
    return [{"epoch": k, "train_s": float(w), "train_loss": 2.0, "train_acc": 0.1, "eval_s": 0.1, "val_loss": 2.0,
             "val_acc": 0.1, "cpu_s": float(1.9 * w), "steal_s": 0.0, "pressure_s": pressure * float(w)}
            for k, w in enumerate(walls)]


def _doc(seed: int, slower: dict | None = None, runs: int = 3, epochs: int = 9, noise: float = 0.02) -> dict:
    """A benchmark results document: every library `runs` fresh runs of `epochs` epochs of about 1 s (times
    `slower[library]`), lognormal noise."""
    rng = np.random.default_rng(seed)
    doc = {"environment": {"cores": 2}, "config": {"threads": 2, "epochs": epochs, "batch_size": 128},
           "runs": {f"repeat{r + 1}": {lib: {"status": "ok", "record": {"epochs": _epochs(
               rng, (slower or {}).get(lib, 1.0), epochs, noise)}} for lib in LIBS} for r in range(runs)}}
    doc["benchmark"] = {"libraries": {lib: {"images_per_s": {"median": 1.0, "min": 1.0, "max": 1.0}}
                                      for lib in LIBS}}
    return doc


def test_a_ratio_interval_covers_the_true_ratio_and_narrows_with_more_epochs():
    rng = np.random.default_rng(1)
    wide = stats.ratio_interval(list(1.05 * np.exp(0.03 * rng.standard_normal(6))),
                                list(np.exp(0.03 * rng.standard_normal(6))))
    narrow = stats.ratio_interval(list(1.05 * np.exp(0.03 * rng.standard_normal(60))),
                                  list(np.exp(0.03 * rng.standard_normal(60))))
    assert narrow["low"] <= 1.05 <= narrow["high"] and wide["low"] <= 1.05 <= wide["high"]
    assert narrow["high"] - narrow["low"] < (wide["high"] - wide["low"]) / 2
    assert stats.ratio_interval([1.0], [1.0])["low"] is None  # one epoch is no interval


def test_disturbed_epochs_are_left_out_and_counted():
    rng = np.random.default_rng(2)
    calm, busy = _epochs(rng, 1.0, 8, 0.01), _epochs(rng, 1.6, 3, 0.01, pressure=0.9)
    rows = {"repeat1": {"status": "ok", "record": {"epochs": [calm[0], *calm[1:], *busy]}}}
    plain = {"repeat1": {"epoch_s": [e["train_s"] for e in calm], "epoch_cpu_s": [e["cpu_s"] for e in calm]}}
    got = bench.precision(rows, plain, 1000, {"training": 1e9}, 100.0, 2, stats.policy())
    assert (got["epochs"], got["disturbed"], got["left_out"]) == (10, 3, 3)
    assert got["overhead_wall"]["low"] <= 1.0 <= got["overhead_wall"]["high"]  # the busy epochs are not counted
    assert got["overhead_cpu"]["ratio"] is not None


def test_two_identical_runs_compare_the_same_and_a_planted_5_percent_slowdown_is_flagged_alone():
    base, again = _doc(3), _doc(4)
    assert {n: r["verdict"] for n, r in compare.compare(base, again)["libraries"].items()} == dict.fromkeys(
        LIBS, "same")
    slowed = compare.compare(base, _doc(5, slower={"b": 1.05}))["libraries"]
    assert {n: r["verdict"] for n, r in slowed.items()} == {"a": "same", "b": "regression", "c": "same"}
    assert slowed["b"]["clock"] == "cpu" and slowed["b"]["detectable"] < 0.05
    faster = compare.compare(_doc(6, slower={"c": 1.05}), base)["libraries"]
    assert faster["c"]["verdict"] == "improvement"


def _side_by_side_doc(seed: int, runs: int = 10, epochs: int = 4, machine: float = 1.0, harness: dict | None = None,
                      process: float = 0.01, noise: float = 0.01) -> dict:
    """A benchmark whose harness and plain loops took turns epoch by epoch: each process has a speed of its own
    (lognormal, `process`), each epoch its noise, a drift shared by the two sides of a run; the machine `machine`
    times slower for both; harness[library]: the harness alone that much slower."""
    rng = np.random.default_rng(seed)
    doc = {"environment": {"cores": 2}, "config": {"threads": 2, "epochs": epochs, "batch_size": 128},
           "runs": {}, "plain": {}}
    for r in range(runs):
        key, drift = f"repeat{r + 1}", machine * np.exp(0.05 * rng.standard_normal(epochs))
        doc["runs"][key], doc["plain"][key] = {}, {}
        for lib in LIBS:
            h = (harness or {}).get(lib, 1.0) * drift * np.exp(process * rng.standard_normal()
                                                               + noise * rng.standard_normal(epochs))
            p = drift * np.exp(process * rng.standard_normal() + noise * rng.standard_normal(epochs))
            doc["runs"][key][lib] = {"status": "ok", "record": {"epochs": [
                {"train_s": float(w), "cpu_s": float(1.9 * w), "steal_s": 0.0, "pressure_s": 0.0} for w in h]}}
            doc["plain"][key][lib] = {"status": "ok", "epoch_s": [float(w) for w in p],
                                      "epoch_cpu_s": [float(1.9 * w) for w in p], "turns": "epoch"}
    doc["benchmark"] = {"libraries": {lib: {"images_per_s": {"median": 1.0, "min": 1.0, "max": 1.0}}
                                      for lib in LIBS}}
    return doc


def test_side_by_side_intervals_take_runs_as_the_replicates():
    """Processes differ by 5 %: an interval over runs covers the truth about 95 % of the time; pooling every pair
    (the control) pretends the epochs of one process are independent and misses it far more often."""
    covered, pooled = 0, 0
    for seed in range(40):
        doc = _side_by_side_doc(seed, runs=6, process=0.05)
        rows, plain = bench.of_library(doc["runs"], "a"), bench.of_library(doc["plain"], "a")
        figure = bench.overhead(rows, plain, 2, stats.policy())
        assert figure["paired"] == 6
        covered += figure["overhead_wall"]["low"] <= 1.0 <= figure["overhead_wall"]["high"]
        pairs = [h[0] / p[0] for run in bench.side_by_side(rows, plain).values() for h, p in run]
        naive = stats.median_interval(pairs)
        pooled += naive["low"] <= 1.0 <= naive["high"]
    assert covered >= 34 and pooled <= 30


def test_compare_judges_the_harness_cost_so_the_machine_drift_between_benchmarks_cancels():
    base = _side_by_side_doc(10)
    slower_machine = compare.compare(base, _side_by_side_doc(11, machine=1.10))["libraries"]
    assert {n: r["verdict"] for n, r in slower_machine.items()} == dict.fromkeys(LIBS, "same")
    assert all(r["judged_by"] == "overhead" for r in slower_machine.values())
    assert all(r["time_ratio"]["low"] > 1.05 for r in slower_machine.values())  # the control: raw time sees the drift
    planted = compare.compare(base, _side_by_side_doc(12, machine=0.95, harness={"b": 1.05}))["libraries"]
    assert {n: r["verdict"] for n, r in planted.items()} == {"a": "same", "b": "regression", "c": "same"}
    assert planted["b"]["detectable"] < 0.03
    assert planted["b"]["overhead_change"]["low"] <= 1.05 <= planted["b"]["overhead_change"]["high"]


def test_compare_rarely_alarms_on_identical_benchmarks_and_finds_a_planted_5_percent_harness_slowdown():
    """40 pairs of benchmarks like this machine's (16 runs then 8, per-process speeds within 1 %): at most a few false
    alarms over 200 library comparisons (the candidate's machine 5 % slower in half of them), and a 5 % harness
    slowdown planted in one library flagged in most pairs."""
    alarms, found = 0, 0
    for seed in range(40):
        base = _side_by_side_doc(100 + seed, runs=16, epochs=3)
        same = compare.compare(base, _side_by_side_doc(200 + seed, runs=8, epochs=3, machine=1.05))["libraries"]
        alarms += sum(r["verdict"] != "same" for r in same.values())
        planted = compare.compare(base, _side_by_side_doc(300 + seed, runs=8, epochs=3, harness={"b": 1.05}))
        found += planted["libraries"]["b"]["verdict"] == "regression"
        alarms += sum(planted["libraries"][n]["verdict"] != "same" for n in ("a", "c"))
    assert alarms <= 4 and found >= 36


def test_target_ci_runs_on_only_the_libraries_whose_interval_is_still_wide():
    """--target-ci decides per library: one with processes 10 % apart still needs runs after 6, the steady ones
    do not; before three runs nobody has an interval (two that agree by chance must not stop a library); a library
    missing from later runs keeps its judged width."""
    doc = _side_by_side_doc(20, runs=6, process=0.005, noise=0.005)
    wide = _side_by_side_doc(21, runs=6, process=0.10)
    for key in doc["runs"]:
        doc["runs"][key]["b"], doc["plain"][key]["b"] = wide["runs"][key]["b"], wide["plain"][key]["b"]
    found = bench.widths(doc["runs"], doc["plain"], LIBS, 2)
    assert bench.unsettled(found, 0.03) == ["b"], found
    assert found["a"][0] < 0.03 < found["b"][0] and found["a"][1] in ("wall", "cpu")
    two = [f"repeat{k}" for k in (1, 2)]
    early = bench.widths({k: doc["runs"][k] for k in two}, {k: doc["plain"][k] for k in two}, LIBS, 2)
    assert early == dict.fromkeys(LIBS, (None, None)) and bench.unsettled(early, 0.03) == list(LIBS)
    for key in ("repeat5", "repeat6"):  # "a" was settled and not run again: its width stays within the target
        del doc["runs"][key]["a"], doc["plain"][key]["a"]
    assert bench.unsettled(bench.widths(doc["runs"], doc["plain"], LIBS, 2), 0.03) == ["b"]


def test_target_ci_does_not_judge_a_library_on_disturbed_epochs():
    """A library whose side-by-side epochs were disturbed in all but two runs has no interval to judge however
    narrow the kept epochs make it (on 2026-12-03 TensorFlow stopped on 3 runs, 4 of 6 pairs stolen from); with
    the stolen time gone (the control) the same runs settle it."""
    doc = _side_by_side_doc(22, runs=6, process=0.005, noise=0.005)
    assert bench.unsettled(bench.widths(doc["runs"], doc["plain"], LIBS, 2), 0.03) == []
    for key in ("repeat3", "repeat4", "repeat5", "repeat6"):
        for epoch in doc["runs"][key]["a"]["record"]["epochs"]:
            epoch["steal_s"] = 0.2 * epoch["train_s"]  # 10 % of two cores: beyond the policy's 5 %
    found = bench.widths(doc["runs"], doc["plain"], LIBS, 2)
    assert found["a"] == (None, None) and bench.unsettled(found, 0.03) == ["a"], found
    rows, plain = bench.of_library(doc["runs"], "a"), bench.of_library(doc["plain"], "a")
    assert bench.clean_runs(bench.side_by_side(rows, plain), 2, stats.policy()) == 2
