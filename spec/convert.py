"""Models that are not ONNX files, converted into the ONNX file every other part of the project reads.

`--model` takes an ONNX file as it is, and converts
  a Keras file (.keras)                      Keras in safe mode (no Lambda code, no unregistered classes), tf2onnx;
  a TensorFlow SavedModel (a folder)        tf.saved_model.load (protobuf, no pickles), its serving signature, tf2onnx;
  a torch.export program (.pt2)             torch.export.load with every pickle refused, torch.onnx (dynamo).
Each converter writes the opset it chooses by default; the importer converts opsets itself (spec.onnx_normalize).
TensorFlow, Keras, torch and tf2onnx are imported inside the functions: spec/ is also imported in environments
that lack them. A model that cannot be loaded or converted is a ModelError naming the converter's complaint.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from spec.onnx_import import ModelError

ACCEPTED = ("an ONNX file (.onnx), a Keras file (.keras), a TensorFlow SavedModel folder (holding saved_model.pb) "
            "or a torch.export program (.pt2)")
CONVERTED_FOLDER = Path("converted")  # where `verify` writes a converted model unless told otherwise
SOURCE_KEY, CONVERTER_KEY = "converted_from", "converter"  # metadata_props of a converted file


@dataclass(frozen=True)
class Converted:
    """The ONNX file a --model stands for; `converter` is empty when the model was ONNX already."""
    onnx_path: Path
    source: Path
    converter: str = ""
    note: str = ""

    @property
    def converted(self) -> bool:
        return bool(self.converter)

    def line(self) -> str:
        return f"converted {self.source} with {self.converter} -> {self.onnx_path}" + (f" ({self.note})" if self.note
                                                                                        else "")

    def to_json(self) -> dict:
        return {"source": str(self.source), "converter": self.converter, "onnx": str(self.onnx_path),
                **({"note": self.note} if self.note else {})}


def kind(path) -> str:
    """'onnx', 'keras', 'saved_model' or 'pt2'; ModelError for anything else."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"  # a missing .onnx file is the importer's to refuse, as before
    if not path.exists():
        raise ModelError(f"{path}: no such model file or folder")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ModelError(f"{path}: a folder without saved_model.pb is not a TensorFlow SavedModel; --model takes "
                         f"{ACCEPTED}")
    kinds = {".keras": "keras", ".pt2": "pt2"}
    if path.suffix.lower() in kinds:
        return kinds[path.suffix.lower()]
    raise ModelError(f"{path}: not a kind of model this tool reads; --model takes {ACCEPTED}")


def stem(path) -> str:
    """The name a converted file is given: the model's file or folder name without its suffix."""
    return Path(os.path.abspath(path)).stem or "model"


def default_target(path) -> Path:
    return CONVERTED_FOLDER / kept_name(path)


def to_onnx(path, target) -> Converted:
    """The model at `path` as an ONNX file: an ONNX file as it is, any other kind converted and written to
    `target`. A `target` that exists is replaced only if it was converted from the same model. ModelError
    when the model cannot be loaded or converted (the converter's complaint, one line)."""
    path, target = Path(path), Path(target)
    converter = {"onnx": None, "keras": _keras, "saved_model": _saved_model, "pt2": _pt2}[kind(path)]
    if converter is None:
        return Converted(path, path)
    _check_target(path, target)
    with _quiet():
        proto, name = converter(path)
    _write(proto, path, name, target)
    return Converted(target, path, name, "; ".join(filter(None, (_batch_note(proto), _folded_batchnorm_note(proto)))))


def to_temporary(path) -> Converted:
    """to_onnx into a temporary folder removed when the process exits (a plan made before its results folder)."""
    if kind(path) == "onnx":
        return Converted(Path(path), Path(path))
    folder = Path(tempfile.mkdtemp(prefix="xv-convert-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return to_onnx(path, folder / f"{stem(path)}.onnx")


def kept_name(source) -> str:
    """The name of a converted file kept in a results folder."""
    return f"{stem(source)}.onnx"


def keep(converted: Converted, folder: Path) -> Converted:
    """A copy of a converted file in `folder` (a results folder), the same file under its own name there."""
    target = Path(folder) / kept_name(converted.source)
    shutil.copyfile(converted.onnx_path, target)
    return Converted(target, converted.source, converted.converter, converted.note)


def kept(source, onnx_path) -> Converted:
    """The Converted of a file this module wrote earlier (its converter read from the file's metadata)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return Converted(Path(onnx_path), Path(source), props.get(CONVERTER_KEY) or "an earlier conversion")


def _check_target(source: Path, target: Path) -> None:
    if target.is_dir():
        raise ModelError(f"{target}: is a folder; name the ONNX file to write")
    if not target.exists():
        return
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - not an ONNX file: not ours to replace
        props = {}
    if props.get(SOURCE_KEY) != str(source.resolve()):
        raise ModelError(f"{target}: exists and is not a conversion of {source}; not replaced (name another "
                         f"file with --converted)")


def _write(proto, source: Path, converter: str, target: Path) -> None:
    import onnx

    for key, value in ((SOURCE_KEY, str(source.resolve())), (CONVERTER_KEY, converter)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        onnx.save(proto, str(partial))
    except Exception as exc:  # a model over protobuf's 2 GiB, a full disk
        partial.unlink(missing_ok=True)
        raise ModelError(f"{source}: the converted model could not be written to {target}: "
                         f"{_complaint(exc)}") from None
    os.replace(partial, target)


def _batch_note(proto) -> str:
    """What the user should know when the converted input's batch is fixed (the verifier then runs its images in
    batches of that size)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    if dims and dims[0].HasField("dim_value"):
        return f"the batch is fixed at {dims[0].dim_value} (save the model with a dynamic batch to vary it)"
    return ""


def _folded_batchnorm_note(proto) -> str:
    """What the user should know when the source's BatchNorm layers reach ONNX as arithmetic (Keras 3 computes an
    inference-mode BatchNormalization as a multiply and an add, which tf2onnx folds into the convolution before it):
    the same forward pass, but the converted model trains no BatchNorm. Told by the node names tf2onnx keeps."""
    if any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        return ""
    layers = {n.name.split("/batchnorm/")[0] for n in proto.graph.node if "/batchnorm/" in n.name}
    if not layers:
        return ""
    return (f"its {len(layers)} BatchNormalization layer(s) reached ONNX as arithmetic folded into the layers before "
            f"them: the forward pass is the model's, but training it trains no BatchNorm (export an ONNX file with "
            f"BatchNormalization nodes to train them)")


def _complaint(exc: BaseException) -> str:
    """The first non-blank line of an error, at most 400 characters (the converter's words, no traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line if len(line) <= 400 else line[:400] + "..."


@contextlib.contextmanager
def _quiet():
    """Nothing of what the converters print on stdout or stderr, C++ logging included (it writes to the file
    descriptors directly); the verdict on stdout and the one progress or error line stay the project's."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
            # as it was (tf2onnx sets 3 on import): the library workers started later keep their own level
            if level is None:
                os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
            else:
                os.environ["TF_CPP_MIN_LOG_LEVEL"] = level


# --- Keras and TensorFlow: tf2onnx --------------------------------------------------------------------------

def _tensorflow():
    import tensorflow as tf
    import tf2onnx

    return tf, tf2onnx


def _keras_on_tensorflow():
    """keras on its TensorFlow backend (tf2onnx traces TensorFlow functions); KERAS_BACKEND is set for the import
    only, so that the library workers started later choose their own."""
    backend = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    try:
        import keras
    finally:
        if backend is None:
            os.environ.pop("KERAS_BACKEND")
        else:
            os.environ["KERAS_BACKEND"] = backend
    return keras


def _keras(path: Path) -> tuple:
    if not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise ModelError(f"{path}: not a zip archive, so not a Keras file (model.save writes .keras files as zips)")
    tf, tf2onnx = _tensorflow()
    keras = _keras_on_tensorflow()
    if keras.backend.backend() != "tensorflow":
        raise ModelError(f"{path}: Keras runs on {keras.backend.backend()} in this process; tf2onnx needs TensorFlow")
    try:  # safe mode: a Lambda's Python code or an unregistered class is refused, not run
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - any refusal is the user's model's, in Keras's words
        raise ModelError(f"{path}: Keras (safe mode) cannot load it: {_complaint(exc)}") from None
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        raise ModelError(f"{path}: the Keras model has {len(inputs)} inputs; the project verifies models of one "
                         f"input (a subclassed model without an Input has none)")
    shape = tuple(inputs[0].shape)
    signature = (tf.TensorSpec((None, *shape[1:]), inputs[0].dtype, name=_input_name(inputs[0].name)),)
    proto = _tf2onnx(path, tf2onnx, tf.function(lambda x: model(x, training=False)), signature)
    return proto, f"Keras {keras.__version__} (safe mode) + tf2onnx {tf2onnx.__version__}"


def _saved_model(path: Path) -> tuple:
    tf, tf2onnx = _tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: TensorFlow cannot load the SavedModel: {_complaint(exc)}") from None
    signatures = dict(loaded.signatures)
    name = "serving_default" if "serving_default" in signatures else next(iter(signatures), None)
    if name is None or (name != "serving_default" and len(signatures) > 1):
        raise ModelError(f"{path}: the SavedModel has " + (f"signatures {', '.join(sorted(signatures))} and none is "
                                                           f"serving_default" if signatures else "no signatures")
                         + "; save it with one (model.export or tf.saved_model.save(..., signatures=...))")
    function = signatures[name]
    specs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    if len(specs) != 1 or len(outputs) != 1:
        raise ModelError(f"{path}: signature {name!r} has {len(specs)} inputs and {len(outputs)} outputs; the "
                         f"project verifies models of one input and one output")
    (key, spec), (out, _) = next(iter(specs.items())), next(iter(outputs.items()))
    signature = (tf.TensorSpec(spec.shape, spec.dtype, name=_input_name(key)),)
    proto = _tf2onnx(path, tf2onnx, tf.function(lambda x: function(**{key: x})[out]), signature)
    return proto, f"tf.saved_model.load (signature {name}) + tf2onnx {tf2onnx.__version__}"


def _tf2onnx(path: Path, tf2onnx, function, signature):
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: tf2onnx cannot convert it: {_complaint(exc)}") from None
    return proto


def _input_name(name: str) -> str:
    """A TensorFlow-safe input name: `verify --inputs` files name their array after it."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in str(name).split(":")[0])
    return cleaned if cleaned[:1].isalpha() else "input"


# --- torch.export: torch.onnx -------------------------------------------------------------------------------

class _Pickled(Exception):
    """A pickled object in a .pt2 archive (not a RuntimeError: torch.export.load swallows those)."""


@contextlib.contextmanager
def _no_pickles(torch):
    """torch.export.load with nothing unpickled that could run code. torch 2.13 reads a .pt2's sample inputs with
    torch.load(weights_only=True) but falls back to weights_only=False when that fails, reads tensors saved as
    pickles with weights_only=False, and custom and opaque objects with pickle.loads: here every torch.load is
    weights_only and the other two are refused."""
    from unittest import mock

    from torch.export.pt2_archive import _package

    load = torch.load

    def weights_only(*args, **kwargs):
        return load(*args, **{**kwargs, "weights_only": True})

    def refuse(*_args, **_kwargs):
        raise _Pickled("a pickled Python object")

    class _NoPickle:
        loads = staticmethod(refuse)

    with mock.patch.object(torch, "load", weights_only), mock.patch.object(_package, "pickle", _NoPickle), \
            mock.patch.object(torch._C, "_pickle_load_obj", refuse):
        yield


def _pt2(path: Path) -> tuple:
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a zip archive, so not a program torch.export.save wrote")
    import torch

    try:
        with _no_pickles(torch):
            program = torch.export.load(str(path))
    except (_Pickled, pickle.UnpicklingError):
        raise ModelError(f"{path}: torch.export.load cannot load it safely: it holds a pickled object that "
                         f"weights-only loading refuses (unpickling it could run code); refused") from None
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: torch.export.load cannot load it: {_complaint(exc)}") from None
    example = program.example_inputs[0] if program.example_inputs else ()
    try:  # optimize=False: torch.onnx's optimizer folds an evaluation-mode BatchNorm into the convolution before
        # it, and cli.train would then train a plain convolution where the program has a BatchNorm
        onnx_program = torch.onnx.export(program, example, dynamo=True, verbose=False, optimize=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: torch.onnx.export cannot convert it: {_complaint(exc)}") from None
    return onnx_program.model_proto, f"torch.export.load + torch.onnx.export (dynamo) {torch.__version__}"

