"""CIFAR-10, found locally or downloaded, and checked before use.

Where it looks, in order:
  1. a path the user gives (`--data PATH` or the CIFAR10_PATH environment variable): the official
     python-version archive, its extracted folder, or an npz like the subset below;
  2. the official archive or its extracted folder where Keras caches it (~/.keras/datasets)
     or in the project's data/ folder;
  3. an npz with x_train/y_train/x_test/y_test (uint8 NHWC, int labels), such as
     data/cifar10_subset.npz or ../shared/data/cifar10/cifar10_subset.npz beside the project;
  4. a download of the official archive into ~/.keras/datasets, checked against its md5.
The official batches are pickles; they are read with an unpickler that can build only what a
CIFAR batch contains, so a hostile file cannot run code.
A caller says how many images of each split it uses (`train=`, `test=`): only those are read (from an npz,
only their bytes are decompressed, so a 3 GB x_train costs what 2,000 images cost), and a source that holds
fewer is refused.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAMES = ("cifar-10-python.tar.gz", "cifar-10-batches-py.tar.gz")
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
ENV_VAR = "CIFAR10_PATH"
IMAGE_SHAPE = (32, 32, 3)
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(RuntimeError):
    """CIFAR-10 is missing or unusable; the message says what is wrong and what to do."""


class TooFewImages(DataError):
    """The data holds fewer images than asked for."""


@dataclass
class Cifar10:
    x_train: np.ndarray  # (N, 32, 32, 3) uint8, official order
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


# --- restricted unpickling -----------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch holds only arrays, "
                                     f"lists and strings")


def load_batch(raw: bytes, name: str) -> tuple:
    """(images NHWC uint8, labels int64) from the bytes of one official python-version batch."""
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{name}: {exc}") from None
    except Exception as exc:
        raise DataError(f"{name}: not a CIFAR-10 batch pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or labels is None:
        raise DataError(f"{name}: not a CIFAR-10 batch (expected 'data' of shape (N, 3072) and 'labels')")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _checked(images, np.asarray(labels), name)


def _checked(images: np.ndarray, labels: np.ndarray, name: str) -> tuple:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{name}: images must be uint8 of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: expected {len(images)} integer labels, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: labels must lie in 0-9, found {labels.min()}..{labels.max()}")
    return np.ascontiguousarray(images), labels.astype(np.int64)


# --- the three formats -----------------------------------------------------------------------

def _short(where: str, what: str, have: int, need: int | None) -> None:
    if need is not None and have < need:
        raise TooFewImages(f"{where}: {what} has {have} images, {need} are needed")


def _from_members(read, where: str, train: int | None = None, test: int | None = None) -> Cifar10:
    """The official batches through `read(member) -> bytes`, reading no more batches than the counts need."""
    parts = [(np.empty((0, *IMAGE_SHAPE), np.uint8), np.empty(0, np.int64))]
    for member in TRAIN_BATCHES:
        if train is not None and sum(len(p[1]) for p in parts) >= train:
            break
        parts.append(load_batch(read(member), f"{where}/{member}"))
    x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    _short(where, "the training set", len(x_train), train)
    x_test, y_test = parts[0]
    if test != 0:
        x_test, y_test = load_batch(read(TEST_BATCH), f"{where}/{TEST_BATCH}")
        _short(f"{where}/{TEST_BATCH}", "the test set", len(x_test), test)
    return Cifar10(x_train[:train], y_train[:train], x_test[:test], y_test[:test], where)


def load_folder(folder: Path, train: int | None = None, test: int | None = None) -> Cifar10:
    def read(member):
        path = folder / member
        if not path.is_file():
            raise DataError(f"{folder}: {member} is missing; expected the extracted official "
                            f"cifar-10-python.tar.gz ({', '.join(TRAIN_BATCHES)}, {TEST_BATCH})")
        return path.read_bytes()
    return _from_members(read, str(folder), train, test)


def load_archive(path: Path, train: int | None = None, test: int | None = None) -> Cifar10:
    try:
        with tarfile.open(path, "r:gz") as tar:
            def read(member):
                try:
                    handle = tar.extractfile(f"{FOLDER_NAME}/{member}")
                except KeyError:
                    handle = None
                if handle is None:
                    raise DataError(f"{path}: archive has no {FOLDER_NAME}/{member}; is it the official "
                                    f"python-version archive?")
                return handle.read()
            return _from_members(read, str(path), train, test)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: unreadable archive ({exc}); delete it and fetch it again") from None


# --- npz: only the rows asked for --------------------------------------------------------------

@dataclass
class _Npy:
    """One array of an npz as its .npy header describes it, before any of its data is read."""
    member: str
    name: str
    shape: tuple
    dtype: np.dtype
    fortran: bool
    offset: int  # where the data starts in the member
    size: int  # bytes the member holds, from the zip directory


def _read_header(stream) -> tuple:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f".npy format version {version[0]}.{version[1]} (an image or label array is saved as 1.0 "
                     f"or 2.0)")


def _npy(archive: zipfile.ZipFile, path: Path, name: str) -> _Npy:
    member = name + ".npy" if name + ".npy" in archive.namelist() else name
    try:
        with archive.open(member) as stream:
            shape, fortran, dtype = _read_header(stream)
            offset = stream.tell()
    except (ValueError, EOFError) as exc:  # numpy says "EOFError" for a header cut short
        raise DataError(f"{path}: {name} is not a readable .npy array ({exc})") from None
    return _Npy(member, name, shape, dtype, fortran, offset, archive.getinfo(member).file_size)


def _check_npy_pair(path: Path, images: _Npy, labels: _Npy) -> None:
    """Refuse, before any data is read, arrays that cannot be N images and their N labels."""
    if images.dtype != np.uint8 or len(images.shape) != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] < 0:
        raise DataError(f"{path}: {images.name} must be uint8 of shape (N, 32, 32, 3), got {images.dtype} "
                        f"{images.shape}")
    if images.fortran:
        raise DataError(f"{path}: {images.name} is stored in Fortran order; save it in C order "
                        f"(numpy.ascontiguousarray)")
    if labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]:
        raise DataError(f"{path}: {labels.name} must hold {images.shape[0]} integer labels (one per image of "
                        f"{images.name}), got {labels.dtype} {labels.shape}")
    for array in (images, labels):
        whole = array.offset + math.prod(array.shape) * array.dtype.itemsize
        if array.size < whole:
            raise DataError(f"{path}: {array.name} is truncated: its header promises {array.shape} but the "
                            f"file holds {array.size - array.offset} of its {whole - array.offset} bytes")


def _read_rows(archive: zipfile.ZipFile, path: Path, array: _Npy, rows: int) -> np.ndarray:
    """The first `rows` rows of `array`, decompressing no more of the member than they take."""
    out = np.empty((rows, *array.shape[1:]), array.dtype)
    flat = memoryview(out.reshape(-1).view(np.uint8))
    with archive.open(array.member) as stream:
        stream.read(array.offset)
        done = 0
        while done < len(flat):
            got = stream.readinto(flat[done:done + (16 << 20)])
            if not got:
                raise DataError(f"{path}: {array.name} ends after {done} bytes of data; the file is truncated")
            done += got
    return out


def load_npz(path: Path, train: int | None = None, test: int | None = None) -> Cifar10:
    """x_train, y_train, x_test, y_test from an npz (uint8 NHWC images, integer labels): the first `train` and
    `test` of each (all when None), read straight from the zip without loading the rest."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist()}
            missing = [n for n in NPZ_ARRAYS if n not in names]
            if missing:
                raise DataError(f"{path}: npz lacks {', '.join(missing)}")
            arrays = {n: _npy(archive, path, n) for n in NPZ_ARRAYS}
            counts = {"train": train, "test": test}
            for split, count in counts.items():  # every header is checked before any data is read
                _check_npy_pair(path, arrays[f"x_{split}"], arrays[f"y_{split}"])
                _short(str(path), f"x_{split}", arrays[f"x_{split}"].shape[0], count)
            splits = []
            for split, count in counts.items():
                images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
                rows = images.shape[0] if count is None else count
                splits += _checked(_read_rows(archive, path, images, rows), _read_rows(archive, path, labels, rows),
                                   f"{path} ({split})")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable npz ({type(exc).__name__}: {exc})") from None
    return Cifar10(*splits, str(path))


def load_path(path: Path, train: int | None = None, test: int | None = None) -> Cifar10:
    path = Path(path).expanduser()
    if path.is_dir():
        inner = path / FOLDER_NAME
        return load_folder(inner if inner.is_dir() else path, train, test)
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    if path.suffix == ".npz":
        return load_npz(path, train, test)
    if path.name.endswith((".tar.gz", ".tgz")):
        return load_archive(path, train, test)
    raise DataError(f"{path}: expected cifar-10-python.tar.gz, its extracted folder, or an .npz")


# --- finding it --------------------------------------------------------------------------------

def keras_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def candidates() -> list:
    """Local places, in the order they are tried (after any user-given path)."""
    places = []
    for folder in (keras_cache(), ROOT / "data"):
        places.append(folder / FOLDER_NAME)
        places += [folder / n for n in ARCHIVE_NAMES]
    places += [ROOT / "data" / "cifar10_subset.npz",
               ROOT.parent / "shared" / "data" / "cifar10" / "cifar10_subset.npz"]
    return places


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(target: Path, url: str = ARCHIVE_URL, md5: str = ARCHIVE_MD5, timeout: float = 30) -> Path:
    """Fetch the archive to target (via a .part file), checked against md5 before it is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except Exception as exc:
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({exc})") from None
    got = md5_of(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} but its md5 is {got}, not {md5}; nothing was kept")
    part.replace(target)
    return target


def find(path=None, allow_download: bool = True, train: int | None = None, test: int | None = None) -> Cifar10:
    """CIFAR-10 from the first place that has it (see the module docstring): the first `train` training and
    `test` test images in official order (None: all of them); a place holding fewer is refused."""
    given = path or os.environ.get(ENV_VAR)
    if given:
        return load_path(Path(given), train, test)
    for place in candidates():
        if place.exists():
            if place.name in ARCHIVE_NAMES and place.is_file():  # where the official archive is kept: it must be it
                got = md5_of(place)
                if got != ARCHIVE_MD5:
                    raise DataError(f"{place}: md5 {got} is not the official archive's {ARCHIVE_MD5} (truncated "
                                    f"or altered); delete it and fetch it again")
            return load_path(place, train, test)
    if allow_download:
        target = keras_cache() / ARCHIVE_NAMES[0]
        try:
            return load_archive(download(target, ARCHIVE_URL, ARCHIVE_MD5), train, test)
        except DataError as exc:
            reason = f" ({exc})"
    else:
        reason = ""
    raise DataError(f"CIFAR-10 not found{reason}. Put the official cifar-10-python.tar.gz (md5 {ARCHIVE_MD5}) "
                    f"in {keras_cache()}, or pass --data PATH / set {ENV_VAR} to the archive, its extracted "
                    f"folder or an npz with x_train, y_train, x_test, y_test")
