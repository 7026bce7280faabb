"""What every library trains on, decided once: images, preprocessing, batch order, configuration, the loss
clip and what canonical RMSprop means; and the job folder that carries them to a training worker."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import cifar10
from spec import experiments, ops
from spec.ir import ModelSpec

# the canonical loss is -mean(log(clip(p_y, LOSS_CLIP, 1 - LOSS_CLIP))) on the softmax output, as Keras clips
LOSS_CLIP = 1e-7
PROBABILITY_KINDS = ("softmax",)  # a model ending in one of these outputs probabilities; any other ends in logits


def ends_in_logits(spec: ModelSpec) -> bool:
    """Whether the loss must apply the softmax itself: the same softmax over the classes in every library."""
    return spec.output().kind not in PROBABILITY_KINDS


def cifar_model(path) -> ModelSpec:
    """The model at `path` if it imports and maps a 3x32x32 image to 10 classes (CIFAR-10); else ModelError, one
    line for the user."""
    from spec.onnx_import import ModelError, import_model  # not at the top: workers load this module without onnx

    spec = import_model(path)
    shape, classes = tuple(spec.input_shape), tuple(spec.output().output_shape)
    if shape != (3, 32, 32) or classes != (10,):
        raise ModelError(f"{path}: takes {shape} and gives {classes}; training on CIFAR-10 needs a (3, 32, 32) "
                         f"input and 10 classes")
    return spec


# canonical RMSprop beyond lr/rho/eps: the mean square starts at 0, eps inside the root, no gradient clipping
CANONICAL_RMSPROP = {"ms_init": 0.0, "eps_placement": "inside sqrt", "grad_clip_norm": 0.0}


@dataclasses.dataclass
class TrainingData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    order: np.ndarray
    augment: dict | None = None  # config["augment"]: the harness's random crop and flip, or None
    seed: int = 0
    _converted: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def batches(self, epoch: int, batch_size: int):
        """Index arrays of the optimizer steps of `epoch`, in the harness's order."""
        row = self.order[epoch]
        return [row[i:i + batch_size] for i in range(0, len(row), batch_size)]

    def images(self, epoch: int, idx, convert=None) -> np.ndarray:
        """The training images idx as `epoch` shows them: x_train[idx], cropped and flipped as the harness drew for
        that epoch when the run augments, then `convert`ed (a library's layout, e.g. layouts.nchw_to_nhwc; without
        augmentation the whole set is converted once). Every library's trainer takes its images from here."""
        if not self.augment:
            if convert is None:
                return self.x_train[idx]
            if convert not in self._converted:
                self._converted[convert] = convert(self.x_train)
            return self._converted[convert][idx]
        draws = augmentation(self.seed, epoch, len(self.x_train), self.augment["padding"])[idx]
        x = augmented(self.x_train[idx], draws, self.augment["padding"], self.augment["fill"], self.augment["flip"])
        return x if convert is None else convert(x)


AUGMENT_STREAM = 0x61756720  # keeps the augmentation stream apart from the dropout masks' (seed, step) stream


def augmentation(seed: int, epoch: int, n: int, padding: int) -> np.ndarray:
    """(n, 3) int64 per training image of `epoch`: the crop's row and column offset into the image padded by
    `padding` on each side (0..2*padding), and 1 where it is flipped left-right. PCG64 keyed by (seed, epoch),
    read through random_raw, whose output numpy guarantees across versions (the Theano environment's old numpy
    draws the same crops)."""
    raw = np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), AUGMENT_STREAM])).random_raw(n)
    span = np.uint64(2 * padding + 1)
    return np.stack([raw % span, (raw >> np.uint64(21)) % span, (raw >> np.uint64(42)) & np.uint64(1)],
                    axis=1).astype(np.int64)


def augmented(x: np.ndarray, draws: np.ndarray, padding: int, fill: float, flip: bool = True) -> np.ndarray:
    """x (N, C, H, W) padded by `padding` pixels of value `fill` (the preprocessed black), cropped back to H x W at
    each image's offsets, and flipped left-right where drawn (with `flip`)."""
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    rows = (draws[:, 0:1] + np.arange(h))[:, None, :, None]
    cols = (draws[:, 1:2] + np.arange(w))[:, None, None, :]
    out = padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]
    flipped = (draws[:, 2] == 1) & flip
    out[flipped] = out[flipped][..., ::-1]
    return np.ascontiguousarray(out, dtype=x.dtype)


def batch_order(n: int, epochs: int, shuffle: bool, seed: int, limit: int | None = None) -> np.ndarray:
    """(epochs, m) training indices in batch order: a seeded permutation per epoch, or 0..n-1.
    `limit` keeps only the first `limit` of each epoch (a few batches, for quick runs)."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(n) if shuffle else np.arange(n) for _ in range(epochs)]
    return np.stack(rows)[:, :limit or n]


def needs(experiment: dict) -> dict:
    """How many training and test images `datasets` takes for the experiment: cifar10.find(path, **needs(e))."""
    n, split, n_val = experiment["train_images"], experiment["validation"]["split"], experiment["validation"]["images"]
    return {"train": max(n, n_val), "test": 0} if split == "train" else {"train": n, "test": n_val}


def datasets(data: cifar10.Cifar10, experiment: dict) -> tuple:
    """(x_train, y_train, x_val, y_val): float32 NCHW inputs as the experiment preprocesses them."""
    n = experiment["train_images"]
    split, n_val = experiment["validation"]["split"], experiment["validation"]["images"]
    x_val_src, y_val_src = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if len(data.x_train) < n or len(x_val_src) < n_val:
        raise cifar10.DataError(f"{data.source}: the experiment needs {n} training and {n_val} {split} images")
    return (experiments.preprocess(data.x_train[:n], experiment), data.y_train[:n].astype(np.int64),
            experiments.preprocess(x_val_src[:n_val], experiment), y_val_src[:n_val].astype(np.int64))


def without_dropout(spec: ModelSpec) -> ModelSpec:
    layers = [dataclasses.replace(l, attrs={**l.attrs, "rate": 0.0}) if l.kind == "dropout" else l
              for l in spec.layers]
    return dataclasses.replace(spec, layers=layers)


def write_job(job: Path, spec: ModelSpec, arrays: tuple, order: np.ndarray, config: dict) -> None:
    job.mkdir(parents=True, exist_ok=True)
    spec.save(job)
    x_train, y_train, x_val, y_val = arrays
    np.savez(job / "data.npz", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, order=order)
    (job / "config.json").write_text(json.dumps(config, indent=1))


def load_job(job: Path) -> tuple:
    """(spec, TrainingData, config) of a job folder written by write_job."""
    spec = ModelSpec.load(job)
    with np.load(job / "data.npz") as npz:
        arrays = (npz[k] for k in ("x_train", "y_train", "x_val", "y_val", "order"))
        config = json.loads((job / "config.json").read_text())
        data = TrainingData(*arrays, augment=config.get("augment"), seed=config["seed"])
    return spec, data, config


def config_for(experiment: dict, epochs: int, batch_size: int, mode: str, threads: int, seed: int,
               dropout: bool, dump_steps: int = 0, dropout_masks: str = "library", augment: bool = False,
               batchnorm: str = "canonical") -> dict:
    """dropout_masks: "library" (each library draws its own, seeded by `seed`) or "harness" (trainers.masks).
    augment: the experiment's random crop and flip (its "augment" table), drawn by the harness (TrainingData.images).
    batchnorm: spec.batchnorm.MODES (the trainer worker applies it to the graph with the library's native layer)."""
    opt = experiment["optimizer"]
    return {"epochs": epochs, "batch_size": batch_size, "threads": threads, "seed": seed, "dropout": dropout,
            "dropout_masks": dropout_masks if dropout else "library", "dump_steps": dump_steps,
            "optimizer": {"mode": mode, "lr": opt["lr"], "rho": opt["rho"], "eps": opt["eps"]},
            "augment": augmentation_config(experiment) if augment else None, "batchnorm": batchnorm}


def augmentation_config(experiment: dict) -> dict:
    """The experiment's augmentation as trainers apply it: crop padding and the fill value, the preprocessed
    value of a black pixel (what padding a uint8 image with zeros gives)."""
    table = experiment.get("augment")
    if not table:
        raise ValueError("the experiment defines no augmentation (no augment table in spec/experiments.toml)")
    return {"padding": int(table["crop_padding"]), "flip": bool(table["flip"]),
            "fill": float(np.float32(experiment["preprocess"]["shift"]))}


def reinitialised(spec: ModelSpec, seed: int) -> ModelSpec:
    """`spec` with fresh initial weights drawn from `seed` the way spec/seed_model.py draws them (Glorot-uniform
    kernels with Keras's fan counts, zero biases, one PCG64 stream in layer order): seed 2017 gives the
    seed model's own weights back."""
    from spec.seed_model import glorot_uniform

    rng = np.random.Generator(np.random.PCG64(seed))
    weights = dict(spec.weights)
    for node in spec.parametric():
        for param in ops.get(node.kind).params:
            key = f"{node.name}.{param.name}"
            if param.init == "glorot_uniform":
                weights[key] = glorot_uniform(rng, spec.weights[key].shape, *param.fans(spec.weights[key].shape))
            else:
                weights[key] = (np.ones_like if param.init == "ones" else np.zeros_like)(spec.weights[key])
    return dataclasses.replace(spec, weights=weights, source=f"{spec.source} (weights redrawn from seed {seed})")

