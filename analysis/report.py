"""From per-library training rows to the results: summary figures, Markdown table, JSON, plots."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from spec.training import CANONICAL_RMSPROP
from workers import results
from workers.records import Optimizer, Summary, TrainingResults, TrainingRow

TOLERANCES = Path(__file__).resolve().parent.parent / "trainers" / "tolerances.json"


def summary(row: TrainingRow, images_per_epoch: int) -> Summary:
    epochs = row.record.epochs
    times = [e.train_s for e in epochs]
    steady = statistics.median(times[1:]) if len(times) > 1 else None
    last = epochs[-1] if epochs else None
    return Summary(
        epochs_done=len(epochs),
        first_epoch_s=times[0] if times else None,
        steady_epoch_s=steady,
        images_per_s=images_per_epoch / steady if steady else None,
        first_epoch_images_per_s=images_per_epoch / times[0] if times else None,
        peak_rss_mib=row.record.peak_rss_mib,
        **{k: getattr(last, k) if last else None for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
    )


def summarize(row: dict, images_per_epoch: int) -> dict:
    """`summary` of a row in its JSON form (as analysis.sweep reads a results document)."""
    return summary(TrainingRow.from_json(row), images_per_epoch).to_json()


def departures(optimizer: Optimizer | None, canonical: dict) -> list:
    """How a library's RMSprop differs from canonical, one phrase per difference."""
    if optimizer is None:
        return ["unknown (the worker reported no optimizer)"]
    want = {**canonical, **CANONICAL_RMSPROP}
    out = []
    for key, label in (("lr", "lr"), ("rho", "rho"), ("eps", "eps"), ("ms_init", "mean-square starts at"),
                       ("eps_placement", "eps"), ("grad_clip_norm", "gradients clipped to global norm")):
        got = getattr(optimizer, key)
        same = got == want[key] if isinstance(got, str) else np.isclose(got, want[key], rtol=1e-9, atol=0)
        if not same:
            out.append(f"{label} {got:g}" if not isinstance(got, str) else f"{label} {got}")
            out[-1] += f" (canonical {want[key]:g})" if not isinstance(want[key], str) else f" (canonical {want[key]})"
    return out


def step_agreement(rows: dict, steps: int, rtol) -> dict:
    """Losses of the first `steps` optimizer steps across libraries ({name: TrainingRow}), against their median;
    rtol: one bound, or one per step."""
    rtol = list(rtol) if isinstance(rtol, (list, tuple)) else [rtol] * steps
    losses = {f: [s.loss for s in r.record.steps[:steps]] for f, r in rows.items() if r.status == "ok"}
    losses = {f: v for f, v in losses.items() if len(v) == steps}
    if len(losses) < 2:
        return {"steps": steps, "rtol": rtol, "libraries": {}, "agree": None}
    median = np.median(np.array(list(losses.values())), axis=0)
    per_lib = {}
    for f, v in losses.items():
        rel = np.abs(np.array(v) - median) / np.abs(median)
        first_bad = next((k for k, r in enumerate(rel) if r > rtol[k]), None)
        per_lib[f] = {"losses": v, "max_rel_dev": float(rel.max()), "agrees": first_bad is None,
                      "first_bad_step": None if first_bad is None else first_bad + 1}
    return {"steps": steps, "rtol": rtol, "median": median.tolist(), "libraries": per_lib,
            "agree": all(p["agrees"] for p in per_lib.values())}


def environment(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        blas = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "python": sys.version.split()[0],
            "platform": platform.platform(), "numpy_blas (orchestrator)": blas}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def dropout_words(config: dict) -> str:
    if not config["dropout"]:
        return "dropout off"
    return "identical dropout masks" if config.get("dropout_masks") == "harness" else "each library's own dropout"


def heading(run: TrainingResults) -> list:
    config, env = run.config, run.environment
    model = Path(run.model).name
    on = f" on {model}" if model and model != run.experiment_spec.get("model") else ""
    return [f"# Training results: {run.experiment}{on}, {config['optimizer']['mode']} RMSprop, {dropout_words(config)}",
            "",
            f"{run.images_per_epoch} training images per epoch, batch {config['batch_size']}, "
            f"{config['epochs']} epoch(s), {config['threads']} thread(s); {run.validation}. "
            f"CPU: {env['cpu']} ({env['cores']} cores).",
            "", *_augment_lines(config), *_batchnorm_lines(run), *_fast_path_lines(run.fast_paths)]


def _augment_lines(config: dict) -> list:
    a = config.get("augment")
    if not a:
        return []
    return [f"Augmentation: random crop of the image padded by {a['padding']} pixels"
            + (" and horizontal flip" if a["flip"] else "") + ", drawn by the harness per epoch and image and "
            "applied identically in every library.", ""]


def _batchnorm_lines(run: TrainingResults) -> list:
    """Each library's BatchNorm departures from canonical, when the run trains other semantics."""
    mode = run.config.get("batchnorm", "canonical")
    if mode == "canonical":
        return []
    from builders import native_batchnorm

    rows = next(iter(run.runs.values()), {})
    what = "each library's own layer and defaults" if mode == "native" else f"canonical but for the native {mode}"
    lines = [f"BatchNorm semantics: {mode} ({what}):", ""]
    for name, row in rows.items():
        native = native_batchnorm(name)
        found = [d for d in row.departures or [] if d.startswith("BatchNorm")]
        lines.append(f"- {name}: {native.layer} ({native.written}): "
                     + ("; ".join(found) or "no departure from canonical"))
    return lines + [""]


def _fast_path_lines(fast_paths: dict) -> list:
    """What each fast-path row changed (run["fast_paths"]: {name: {"base": library, "changes": text}})."""
    if not fast_paths:
        return []
    return ["Fast paths: the same model and arithmetic as the library named, run a faster way, and verified "
            "against onnxruntime like the libraries before being timed.", "",
            *[f"- {name} ({f['base']}): {f['changes']}" for name, f in fast_paths.items()], ""]


def markdown(run: TrainingResults) -> str:
    """The single-run table of `run.libraries`, with the step agreement when there is one."""
    mode = run.config["optimizer"]["mode"]
    lines = heading(run) + [
             "| library | status | first epoch s | steady epoch s | images/s | peak RSS MiB | train loss | train acc "
             "| val loss | val acc | RMSprop |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in run.libraries.items():
        s = row.summary
        if row.status != "ok":
            opt = row.reason
        elif mode == "native":
            impl = row.record.optimizer.impl if row.record.optimizer else "unknown"
            found = [d for d in row.departures if not d.startswith("BatchNorm")]
            opt = f"{impl}: " + ("; ".join(found) or "no departure from canonical")
        else:
            opt = (row.record.optimizer and row.record.optimizer.how) or "library's own, already canonical"
        lines.append(f"| {name} | {row.status} | {_fmt(s.first_epoch_s, '.2f')} | {_fmt(s.steady_epoch_s, '.2f')} "
                     f"| {_fmt(s.images_per_s or s.first_epoch_images_per_s, '.0f')} "
                     f"| {_fmt(s.peak_rss_mib, '.0f')} | {_fmt(s.train_loss, '.4f')} | {_fmt(s.train_acc, '.3f')} "
                     f"| {_fmt(s.val_loss, '.4f')} | {_fmt(s.val_acc, '.3f')} | {opt} |")
    agreement = run.step_agreement
    if agreement and agreement["libraries"]:
        rtol = ", ".join(f"{r:.1e}" for r in agreement["rtol"])
        lines += ["", f"First {agreement['steps']} optimizer-step losses (tolerance per step {rtol} relative to the "
                      f"median of the libraries: the fixed bound, or {agreement.get('envelope_k', 0):g} times how far "
                      f"float32 rounding alone moves the reference's own step loss where larger): "
                      + ("all agree" if agreement["agree"] else "DISAGREE"), ""]
        lines += [f"- {f}: {', '.join(f'{v:.7f}' for v in a['losses'])} (max deviation {a['max_rel_dev']:.1e})"
                  + ("" if a["agrees"] else f" — departs at step {a['first_bad_step']}")
                  for f, a in agreement["libraries"].items()]
    lines += ["", "Images/s is steady-state (median of epochs after the first) when there is more than one epoch, "
                  "else the first epoch's. The first epoch includes graph building, tracing and compilation. "
                  "Peak RSS is the training worker's own peak resident memory."]
    return "\n".join(lines) + "\n"


def judge_lines(runs: dict) -> list:
    """The judge's section: onnxruntime's evaluation of each trained model beside the library's own; a table for one
    run, the count and every exception for several ({run key: {name: row}})."""
    judged = [(key, name, row.judge) for key, rows in runs.items() for name, row in rows.items() if row.judge]
    if not judged:
        return []
    lines = ["The judge: onnxruntime evaluates each library's trained model (models/<library>.onnx, the canonical "
             "graph with its trained parameters and BatchNorm statistics) on the same validation images with the "
             "canonical loss; a library whose own last evaluation differs beyond float noise is flagged.", ""]
    if len(runs) == 1:
        lines += ["| library | own val loss | judge val loss | own val acc | judge val acc | verdict |",
                  "|---|---|---|---|---|---|"]
        for _, name, j in judged:
            own = runs[next(iter(runs))][name].record.epochs[-1]
            verdict = j.verdict if j.verdict == "agrees" else f"**{j.verdict.upper()}**: {j.reason}"
            lines.append(f"| {name} | {own.val_loss:.5f} | {_fmt(j.val_loss, '.5f')} | {own.val_acc:.4f} "
                         f"| {_fmt(j.val_acc, '.4f')} | {verdict} |")
        return lines
    agree = sum(j.verdict == "agrees" for _, _, j in judged)
    lines.append(f"Own evaluation agrees with the judge in {agree} of {len(judged)} trained models"
                 + ("." if agree == len(judged) else ":"))
    lines += [f"- {name} ({key}): **{j.verdict.upper()}** — {j.reason}" for key, name, j in judged
              if j.verdict != "agrees"]
    return lines


def plots(run: TrainingResults, folder: Path) -> list:
    """curves.png and speed.png of the run's libraries, in the results folder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [_save(curves_figure(run.libraries, f"{run.experiment}, {run.config['optimizer']['mode']} RMSprop"),
                     folder / "curves.png"),
               _save(speed_figure(run.libraries, run.environment["threads"]), folder / "speed.png")]
    plt.close("all")
    return written


def step_curve(row: TrainingRow) -> tuple:
    """(x, loss) of every optimizer step, x in epochs: epoch + (step + 1) / that epoch's steps, so epoch k's
    last step lands on k + 1, where its validation point is."""
    per_epoch = {}
    for s in row.record.steps:
        per_epoch[s.epoch] = per_epoch.get(s.epoch, 0) + 1
    return ([s.epoch + (s.step + 1) / per_epoch[s.epoch] for s in row.record.steps],
            [s.loss for s in row.record.steps])


def curves_figure(libraries: dict, title: str):
    """Loss: every step's training loss as a thin line per library, validation loss at each epoch's end on top;
    accuracy: training accuracy per epoch (dashed) and validation accuracy (filled markers). Epochs on x."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (loss, acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    last = 1
    for i, (name, row) in enumerate(libraries.items()):
        color, epochs = f"C{i % 10}", row.record.epochs
        if row.record.steps:
            loss.plot(*step_curve(row), color=color, linewidth=0.9, alpha=0.85, label=name)
        if epochs:
            ends = [e.epoch + 1 for e in epochs]
            last = max(last, ends[-1])
            loss.plot(ends, [e.val_loss for e in epochs], "o", color=color, markeredgecolor="black", markersize=6,
                      zorder=3)
            acc.plot(ends, [e.train_acc for e in epochs], "--", marker="o", fillstyle="none", color=color)
            acc.plot(ends, [e.val_acc for e in epochs], "o", color=color, markeredgecolor="black", markersize=6,
                     zorder=3, label=name)
    loss.set_title("loss: line = each training step, ● = validation at the epoch's end", fontsize=10)
    acc.set_title("accuracy: ○ dashed = training (epoch), ● = validation", fontsize=10)
    for ax in (loss, acc):
        ax.set_xlabel("epoch")
        ax.set_xlim(0, last * 1.03)  # room for the markers on the last epoch's end
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def speed_figure(libraries: dict, threads: int):
    """Images/s per library, steady state beside the first epoch; "n/a" where a library has no steady state
    (it trained one epoch)."""
    import matplotlib.pyplot as plt

    timed = {n: r.summary for n, r in libraries.items() if r.summary and r.summary.first_epoch_images_per_s}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x, summaries = np.arange(len(timed)), list(timed.values())
    steady = [i for i, s in enumerate(summaries) if s.images_per_s]
    if steady:
        ax.bar(x[steady] - 0.2, [summaries[i].images_per_s for i in steady], 0.4, color="C0", label="steady state")
    for i in sorted(set(range(len(timed))) - set(steady)):
        ax.text(x[i] - 0.2, 0, "steady\nn/a", ha="center", va="bottom", fontsize=9)
    ax.bar(x + 0.2, [s.first_epoch_images_per_s for s in summaries], 0.4, color="C1", label="first epoch")
    ax.set_xticks(x, list(timed), rotation=20)
    ax.set_xlim(-0.6, len(timed) - 0.4)  # the steady slots, bar or n/a, inside even where no bar stands
    ax.set_ylabel("training images / s")
    ax.set_title(f"Training speed, {threads} thread(s); steady state = median of epochs 2 and later "
                 f"(n/a: one epoch)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return results.write_atomic(path, buffer.getvalue())


def load_tolerances() -> dict:
    return json.loads(TOLERANCES.read_text())
