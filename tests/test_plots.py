"""curves.png and speed.png read at a glance: a 1-epoch run is a curve of every step, on whole-epoch ticks, and a
library without a steady state says n/a (analysis/report.py)."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from analysis import report  # noqa: E402
from workers.records import Epoch, Record, Step, TrainingRow  # noqa: E402

IMAGES = 96  # per epoch: 3 steps of 32


def _row(epochs: int, steps: int = 3, seconds: float = 2.0) -> TrainingRow:
    record = Record(None, [Step(e, s, 2.3 - 0.1 * (e * steps + s), 32) for e in range(epochs) for s in range(steps)],
                    [Epoch(e, seconds * (2 if e == 0 else 1), 2.2, 0.1 + e / 10, 0.1, 2.1, 0.15 + e / 10)
                     for e in range(epochs)])
    row = TrainingRow("ok", "", record)
    row.summary = report.summary(row, IMAGES)
    return row


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_a_one_epoch_run_is_a_line_of_every_step_on_whole_epoch_ticks():
    fig = report.curves_figure({"pytorch": _row(1), "tflearn": _row(1, seconds=3.0)}, "one epoch")
    loss, acc = fig.axes
    lines = [line for line in loss.get_lines() if line.get_label() in ("pytorch", "tflearn")]
    assert [line.get_label() for line in lines] == ["pytorch", "tflearn"]
    for line in lines:
        assert list(line.get_xdata()) == pytest.approx([1 / 3, 2 / 3, 1.0])
        assert list(line.get_ydata()) == pytest.approx([2.3, 2.2, 2.1])
    for ax in (loss, acc):
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [0, 1] and ax.get_xlim()[0] == 0 and 1 < ax.get_xlim()[1] < 1.1
    markers = [line for line in loss.get_lines() if line.get_marker() == "o"]
    assert [list(m.get_xdata()) for m in markers] == [[1], [1]]  # each library's validation loss at the epoch's end


def test_steps_of_later_epochs_run_on_from_the_epoch_they_belong_to():
    x, losses = report.step_curve(_row(2, steps=4))
    assert x == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]) and len(losses) == 8


def test_speed_says_n_a_where_a_library_has_no_steady_state():
    fig = report.speed_figure({"pytorch": _row(1), "tflearn": _row(2)}, 2)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["steady\nn/a"]
    assert ax.texts[0].get_position()[0] == pytest.approx(-0.2)  # pytorch's steady bar would stand there
    assert ax.get_xlim()[0] < -0.4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["steady state", "first epoch"]
    assert "steady state = median of epochs 2 and later" in ax.get_title()
    alone = report.speed_figure({"pytorch": _row(1)}, 2).axes[0]
    assert [t.get_text() for t in alone.get_legend().get_texts()] == ["first epoch"]  # no empty steady entry


def test_a_one_epoch_sweep_shows_its_spread_on_whole_epoch_ticks():
    from analysis import sweep

    runs = {str(seed): {"pytorch": _row(1).to_json()} for seed in (1, 2)}
    runs["2"]["pytorch"]["record"]["epochs"][0]["val_acc"] = 0.25
    fig = sweep.curves_figure({"sweep": {"pytorch": {}}, "runs": runs, "config": {"epochs": 1}})
    acc = fig.axes[0]
    fig.canvas.draw()
    assert [t for t in acc.get_xticks() if 0 <= t <= acc.get_xlim()[1]] == [0, 1]
    (spread,) = acc.collections[1].get_segments()  # the min–max bar at epoch 1
    assert spread[:, 1].tolist() == pytest.approx([0.15, 0.25])
