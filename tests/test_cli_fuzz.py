"""Hostile options and data files through the command lines, the way tests/fuzz_onnx.py drives the importer:
`python -m verify equivalence|steps|describe` and `python -m cli.train` end with exit 0, 1 or 2, and exit 2
means one `error:` line, no traceback and nothing written (no results folder, no --json file).

Most examples run in-process and stop at validation (verify's parse(), cifar10's loader); a few run the real
commands, each one a case that must be refused before any work, so nothing here trains or spawns a worker.
More examples: XV_CLI_FUZZ_EXAMPLES=3000 pytest tests/test_cli_fuzz.py
"""
from __future__ import annotations

import io
import math
import os
import re
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cifar10
from tests.conftest import ROOT, assert_one_line_error, run_cli
from tests.fuzz_onnx import mutate_bytes
from verify.__main__ import UsageError, parse

EXAMPLES = int(os.environ.get("XV_CLI_FUZZ_EXAMPLES", "300"))
RUNS = max(6, EXAMPLES // 50)  # real subprocess runs per property
TRAIN_CLI = "cli.train"
LIBRARY_MODULES = {"torch", "tensorflow", "keras", "theano", "tflearn", "tensorlayer", "jax"}
SETTINGS = {"deadline": None, "database": None, "derandomize": True, "suppress_health_check": list(HealthCheck)}

_seed_2017 = tomllib.loads((ROOT / "spec" / "experiments.toml").read_text())["seed-2017"]
STEPS_LIMIT = _seed_2017["epochs"] * -(-_seed_2017["train_images"] // _seed_2017["batch_size"])  # the run's steps


# --- option values and what each option must make of them -----------------------------------------

def _count_ok(text: str) -> bool:
    try:
        return int(text) >= 1
    except ValueError:
        return False


def _seconds_ok(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


HOSTILE_NUMBERS = ["0", "-0", "-1", "-7", "2.5", "1e3", "1e999", "-1e999", "nan", "NaN", "inf", "-inf", "0x10", "abc",
                   "", " ", "1s", "--", "-", "\u0663", "9" * 40, "-" + "9" * 40, "1_0"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)  # argv-safe
NUMBERS = st.one_of(st.sampled_from(HOSTILE_NUMBERS + ["1", "2", "16", str(STEPS_LIMIT), str(STEPS_LIMIT + 1), "900"]),
                    st.integers(-10**20, 10**20).map(str), st.floats().map(repr), TEXT)
LIBRARY_NAMES_OK = ["all", "pytorch", "fast-paths", "pytorch,tflearn", "tensorflow, keras-theano", "pytorch+compile"]
LIBRARY_NAMES_BAD = ["caffe", "PyTorch", "pytorch,caffe", "torch", "all,caffe", "keras"]


def _value(draw, option: str, places: dict) -> tuple:
    """(text, verdict of argparse on this occurrence, verdict of the checks after parsing if it is the last):
    each True (must accept), False (must refuse) or None (the rules leave it open)."""
    if option in ("--jobs", "--timeout", "--steps"):
        text = draw(NUMBERS)
        if option == "--steps":
            return text, _count_ok(text), not _count_ok(text) or int(text) <= STEPS_LIMIT
        return text, (_count_ok if option == "--jobs" else _seconds_ok)(text), True
    if option == "--libraries":
        text = draw(st.one_of(st.sampled_from(LIBRARY_NAMES_OK + LIBRARY_NAMES_BAD), TEXT))
        return text, True, True if text in LIBRARY_NAMES_OK else False if text in LIBRARY_NAMES_BAD else None
    if option == "--optimizer":
        text = draw(st.sampled_from(["canonical", "native", "adam", ""]))
        return text, text in ("canonical", "native"), True
    if option == "--json":
        return draw(st.sampled_from([(str(places["fresh_json"]), True, True), (str(places["file"]), True, True),
                                     (str(places["folder"]), True, False),
                                     (str(places["file"] / "r.json"), True, False)]))
    if option in ("--model", "--data"):  # any path parses; the run refuses a bad one before its work
        return draw(st.sampled_from([str(p) for p in places["paths"]])), True, True
    return None, False, True  # an option no subcommand has


@st.composite
def verify_argv(draw, places: dict) -> tuple:
    """(argv, must_accept): True/False where the options' rules decide it, None where they leave it open (a
    random library list). argparse checks every occurrence of an option; the checks after it see the last."""
    command = draw(st.sampled_from(["equivalence", "steps", "describe"]))
    options = {"equivalence": ["--model", "--libraries", "--json", "--data", "--jobs", "--timeout"],
               "steps": ["--steps", "--libraries", "--optimizer", "--json", "--data"], "describe": []}[command]
    argv, each, last = [command], [], {}
    if command == "describe" and draw(st.integers(0, 5)):
        argv.append(draw(st.sampled_from([str(p) for p in places["paths"]])))
    elif command == "describe":
        each.append(False)  # the model is required
    for option in draw(st.lists(st.sampled_from(options + ["--bogus"]), max_size=4)):
        text, ok_here, last[option] = _value(draw, option, places)
        each.append(ok_here)
        if text is None:
            argv.append(option)
        elif draw(st.booleans()) or text.startswith("-"):
            argv.append(f"{option}={text}")
        else:
            argv += [option, text]
    verdicts = each + list(last.values())
    return argv, False if False in verdicts else None if None in verdicts else True


@pytest.fixture
def places(tmp_path) -> dict:
    """Paths a user might point an option at: missing, a folder, a file, a file where a folder should be."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("not a model, not data\n")
    return {"folder": tmp_path / "folder", "file": tmp_path / "file.txt", "fresh_json": tmp_path / "out" / "r.json",
            "paths": [tmp_path / "missing.npz", tmp_path / "folder", tmp_path / "file.txt",
                      tmp_path / "file.txt" / "x.npz", tmp_path / "missing.onnx"]}


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def test_verify_options_are_checked_before_any_work(places):
    """In-process: parse() accepts exactly the option values the rules allow, refuses the rest in one line,
    imports none of the six libraries and writes nothing."""
    root = places["folder"].parent
    before_tree = _tree(root)
    seen = set()

    @settings(max_examples=EXAMPLES, **SETTINGS)
    @given(verify_argv(places))
    def property_(case):
        argv, must_accept = case
        before = set(sys.modules)
        try:
            parse(argv)
            refused = None
        except UsageError as exc:
            refused = str(exc)
        imported = {m.split(".")[0] for m in set(sys.modules) - before} & LIBRARY_MODULES
        assert not imported, (argv, imported)
        if refused is not None:
            assert refused.strip() and "\n" not in refused, (argv, refused)
        if must_accept is not None:
            assert (refused is None) == must_accept, (argv, refused)
        assert _tree(root) == before_tree, argv
        seen.add("refused" if refused else "accepted")

    property_()
    assert seen == {"refused", "accepted"}


def test_verify_refuses_hostile_options_in_one_line_through_the_real_command(places):
    root = places["folder"].parent
    before_tree = _tree(root)

    @settings(max_examples=RUNS, **SETTINGS)
    @given(verify_argv(places))
    def property_(case):
        argv, must_accept = case
        assume(must_accept is False)
        proc = run_cli("verify", *argv, timeout=120)
        assert_one_line_error(proc)
        assert _tree(root) == before_tree, argv

    property_()


@pytest.mark.parametrize("option,value", [("--timeout", "-1"), ("--timeout", "nan"), ("--jobs", "0")])
def test_the_reported_verify_options_are_refused(tmp_path, option, value):
    """Issue 11: --timeout -1 reported all six libraries as 'timed out after -1 s'; --jobs 0 was accepted."""
    out = tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", f"{option}={value}", "--json", out, timeout=300)
    assert_one_line_error(proc, option, value)
    assert not out.exists()


# --- data files --------------------------------------------------------------------------------------

DESCRS = ["|u1", "<i8", ">i4", "<u2", "<f4", "<f8", "|b1", "|O", "<U2", "|V3"]
BAD_HEADERS = [b"{}", b"garbage\n", b"{'descr': 'zz', 'fortran_order': False, 'shape': (1,)}",
               b"{'descr': '|u1', 'shape': (1,)}", b"{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 2**70)}"]
DIMS = st.one_of(st.integers(-2, 40), st.sampled_from([31, 32, 33, 3, 10**12]))


def _member(data: np.ndarray) -> dict:
    return {"descr": data.dtype.str, "shape": data.shape, "fortran": False, "version": (1, 0), "header": None,
            "cut": 0, "pad": 0, "data": data, "name": None}


def _payload(m: dict) -> bytes:
    dtype = np.dtype(m["descr"])
    if dtype.kind in "iufb":
        raw = m["data"].astype(dtype).tobytes()
    else:  # an object, string or void array: bytes no image or label could be
        raw = b"\xa5" * (m["data"].size * dtype.itemsize)
    return raw[:len(raw) - m["cut"]] + b"\x5a" * m["pad"]


def _npy(m: dict) -> bytes:
    out = io.BytesIO()
    header = {"descr": m["descr"], "fortran_order": m["fortran"], "shape": m["shape"]}
    if m["header"] is not None or m["version"] not in ((1, 0), (2, 0)):
        text = m["header"] if m["header"] is not None else repr(header).encode() + b"\n"
        width = 2 if m["version"] == (1, 0) else 4
        out.write(b"\x93NUMPY" + bytes(m["version"]) + len(text).to_bytes(width, "little") + text)
    elif m["version"] == (1, 0):
        np.lib.format.write_array_header_1_0(out, header)
    else:
        np.lib.format.write_array_header_2_0(out, header)
    return out.getvalue() + _payload(m)


def _mutate(members: dict, data) -> None:
    name = data.draw(st.sampled_from(sorted(members)))
    m = members[name]
    kind = data.draw(st.sampled_from(["descr", "shape", "fortran", "version", "header", "missing", "plain name",
                                      "extra", "cut", "pad", "label"]))
    if kind == "descr":
        m["descr"] = data.draw(st.sampled_from(DESCRS))
    elif kind == "shape":
        m["shape"] = tuple(data.draw(st.lists(DIMS, min_size=0, max_size=5)))
    elif kind == "fortran":
        m["fortran"] = True
    elif kind == "version":
        m["version"] = data.draw(st.sampled_from([(2, 0), (3, 0), (1, 1), (9, 9)]))
    elif kind == "header":
        m["header"] = data.draw(st.sampled_from(BAD_HEADERS))
    elif kind == "missing":
        del members[name]
    elif kind == "plain name":
        m["name"] = name
    elif kind == "extra":
        members["junk"] = _member(np.arange(7, dtype=np.int16))
    elif kind in ("cut", "pad"):
        m[kind] = data.draw(st.integers(1, 5000))
    elif name.startswith("y_") and m["data"].size:
        m["data"] = m["data"].copy()
        m["data"][data.draw(st.integers(0, m["data"].size - 1))] = data.draw(st.sampled_from([10, 255, -1, 2**40]))


def _violations(members: dict, counts: dict) -> list:
    """The rules of cifar10.load_npz, written out independently: for each rule the file breaks, a fragment the
    refusal may name (the loader reports the first it meets). Empty: the file must load."""
    found = []
    for split, count in counts.items():
        x, y = members.get(f"x_{split}"), members.get(f"y_{split}")
        if x is None or y is None:
            found.append("lacks")
            continue
        if any(m["header"] is not None or m["version"] not in ((1, 0), (2, 0)) for m in (x, y)):
            found.append("not a readable .npy array")
            continue
        n = x["shape"][0] if x["shape"] else -1
        if x["descr"] != "|u1" or len(x["shape"]) != 4 or tuple(x["shape"][1:]) != (32, 32, 3) or n < 0:
            found.append("must be uint8 of shape (N, 32, 32, 3)")
            continue
        if x["fortran"]:
            found.append("Fortran order")
        if np.dtype(y["descr"]).kind not in "iu" or tuple(y["shape"]) != (n,):
            found.append("integer labels")
            continue
        if any(len(_payload(m)) < math.prod(m["shape"]) * np.dtype(m["descr"]).itemsize for m in (x, y)):
            found.append("is truncated")
            continue
        rows = n if count is None else count
        if rows > n:
            found.append(f"x_{split} has {n} images, {rows} are needed")
            continue
        labels = np.frombuffer(_payload(y), y["descr"], count=rows)
        if rows and (labels.min() < 0 or labels.max() > 9):
            found.append("labels must lie in 0-9")
    return found


class _Drawer:
    """The `data.draw` the mutators expect, inside a composite strategy."""

    def __init__(self, draw):
        self.draw = draw


@st.composite
def npz_case(draw) -> tuple:
    """(npz bytes, members as written, counts asked for, the rules it breaks: a list, or None after byte
    damage)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    members = {}
    for split, top in (("train", 40), ("test", 20)):
        n = draw(st.integers(0, top))
        members[f"x_{split}"] = _member(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        members[f"y_{split}"] = _member(rng.integers(0, 10, n).astype(np.int64))
    data = _Drawer(draw)
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):  # mostly one: it decides the outcome alone
        _mutate(members, data)
    counts = {}
    for split in ("train", "test"):  # mostly what the file holds, sometimes more (64 and 2000: what the CLIs ask)
        n = len(members.get(f"y_{split}", {"data": []})["data"])
        counts[split] = draw(st.one_of(st.none(), st.integers(0, n), st.integers(0, n), st.sampled_from([n + 1, 64, 2000])))
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as archive:
        for name, m in members.items():
            archive.writestr(m["name"] or f"{name}.npy", _npy(m))
    raw = raw.getvalue()
    broken = _violations(members, counts)
    if draw(st.integers(0, 7)) == 0:
        raw, broken = mutate_bytes(raw, data), None
    return raw, members, counts, broken


def _load_or_refusal(path: Path, counts: dict):
    try:
        return cifar10.find(path, **counts)
    except cifar10.DataError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message, message
        return message


def test_hostile_npz_files_load_exactly_what_was_asked_or_are_refused_in_one_line(tmp_path):
    path = tmp_path / "data.npz"
    seen = set()

    @settings(max_examples=EXAMPLES, **SETTINGS)
    @given(npz_case())
    def property_(case):
        raw, members, counts, broken = case
        path.write_bytes(raw)
        got = _load_or_refusal(path, counts)
        seen.add("refused" if isinstance(got, str) else "loaded")
        if broken is not None:
            assert isinstance(got, str) == bool(broken), (counts, broken, got)
        if isinstance(got, str):
            assert not broken or any(fragment in got for fragment in broken), (broken, got)
            return
        for split in ("train", "test"):
            x, y = getattr(got, f"x_{split}"), getattr(got, f"y_{split}")
            rows = counts[split] if counts[split] is not None else len(x)
            assert x.dtype == np.uint8 and x.shape == (rows, 32, 32, 3) and y.shape == (rows,), (split, x.shape)
            assert y.dtype == np.int64 and (rows == 0 or (y.min() >= 0 and y.max() <= 9))
            if broken == []:  # the bytes the file holds, as numpy reads them
                want = np.frombuffer(_payload(members[f"x_{split}"]), np.uint8, count=rows * 3072)
                assert np.array_equal(x.reshape(-1), want), split

    property_()
    assert seen == {"refused", "loaded"}


def _refused_npz(data, tmp_path: Path) -> Path:
    raw, _, _, _ = data.draw(npz_case())
    path = tmp_path / f"hostile-{len(list(tmp_path.iterdir()))}.npz"
    path.write_bytes(raw)
    return path


def test_the_commands_refuse_hostile_data_files_before_any_work(tmp_path):
    """Every generated npz holds fewer than the 64 test and 2000 training images the commands need, so each
    must be refused while the data is checked: one line naming the file, nothing written."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    @settings(max_examples=RUNS, **SETTINGS)
    @given(st.data())
    def property_(data):
        path = _refused_npz(data, data_dir)
        out = tmp_path / f"out-{path.stem}"
        command = data.draw(st.sampled_from([
            ("verify", "equivalence", "--libraries", "pytorch", "--json", out / "r.json"),
            ("verify", "steps", "--libraries", "pytorch", "--steps", "1", "--json", out / "r.json"),
            (TRAIN_CLI, "pytorch", "--epochs", "1", "--max-batches", "1", "--threads", "1", "--out", out)]))
        proc = run_cli(*command, "--data", path, timeout=120)
        _assert_refused(proc, str(path))
        assert not out.exists(), command

    property_()


# --- the training command ------------------------------------------------------------------------------

def _assert_refused(proc, *fragments) -> str:
    """Exit 2, no traceback, exactly one error line and it is the last; before it at most argparse's usage."""
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text, (proc.returncode, text[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"(python -m [\w.]+( \w+)?: )?error: ", line)]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    usage = lines[:-1]
    assert not usage or (usage[0].startswith("usage: ") and all(u.startswith(" ") for u in usage[1:])), proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


@pytest.fixture
def train_places(places, tmp_path) -> dict:
    few_train, wrong_dtype = tmp_path / "few-train.npz", tmp_path / "float-images.npz"
    np.savez(few_train, x_train=np.zeros((100, 32, 32, 3), np.uint8), y_train=np.zeros(100, np.int64),
             x_test=np.zeros((100, 32, 32, 3), np.uint8), y_test=np.zeros(100, np.int64))
    np.savez(wrong_dtype, x_train=np.zeros((2000, 32, 32, 3), np.float32), y_train=np.zeros(2000, np.int64),
             x_test=np.zeros((100, 32, 32, 3), np.uint8), y_test=np.zeros(100, np.int64))
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(few_train.read_bytes()[:3000])
    return {**places, "data": [*places["paths"], few_train, wrong_dtype, corrupt]}


INT_OPTIONS = ["--epochs", "--batch-size", "--max-batches", "--seeds", "--repeat", "--workers", "--threads"]
# (option keys it sets, argv): each refused by cli.train, before it creates anything
TRAIN_BAD = [
    ({"lib"}, ["caffe"]), ({"lib"}, ["PyTorch"]), ({"--experiment"}, ["--experiment", "nope"]),
    ({"--optimizer"}, ["--optimizer", "adam"]), ({"--dropout"}, ["--dropout", "maybe"]),
    ({"--init"}, ["--init", "random"]), ({"--executor"}, ["--executor", "ray"]), ({"--bogus"}, ["--bogus"]),
    ({"--seeds", "--repeat"}, ["--seeds", "2", "--repeat", "2"]), ({"--scheduler"}, ["--scheduler", "tcp://127.0.0.1:9"]),
    ({"--repeat", "--executor"}, ["--repeat", "2", "--executor", "dask"]), ({"--seed"}, ["--seed=2.5"]),
    ({"--seed"}, ["--seed", "abc"]), ({"--timeout"}, ["--timeout", "abc"]), ({"--timeout"}, ["--timeout="]),
]
TRAIN_OK = [({"lib"}, ["pytorch"]), ({"--epochs"}, ["--epochs", "1"]), ({"--max-batches"}, ["--max-batches", "1"]),
            ({"--threads"}, ["--threads", "1"]), ({"--seed"}, ["--seed", "3"]), ({"--optimizer"}, ["--optimizer", "native"]),
            ({"--dropout"}, ["--dropout", "off"]), ({"--init"}, ["--init", "seeded"]),
            ({"--experiment"}, ["--experiment", "default"])]


@st.composite
def train_argv(draw, train_places: dict) -> list:
    """cli.train arguments with at least one that must be refused and no later one that overrides it."""
    bad = TRAIN_BAD + [({"--data"}, ["--data", str(p)]) for p in train_places["data"]] + \
        [({"--resume"}, ["--resume", str(p)]) for p in (train_places["folder"], train_places["paths"][0])]
    hostile_count = draw(NUMBERS.filter(lambda t: not _count_ok(t)))
    option = draw(st.sampled_from(INT_OPTIONS))
    bad.append(({option}, [f"{option}={hostile_count}"]))
    chosen = [draw(st.sampled_from(bad))]
    for keys, argv in draw(st.lists(st.sampled_from(TRAIN_OK + bad), max_size=4)):
        if not any(keys & k for k, _ in chosen):
            chosen.append((keys, argv))
    order = draw(st.permutations(chosen))
    return [token for _, argv in order for token in argv]


def test_the_training_command_refuses_hostile_options_before_creating_anything(train_places, tmp_path):
    @settings(max_examples=RUNS, **SETTINGS)
    @given(train_argv(train_places))
    def property_(argv):
        out = tmp_path / "results"
        proc = run_cli(TRAIN_CLI, *argv, "--out", out, timeout=120)
        _assert_refused(proc)
        assert not out.exists(), argv

    property_()


@pytest.fixture
def few_test_images(tmp_path) -> Path:
    """Enough training images for seed-2017, but 10 test images where verification needs 64."""
    path = tmp_path / "few-test.npz"
    np.savez(path, x_train=np.zeros((2000, 32, 32, 3), np.uint8), y_train=np.zeros(2000, np.int64),
             x_test=np.zeros((10, 32, 32, 3), np.uint8), y_test=np.zeros(10, np.int64))
    return path


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "too few test images", "resume a file",
                                  "timeout -1", "timeout nan", "seed -1"])
def test_training_cases_refused_before_anything_is_written(case, places, few_test_images, tmp_path):
    """Cases the old trainers.run ended in a traceback or after creating a results folder (or, for --timeout and
    --seed, started verification with a value that cannot work): the paired --data would stop a run early, so
    the line must name the option itself."""
    fresh, file_ = tmp_path / "results", places["file"]
    argv, names = {
        "out is a file": (["pytorch", "--out", file_], [str(file_)]),
        "out under a file": (["pytorch", "--out", file_ / "sub"], [str(file_)]),
        "too few test images": (["pytorch", "--data", few_test_images, "--out", fresh], ["x_test", "64"]),
        "resume a file": (["--resume", file_], [str(file_)]),
        "seed -1": (["pytorch", "--seed", "-1", "--data", few_test_images, "--out", fresh], ["--seed"]),
    }.get(case) or (["pytorch", f"--timeout={case.split()[1]}", "--data", few_test_images, "--out", fresh],
                    ["--timeout"])
    before = _tree(tmp_path)
    proc = run_cli(TRAIN_CLI, *argv, timeout=120)
    _assert_refused(proc, *names)
    assert _tree(tmp_path) == before
