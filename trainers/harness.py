"""What every library trains on, decided once: images, preprocessing, batch order, configuration."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import cifar10
from spec import experiments
from spec.ir import ModelSpec


def batch_order(n: int, epochs: int, shuffle: bool, seed: int, limit: int | None = None) -> np.ndarray:
    """(epochs, m) training indices in batch order: a seeded permutation per epoch, or 0..n-1.
    `limit` keeps only the first `limit` of each epoch (a few batches, for quick runs)."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(n) if shuffle else np.arange(n) for _ in range(epochs)]
    return np.stack(rows)[:, :limit or n]


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


def config_for(experiment: dict, epochs: int, batch_size: int, mode: str, threads: int, seed: int,
               dropout: bool, dump_steps: int = 0) -> dict:
    opt = experiment["optimizer"]
    return {"epochs": epochs, "batch_size": batch_size, "threads": threads, "seed": seed, "dropout": dropout,
            "dump_steps": dump_steps,
            "optimizer": {"mode": mode, "lr": opt["lr"], "rho": opt["rho"], "eps": opt["eps"]}}
