"""analysis.attribution on made-up sweeps: gaps, single-departure effects and remainders as the numbers say."""
import pytest

from analysis import attribution

RULES = {"alpha": 0.05, "power": 0.8}
SEEDS = [1, 2, 3, 4]


def _doc(mode, finals: dict) -> dict:
    """A sweep document whose libraries end at finals[library][k] (val_acc; val_loss = 1 - it) at seed k."""
    runs = {str(s): {name: {"status": "ok", "record": {"epochs": [{"val_acc": v[k], "val_loss": 1 - v[k]}]}}
                     for name, v in finals.items()} for k, s in enumerate(SEEDS)}
    return {"experiment": "e", "model": "m.onnx", "images_per_epoch": 10, "seeds": SEEDS, "runs": runs,
            "config": {"epochs": 1, "optimizer": {"mode": "canonical"}, "augment": None, "batchnorm": mode}}


def test_a_gap_splits_into_its_departures_and_a_remainder():
    canonical = _doc("canonical", {"a": [0.30, 0.32, 0.28, 0.31]})
    native = _doc("native", {"a": [0.10, 0.13, 0.09, 0.10]})
    momentum = _doc("momentum", {"a": [0.12, 0.14, 0.10, 0.12]})
    result = attribution.attribute({"canonical": canonical, "native": native, "momentum": momentum},
                                   {"a": ["BatchNorm momentum 0.99 (canonical 0.9)"]}, RULES)
    row = result["metrics"]["val_acc"]["a"]
    assert row["gap"]["mean_diff"] == pytest.approx(-0.1975)
    assert row["alone"]["momentum"]["mean_diff"] == pytest.approx(-0.1825)
    assert row["remainder"] == pytest.approx(-0.0150)
    assert row["gap"]["significant"] and row["alone"]["momentum"]["significant"]
    text = attribution.markdown(result, {"canonical": "c", "native": "n", "momentum": "m"})
    assert "| a | momentum 0.99 (canonical 0.9) |" in text


def test_sweeps_of_one_mode_merge_by_library_and_refuse_overlap_or_another_pairing():
    left, right = _doc("momentum", {"a": [0.1] * 4}), _doc("momentum", {"b": [0.2] * 4})
    both = attribution.merged([left, right])
    assert set(both["runs"]["1"]) == {"a", "b"} and set(left["runs"]["1"]) == {"a"}
    with pytest.raises(ValueError, match="a trained in two sweeps"):
        attribution.merged([left, left])
    other = {**right, "seeds": [5, 6, 7, 8]}
    with pytest.raises(ValueError, match="must share"):
        attribution.merged([left, other])


def test_a_sweep_that_does_not_pair_with_canonical_is_refused():
    canonical = _doc("canonical", {"a": [0.3] * 4})
    native = {**_doc("native", {"a": [0.1] * 4}), "images_per_epoch": 20}
    with pytest.raises(ValueError, match="does not pair"):
        attribution.attribute({"canonical": canonical, "native": native}, {"a": []}, RULES)
