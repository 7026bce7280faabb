"""Finding and loading CIFAR-10: formats, validation, the restricted unpickler, download checks."""
import hashlib
import http.server
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
import zipfile

import numpy as np
import pytest

import cifar10
from tests.conftest import ROOT, assert_one_line_error, run_cli


def _batch_bytes(images, labels):
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return pickle.dumps({b"batch_label": b"x", b"labels": [int(v) for v in labels], b"data": data,
                         b"filenames": [b"f.png"] * len(images)}, protocol=2)


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 60)


def _write_official(folder, small):
    """A miniature archive in the official format: 5 train batches of 10 images, a test batch of 10."""
    images, labels = small
    members = {f"data_batch_{i + 1}": _batch_bytes(images[i * 10:(i + 1) * 10], labels[i * 10:(i + 1) * 10])
               for i in range(5)}
    members["test_batch"] = _batch_bytes(images[50:], labels[50:])
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return archive


def test_official_archive_and_extracted_folder_load_in_official_order(tmp_path, small):
    images, labels = small
    archive = _write_official(tmp_path, small)
    for data in (cifar10.load_path(archive), _extract(archive, tmp_path)):
        assert np.array_equal(data.x_train, images[:50]) and np.array_equal(data.y_train, labels[:50])
        assert np.array_equal(data.x_test, images[50:]) and np.array_equal(data.y_test, labels[50:])


def _extract(archive, tmp_path):
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    return cifar10.load_path(tmp_path / "extracted")


def test_shared_subset_npz_is_the_documented_data():
    data = cifar10.load_npz(ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_subset.npz")
    assert data.x_train.shape == (4000, 32, 32, 3) and data.x_test.shape == (1000, 32, 32, 3)
    assert data.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert data.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_user_path_comes_first(tmp_path, small, monkeypatch):
    archive = _write_official(tmp_path, small)
    monkeypatch.setenv(cifar10.ENV_VAR, str(archive))
    assert cifar10.find().source == str(archive)
    assert len(cifar10.find(archive).x_train) == 50


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    raw = pickle.dumps({b"data": evil, b"labels": [1]}, protocol=2)
    with pytest.raises(cifar10.DataError, match=r"refused to load (posix|os)\.system"):
        cifar10.load_batch(raw, "data_batch_1")
    assert not marker.exists()


def test_hostile_batch_inside_an_archive_is_refused_by_the_cli(tmp_path, small):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # test_batch: the batch verification reads
        raw = pickle.dumps({b"data": evil}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", "--data", archive)
    assert_one_line_error(proc, "test_batch", "refused to load")
    assert not marker.exists()


@pytest.mark.parametrize("problem,fragment", [
    ("labels", "labels must lie in 0-9"), ("shape", "(N, 32, 32, 3)"), ("keys", "lacks x_test"),
    ("corrupt", "not a readable npz")])
def test_bad_npz_is_refused(tmp_path, problem, fragment):
    arrays = {"x_train": np.zeros((4, 32, 32, 3), np.uint8), "y_train": np.zeros(4, np.int64),
              "x_test": np.zeros((2, 32, 32, 3), np.uint8), "y_test": np.zeros(2, np.int64)}
    if problem == "labels":
        arrays["y_train"][1] = 10
    elif problem == "shape":
        arrays["x_test"] = np.zeros((2, 3, 32, 32), np.uint8)
    elif problem == "keys":
        del arrays["x_test"]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    if problem == "corrupt":
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(cifar10.DataError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        cifar10.load_path(path)


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(www), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_is_kept_only_when_its_md5_matches(tmp_path, small, server):
    www, base = server
    archive = _write_official(www, small)
    good_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(cifar10.DataError, match="md5"):
        cifar10.download(target, f"{base}/{archive.name}", md5="0" * 32)
    assert not target.exists() and not list(target.parent.iterdir())
    cifar10.download(target, f"{base}/{archive.name}", md5=good_md5)
    assert len(cifar10.load_archive(target).x_test) == 10


def test_no_data_and_no_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar10.ENV_VAR, raising=False)
    monkeypatch.setattr(cifar10, "candidates", lambda: [tmp_path / "nothing-here"])
    monkeypatch.setattr(cifar10, "ARCHIVE_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar10, "keras_cache", lambda: tmp_path / "keras")
    with pytest.raises(cifar10.DataError) as info:
        cifar10.find()
    message = str(info.value)
    assert "CIFAR-10 not found" in message and "cifar-10-python.tar.gz" in message and "--data" in message
    assert not (tmp_path / "keras" / "cifar-10-python.tar.gz").exists()


def test_a_truncated_archive_is_refused_by_the_cli(tmp_path, small):
    whole = _write_official(tmp_path, small).read_bytes()
    archive = tmp_path / "cut" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(whole[: len(whole) // 2])
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", "--data", archive)
    assert_one_line_error(proc, str(archive), "unreadable archive")


def test_an_altered_archive_where_the_official_one_is_kept_is_refused(tmp_path, small):
    home = tmp_path / "keras"
    (home / "datasets").mkdir(parents=True)
    _write_official(home / "datasets", small)  # a valid archive, but not the official one
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", env={"KERAS_HOME": str(home),
                                                                           "CIFAR10_PATH": ""})
    assert_one_line_error(proc, "md5", "c58f30108f718f92721af3b95e74349a", "fetch it again")


# --- npz: only the rows asked for, headers checked first -----------------------------------------

def _npy_member(archive, name, shape, descr="|u1", fortran=False, version=(1, 0), fill=None):
    """Write one .npy member into an open ZipFile without holding the array in memory: row i of an image
    array is all (i % 256), labels are i % 10. `fill(handle, nbytes)` may write the data instead."""
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(handle, header)
        else:  # a version numpy writes only for exotic dtypes: magic, 4-byte length, utf-8 header
            text = repr(header).encode() + b"\n"
            handle.write(b"\x93NUMPY" + bytes(version) + len(text).to_bytes(4, "little") + text)
        nbytes = int(np.prod(shape)) * np.dtype(descr).itemsize
        if fill is not None:
            fill(handle, nbytes)
        elif len(shape) == 4:
            row = int(np.prod(shape[1:]))
            for start in range(0, shape[0], 1000):
                stop = min(shape[0], start + 1000)
                handle.write(np.repeat(np.arange(start, stop) % 256, row).astype(np.uint8).tobytes())
        else:
            handle.write((np.arange(shape[0]) % 10).astype(descr).tobytes())


def _write_npz(path, n_train=20, n_test=10, compression=zipfile.ZIP_DEFLATED, **override):
    """An npz of n_train/n_test images; override={array name: dict of _npy_member arguments}."""
    shapes = {"x_train": (n_train, 32, 32, 3), "y_train": (n_train,), "x_test": (n_test, 32, 32, 3),
              "y_test": (n_test,)}
    with zipfile.ZipFile(path, "w", compression, compresslevel=1) as archive:
        for name, shape in shapes.items():
            args = {"shape": shape, "descr": "|u1" if len(shape) == 4 else "<i8", **override.get(name, {})}
            _npy_member(archive, name, **args)
    return path


MEASURE = """
import json, resource, sys
import cifar10
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = cifar10.find(sys.argv[1], train=int(sys.argv[2]), test=int(sys.argv[3]))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
ok = bool((data.x_train[:, 0, 0, 0] == [i % 256 for i in range(len(data.x_train))]).all())
print(json.dumps({"grown_kib": grown, "train": len(data.x_train), "test": len(data.x_test), "rows_ok": ok}))
"""


@pytest.mark.parametrize("compression,n_train", [(zipfile.ZIP_DEFLATED, 50_000), (zipfile.ZIP_STORED, 20_000)])
def test_a_large_npz_is_read_only_as_far_as_the_images_asked_for(tmp_path, compression, n_train):
    """The whole official x_train (150 MB as uint8) in a compressed npz costs what 2,000 images cost: the
    loader decompresses only their bytes (the old one loaded every array whole)."""
    path = _write_npz(tmp_path / "big.npz", n_train, 10_000, compression)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), "2000", "64"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["train"] == 2000 and got["test"] == 64 and got["rows_ok"], got
    whole_kib = n_train * 3072 // 1024
    assert got["grown_kib"] < whole_kib / 8, (got, whole_kib)  # 2,000 images are 6 MB of the 60-150 MB


def _refusal(path, **counts):
    with pytest.raises(cifar10.DataError) as info:
        cifar10.load_path(path, **counts)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def _garbage(handle, nbytes):
    handle.write(b"\xff" * min(nbytes, 1 << 16))  # data that could not be what the header says


@pytest.mark.parametrize("override,fragments", [
    ({"x_train": {"descr": "<f4", "fill": _garbage}}, ["x_train must be uint8 of shape (N, 32, 32, 3)", "float32"]),
    ({"x_test": {"shape": (10, 3, 32, 32), "fill": _garbage}}, ["x_test must be uint8", "(10, 3, 32, 32)"]),
    ({"x_train": {"fortran": True, "fill": _garbage}}, ["x_train is stored in Fortran order"]),
    ({"y_train": {"shape": (19,)}}, ["y_train must hold 20 integer labels", "(19,)"]),
    ({"y_test": {"descr": "<f8"}}, ["y_test must hold 10 integer labels", "float64"]),
    ({"y_test": {"descr": "|O", "fill": _garbage}}, ["y_test must hold 10 integer labels", "object"]),
    ({"x_test": {"version": (3, 0)}}, ["x_test is not a readable .npy array", "version 3.0"]),
    ({"x_train": {"shape": (10**12, 32, 32, 3), "fill": _garbage}, "y_train": {"shape": (10**12,), "fill": _garbage}},
     ["x_train is truncated", "(1000000000000, 32"]),
])
def test_npz_headers_are_checked_before_any_data_is_read(tmp_path, override, fragments):
    message = _refusal(_write_npz(tmp_path / "bad.npz", **override))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_an_npz_with_fewer_images_than_asked_names_the_array_what_it_has_and_what_is_needed(tmp_path):
    path = _write_npz(tmp_path / "small.npz", n_train=20, n_test=10)
    assert "x_train has 20 images, 2000 are needed" in _refusal(path, train=2000, test=0)
    assert "x_test has 10 images, 64 are needed" in _refusal(path, train=0, test=64)
    data = cifar10.load_path(path, train=20, test=0)
    assert data.x_train.shape == (20, 32, 32, 3) and data.x_test.shape == (0, 32, 32, 3)
    assert data.y_train.tolist() == [i % 10 for i in range(20)] and data.x_train[19].max() == 19


def test_the_cli_refuses_an_npz_with_too_few_test_images_in_one_line(tmp_path):
    path = _write_npz(tmp_path / "few.npz", n_train=20, n_test=10)
    out = tmp_path / "r.json"
    proc = run_cli("verify", "equivalence", "--libraries", "pytorch", "--data", path, "--json", out)
    assert_one_line_error(proc, str(path), "x_test has 10 images, 64 are needed")
    assert not out.exists()
