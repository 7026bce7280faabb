"""Harness augmentation: random crop of the padded image and horizontal flip, drawn once per (seed, epoch, image)
and applied by every library's trainer through TrainingData.images."""
import hashlib
import subprocess

import numpy as np

import envs
from builders import layouts
from spec import experiments, training
from tests.conftest import ROOT


def _by_hand(x, draws, padding, fill):
    """The crop and flip written plainly, one image at a time."""
    out = np.empty_like(x)
    for i, (dy, dx, flip) in enumerate(draws):
        padded = np.full((x.shape[1], x.shape[2] + 2 * padding, x.shape[3] + 2 * padding), fill, x.dtype)
        padded[:, padding:padding + x.shape[2], padding:padding + x.shape[3]] = x[i]
        crop = padded[:, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        out[i] = crop[:, :, ::-1] if flip else crop
    return out


def test_crop_and_flip_are_what_the_draws_say():
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    draws = training.augmentation(2016, 3, 40, 4)
    assert np.array_equal(training.augmented(x, draws, 4, -1.0), _by_hand(x, draws, 4, -1.0))
    # a planted bug the check exists for: the flip applied to rows (upside down) is not the same images
    upside_down = _by_hand(x, draws, 4, -1.0)
    upside_down[draws[:, 2] == 1] = upside_down[draws[:, 2] == 1][:, :, ::-1, ::-1]
    assert not np.array_equal(training.augmented(x, draws, 4, -1.0), upside_down)


def test_draws_cover_every_offset_and_half_the_flips_and_differ_by_epoch_and_seed():
    draws = training.augmentation(2016, 0, 50000, 4)
    assert set(np.unique(draws[:, 0])) == set(range(9)) == set(np.unique(draws[:, 1]))
    assert abs(draws[:, 2].mean() - 0.5) < 0.01
    assert np.array_equal(draws, training.augmentation(2016, 0, 50000, 4))
    assert not np.array_equal(draws, training.augmentation(2016, 1, 50000, 4))
    assert not np.array_equal(draws, training.augmentation(2017, 0, 50000, 4))


def test_images_are_the_plain_ones_without_augmentation_and_converted_once():
    x = np.random.default_rng(1).standard_normal((10, 3, 4, 4)).astype(np.float32)
    data = training.TrainingData(x, np.zeros(10, np.int64), x, np.zeros(10, np.int64), np.arange(10)[None])
    idx = np.array([3, 1, 7])
    assert np.array_equal(data.images(0, idx), x[idx])
    assert np.array_equal(data.images(0, idx, layouts.nchw_to_nhwc), layouts.nchw_to_nhwc(x)[idx])
    augmented = training.TrainingData(x, data.y_train, x, data.y_val, data.order,
                                      augment={"padding": 2, "flip": True, "fill": -1.0}, seed=5)
    want = training.augmented(x[idx], training.augmentation(5, 1, 10, 2)[idx], 2, -1.0)
    assert np.array_equal(augmented.images(1, idx), want)
    assert np.array_equal(augmented.images(1, idx, layouts.nchw_to_nhwc), layouts.nchw_to_nhwc(want))


def test_the_experiment_s_fill_is_a_black_pixel_after_preprocessing():
    experiment = experiments.load("resnet20")
    config = training.augmentation_config(experiment)
    black = experiments.preprocess(np.zeros((1, 1, 1, 3), np.uint8), experiment)
    assert config == {"padding": 4, "flip": True, "fill": float(black.flat[0])}


def test_the_theano_environment_draws_the_same_crops():
    code = ("import hashlib; from spec import training; "
            "print(hashlib.sha256(training.augmentation(2016, 2, 1000, 4).tobytes()).hexdigest())")
    theano = subprocess.run([str(envs.ensure("theano")), "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert theano.returncode == 0, theano.stderr
    assert theano.stdout.strip() == hashlib.sha256(training.augmentation(2016, 2, 1000, 4).tobytes()).hexdigest()
