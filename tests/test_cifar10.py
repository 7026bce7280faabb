"""Finding and loading CIFAR-10: formats, validation, the restricted unpickler, download checks."""
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

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
    with tarfile.open(archive, "w:gz") as tar:
        raw = pickle.dumps({b"data": evil}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    proc = run_cli("verify", "equivalence", "--frameworks", "pytorch", "--data", archive)
    assert_one_line_error(proc, "data_batch_1", "refused to load")
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
    proc = run_cli("verify", "equivalence", "--frameworks", "pytorch", "--data", archive)
    assert_one_line_error(proc, str(archive), "unreadable archive")


def test_an_altered_archive_where_the_official_one_is_kept_is_refused(tmp_path, small):
    home = tmp_path / "keras"
    (home / "datasets").mkdir(parents=True)
    _write_official(home / "datasets", small)  # a valid archive, but not the official one
    proc = run_cli("verify", "equivalence", "--frameworks", "pytorch", env={"KERAS_HOME": str(home),
                                                                           "CIFAR10_PATH": ""})
    assert_one_line_error(proc, "md5", "c58f30108f718f92721af3b95e74349a", "fetch it again")
