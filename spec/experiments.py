"""The experiments of spec/experiments.toml, read as plain dicts."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

FILE = Path(__file__).with_name("experiments.toml")


def load(name: str) -> dict:
    experiments = tomllib.loads(FILE.read_text())
    if name not in experiments:
        raise KeyError(f"no experiment {name!r} in {FILE.name}; known: {', '.join(experiments)}")
    return experiments[name]


def model_path(experiment: dict) -> Path:
    return FILE.with_name(experiment["model"])


def preprocess(images_nhwc: np.ndarray, experiment: dict) -> np.ndarray:
    """uint8 NHWC images -> float32 NCHW inputs, scaled as the experiment says."""
    p = experiment["preprocess"]
    x = images_nhwc.astype(np.float32) * np.float32(p["scale"]) + np.float32(p["shift"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
