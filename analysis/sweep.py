"""Seed sweeps: per library, mean and spread over seeds, and which library differences are significant.

The test, correction and threshold are data (trainers/tolerances.json, "significance").
"""
from __future__ import annotations

import itertools
import statistics
from pathlib import Path

import numpy as np

from analysis import report

METRIC_WORDS = {"val_acc": "final validation accuracy", "val_loss": "final validation loss"}


def finals(runs: dict, name: str, metric: str, epochs: int) -> list:
    """`metric` after the last epoch, for every seed whose run of `name` finished all `epochs`."""
    out = []
    for rows in runs.values():
        row = rows.get(name)
        if row and row["status"] == "ok" and len(row["record"]["epochs"]) == epochs:
            out.append(row["record"]["epochs"][-1][metric])
    return out


def _spread(values: list) -> dict:
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None, "values": []}
    return {"n": len(values), "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "values": values}


def _speed(summary: dict):
    return summary["images_per_s"] or summary["first_epoch_images_per_s"]


def drift(runs: dict, names: list) -> dict:
    """How far the libraries' training losses drift apart: per epoch, the largest relative deviation of any
    library's step loss from the median of the libraries at that step, as the median over seeds (and the
    worst seed). With identical masks this is numerics alone; with each library's own dropout, numerics
    plus randomness."""
    per_seed = []
    for rows in runs.values():
        losses = {n: rows[n]["record"]["steps"] for n in names if n in rows and rows[n]["status"] == "ok"}
        if len(losses) < 2 or len({len(v) for v in losses.values()}) != 1:
            continue
        steps = next(iter(losses.values()))
        table = np.array([[s["loss"] for s in v] for v in losses.values()])
        rel = np.abs(table - np.median(table, axis=0)) / np.abs(np.median(table, axis=0))
        epochs = np.array([s["epoch"] for s in steps])
        per_seed.append([float(rel[:, epochs == e].max()) for e in range(epochs.max() + 1)])
    if not per_seed:
        return {"seeds": 0, "per_epoch_median": [], "per_epoch_worst": []}
    values = np.array(per_seed)
    return {"seeds": len(per_seed), "per_epoch_median": np.median(values, axis=0).tolist(),
            "per_epoch_worst": values.max(axis=0).tolist()}


def summarize(runs: dict, names: list, epochs: int, images_per_epoch: int) -> dict:
    out = {}
    for name in names:
        speeds = [_speed(report.summarize(rows[name], images_per_epoch)) for rows in runs.values()
                  if name in rows and rows[name]["status"] == "ok"]
        speeds = [s for s in speeds if s]
        out[name] = {metric: _spread(finals(runs, name, metric, epochs)) for metric in METRIC_WORDS}
        out[name]["images_per_s"] = {"median": statistics.median(speeds) if speeds else None,
                                     "min": min(speeds, default=None), "max": max(speeds, default=None)}
        out[name]["seeds_ok"] = out[name]["val_acc"]["n"]
    return out


def holm(pvalues: list) -> list:
    """Holm-Bonferroni adjusted p-values, in the order given (NaN stays NaN and is not counted)."""
    valid = [i for i, p in enumerate(pvalues) if not np.isnan(p)]
    adjusted = [float("nan")] * len(pvalues)
    running, m = 0.0, len(valid)
    for rank, i in enumerate(sorted(valid, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def significance(runs: dict, names: list, epochs: int, rules: dict) -> dict:
    """Every pair of libraries, per metric: difference of means, Welch's 95% interval, t, p, Holm-adjusted p,
    and whether the difference is significant at rules["alpha"]."""
    from scipy import stats

    out = {"test": rules["test"], "correction": rules["correction"], "alpha": rules["alpha"], "metrics": {}}
    for metric in rules["metrics"]:
        pairs = []
        for a, b in itertools.combinations(names, 2):
            xa, xb = finals(runs, a, metric, epochs), finals(runs, b, metric, epochs)
            pair = {"a": a, "b": b, "n_a": len(xa), "n_b": len(xb), "mean_diff": None, "ci95": None,
                    "t": None, "p": float("nan"), "note": ""}
            if len(xa) < 2 or len(xb) < 2:
                pair["note"] = "fewer than 2 finished seeds"
            else:
                pair["mean_diff"] = statistics.fmean(xa) - statistics.fmean(xb)
                if np.var(xa) == 0 and np.var(xb) == 0:
                    pair["note"] = "no variance in either library"
                else:
                    result = stats.ttest_ind(xa, xb, equal_var=False)
                    interval = result.confidence_interval(0.95)
                    pair.update(t=float(result.statistic), p=float(result.pvalue),
                                ci95=[float(interval.low), float(interval.high)])
            pairs.append(pair)
        for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs])):
            pair["p_adjusted"] = adjusted
            pair["significant"] = bool(not np.isnan(adjusted) and adjusted < rules["alpha"])
        out["metrics"][metric] = pairs
    return out


def _f(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def markdown(run: dict) -> list:
    sweep, sig = run["sweep"], run["significance"]
    varies = ", ".join(run["varies"])
    lines = [f"{len(run['seeds'])} seeds per library ({', '.join(map(str, run['seeds']))}); between seeds: {varies}.",
             "", "| library | seeds ok | val acc mean ± sd | min–max | val loss mean ± sd | min–max | images/s median (min–max) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in sweep.items():
        acc, loss, speed = s["val_acc"], s["val_loss"], s["images_per_s"]
        lines.append(f"| {name} | {s['seeds_ok']}/{len(run['seeds'])} | {_f(acc['mean'], '.4f')} ± {_f(acc['sd'], '.4f')} "
                     f"| {_f(acc['min'], '.3f')}–{_f(acc['max'], '.3f')} | {_f(loss['mean'], '.4f')} ± {_f(loss['sd'], '.4f')} "
                     f"| {_f(loss['min'], '.3f')}–{_f(loss['max'], '.3f')} | {_f(speed['median'], '.0f')} "
                     f"({_f(speed['min'], '.0f')}–{_f(speed['max'], '.0f')}) |")
    for metric, pairs in sig["metrics"].items():
        hits = [p for p in pairs if p["significant"]]
        lines += ["", f"Significance of {METRIC_WORDS[metric]} differences: {sig['test']}, {sig['correction']}, "
                      f"alpha {sig['alpha']:g}. {len(hits)} of {len(pairs)} pairs differ significantly.", "",
                  "| pair | mean difference (a − b) | 95% interval | p | p adjusted | significant |", "|---|---|---|---|---|---|"]
        for p in pairs:
            ci = f"{p['ci95'][0]:+.4f} … {p['ci95'][1]:+.4f}" if p["ci95"] else "-"
            verdict = "yes" if p["significant"] else ("no" + (f" ({p['note']})" if p["note"] else ""))
            lines.append(f"| {p['a']} − {p['b']} | {_f(p['mean_diff'], '+.4f')} | {ci} | {_f(p['p'], '.3g')} "
                         f"| {_f(p['p_adjusted'], '.3g')} | {verdict} |")
    d = run.get("drift") or {}
    if d.get("seeds"):
        lines += ["", "Drift between libraries (largest relative deviation of a step loss from the libraries' median, "
                      "per epoch; median over seeds, worst seed in brackets): "
                  + ", ".join(f"epoch {e + 1} {m:.1e} ({w:.1e})"
                              for e, (m, w) in enumerate(zip(d["per_epoch_median"], d["per_epoch_worst"])))]
    lines += ["", "Final validation accuracy per seed:", "",
              "| library | " + " | ".join(f"seed {s}" for s in run["seeds"]) + " |",
              "|---|" + "---|" * len(run["seeds"])]
    for name in sweep:
        cells = []
        for seed in run["seeds"]:
            row = run["runs"][str(seed)].get(name)
            epochs = row["record"]["epochs"] if row else []
            cells.append(f"{epochs[-1]['val_acc']:.3f}" if row and row["status"] == "ok" and epochs else row["status"] if row else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(r.get("executor", {}).get("shared") for rows in run["runs"].values() for r in rows.values()):
        lines += ["", "Speeds were measured on a shared cluster, several jobs at a time: they are not comparable "
                      "with each other or with a local run."]
    return lines


def plots(run: dict, folder: Path) -> list:
    """curves.png: each library's mean validation accuracy and loss per epoch, with the min–max band over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, metric in zip(axes, ("val_acc", "val_loss")):
        for name in run["sweep"]:
            curves = [[e[metric] for e in rows[name]["record"]["epochs"]] for rows in run["runs"].values()
                      if name in rows and rows[name]["status"] == "ok"]
            curves = [c for c in curves if len(c) == run["config"]["epochs"]]
            if not curves:
                continue
            values = np.array(curves)
            x = np.arange(1, values.shape[1] + 1)
            ax.plot(x, values.mean(0), marker="o", label=name)
            ax.fill_between(x, values.min(0), values.max(0), alpha=0.15)
        ax.set_title(f"{METRIC_WORDS[metric].replace('final ', '')} (mean, band = min–max over seeds)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = report._save(fig, folder / "curves.png")
    plt.close("all")
    return [path]
