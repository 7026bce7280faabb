"""Seed sweeps: per library, mean and spread over seeds, and which library differences are significant.

The test, correction and threshold are data (trainers/tolerances.json, "significance").
"""
from __future__ import annotations

import itertools
import statistics
import warnings
from pathlib import Path

import numpy as np

from analysis import report

METRIC_WORDS = {"val_acc": "final validation accuracy", "val_loss": "final validation loss"}


def finals_by_seed(runs: dict, name: str, metric: str, epochs: int) -> dict:
    """{seed: `metric` after the last epoch}, for every seed whose run of `name` finished all `epochs`."""
    out = {}
    for seed, rows in runs.items():
        row = rows.get(name)
        if row and row["status"] == "ok" and len(row["record"]["epochs"]) == epochs:
            out[seed] = row["record"]["epochs"][-1][metric]
    return out


def finals(runs: dict, name: str, metric: str, epochs: int) -> list:
    """`metric` after the last epoch, for every seed whose run of `name` finished all `epochs`."""
    return list(finals_by_seed(runs, name, metric, epochs).values())


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


def paired(config: dict) -> bool:
    """Whether a sweep's runs pair up by seed: every library gets the same masks (harness-drawn, or no
    dropout), batch order and initial weights at a seed, so per-seed differences cancel what the seed
    varies. With each library's own dropout generator they do not."""
    return not config["dropout"] or config["dropout_masks"] == "harness"


DETERMINISTIC = 1e-12  # a spread this small over seeds is float rounding: the values do not vary


def detectable(se: float, df: float, alpha: float, power: float) -> float:
    """The smallest true difference a two-sided t-test of standard error `se` and `df` degrees of freedom
    rejects with probability `power` at level `alpha`: the noncentral-t power function solved for the
    noncentrality. Exact for the paired test on normal differences; for Welch's, the usual approximation
    with its Satterthwaite df, which overstates the power by about one point at 5 seeds and a 2:1 sd ratio
    (tests/test_sweep.py simulates both)."""
    from scipy import optimize, stats

    if se == 0:
        return 0.0
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(nc):  # the lower tail as sf(crit, -nc): nct.cdf(-crit, nc) is NaN at small df and large nc
        return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc) - power

    high = crit + stats.norm.ppf(power) + 1
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10) * se)


def _welch(xa: list, xb: list) -> dict:
    from scipy import stats

    va, vb = np.var(xa, ddof=1) / len(xa), np.var(xb, ddof=1) / len(xb)
    if np.ptp(xa) <= DETERMINISTIC and np.ptp(xb) <= DETERMINISTIC:
        return _deterministic(statistics.fmean(xa) - statistics.fmean(xb), len(xa) + len(xb) - 2, False)
    with warnings.catch_warnings():  # one library constant over seeds: its variance is rounding, and 0 is right
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = stats.ttest_ind(xa, xb, equal_var=False)
    return _tested(statistics.fmean(xa) - statistics.fmean(xb), result, float(np.sqrt(va + vb)))


def _paired(xa: list, xb: list) -> dict:
    from scipy import stats

    diffs = np.subtract(xa, xb)
    if np.ptp(diffs) <= DETERMINISTIC:
        return _deterministic(float(diffs.mean()), len(diffs) - 1, True)
    result = stats.ttest_rel(xa, xb)
    return _tested(float(diffs.mean()), result, float(diffs.std(ddof=1) / np.sqrt(len(diffs))))


def _tested(diff: float, result, se: float) -> dict:
    interval = result.confidence_interval(0.95)
    return {"mean_diff": diff, "t": float(result.statistic), "df": float(result.df), "p": float(result.pvalue),
            "ci95": [float(interval.low), float(interval.high)], "se": se, "note": ""}


def _deterministic(diff: float, df: float, paired: bool) -> dict:
    """Both libraries give the same value at every seed (or the same difference at every paired seed): there
    is no noise, so a difference is certain and no difference is certainly none."""
    if abs(diff) <= DETERMINISTIC:
        return {"mean_diff": 0.0, "t": None, "df": df, "p": float("nan"), "ci95": [0.0, 0.0], "se": 0.0,
                "note": "no variance in the differences: equal at every seed" if paired else
                        "no variance in either library: identical at every seed"}
    return {"mean_diff": diff, "t": None, "df": df, "p": 0.0, "ci95": [diff, diff], "se": 0.0,
            "note": f"deterministic: differ by {diff:+.4g} at every seed"}


def compare(xa: dict, xb: dict, pair_by_seed: bool) -> dict:
    """One pair of libraries' finals ({seed: value}): the paired t-test on the seeds both finished when the
    runs pair by seed, Welch's otherwise; {"test", "n_a", "n_b", "n" (pairs, paired only), "mean_diff",
    "ci95", "t", "df", "p", "se", "note"}."""
    common = sorted(set(xa) & set(xb))
    out = {"test": "paired" if pair_by_seed else "welch", "n_a": len(xa), "n_b": len(xb),
           "n": len(common) if pair_by_seed else None}
    if pair_by_seed and len(common) < 2:
        return {**out, **_untested("fewer than 2 seeds finished by both")}
    if not pair_by_seed and (len(xa) < 2 or len(xb) < 2):
        return {**out, **_untested("fewer than 2 finished seeds")}
    if pair_by_seed:
        return {**out, **_paired([xa[s] for s in common], [xb[s] for s in common])}
    return {**out, **_welch(list(xa.values()), list(xb.values()))}


def _untested(note: str) -> dict:
    return {"mean_diff": None, "ci95": None, "t": None, "df": None, "p": float("nan"), "se": None, "note": note}


def significance(runs: dict, names: list, epochs: int, rules: dict, pair_by_seed: bool = False) -> dict:
    """Every pair of libraries, per metric: difference of means, 95% interval, t, p (the paired test when
    `pair_by_seed`, Welch's otherwise), Holm-adjusted p, whether the difference is significant at
    rules["alpha"], and the smallest difference the pair's test would detect with rules["power"]: at alpha
    ("mdd") and at alpha/m ("mdd_strict", what Holm asks of the smallest of m p-values)."""
    out = {"test": rules["test"], "correction": rules["correction"], "alpha": rules["alpha"],
           "power": rules["power"], "paired": pair_by_seed, "metrics": {}}
    for metric in rules["metrics"]:
        finals_ = {n: finals_by_seed(runs, n, metric, epochs) for n in names}
        pairs = [{"a": a, "b": b, **compare(finals_[a], finals_[b], pair_by_seed)}
                 for a, b in itertools.combinations(names, 2)]
        tested = sum(not np.isnan(p["p"]) for p in pairs)
        for pair, adjusted in zip(pairs, holm([p["p"] for p in pairs])):
            pair["p_adjusted"] = adjusted
            pair["significant"] = bool(not np.isnan(adjusted) and adjusted < rules["alpha"])
            se, df = pair.pop("se"), pair["df"]
            pair["mdd"] = None if se is None else detectable(se, df, rules["alpha"], rules["power"])
            pair["mdd_strict"] = (None if se is None else
                                  detectable(se, df, rules["alpha"] / max(tested, 1), rules["power"]))
        out["metrics"][metric] = pairs
    return out


def _f(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


TEST_WORDS = {"paired": "paired t-test over the seeds (every library gets the same masks, batch order and "
                          "initial weights at a seed)",
              "welch": "Welch's t-test (each library draws its own dropout masks, so seeds do not pair)"}


def _significance_lines(metric: str, pairs: list, sig: dict) -> list:
    hits = [p for p in pairs if p["significant"]]
    tested = max(1, sum(not np.isnan(p["p"]) for p in pairs))
    test = TEST_WORDS["paired" if sig.get("paired") else "welch"]
    lines = [(f"Significance of {METRIC_WORDS[metric]} differences: {test}, {sig['correction']}, alpha "
              f"{sig['alpha']:g}. {len(hits)} of {len(pairs)} pairs differ significantly. 'Detectable' is the "
              f"smallest true difference the pair's test finds with {sig['power']:.0%} power at alpha, from its "
              f"seeds and sds (in brackets: at alpha/{tested}, what Holm asks of the smallest p)."), "",
             "| pair | test | mean difference (a − b) | 95% interval | p | p adjusted | significant | detectable |",
             "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        ci = f"{p['ci95'][0]:+.4f} … {p['ci95'][1]:+.4f}" if p["ci95"] else "-"
        verdict = ("yes" if p["significant"] else "no") + (f" ({p['note']})" if p["note"] else "")
        mdd = f"≥ {p['mdd']:.4f} ({p['mdd_strict']:.4f})" if not p["significant"] and p["mdd"] is not None else "-"
        n = f"{p['n']} pairs" if p["test"] == "paired" else f"n {p['n_a']}+{p['n_b']}"
        lines.append(f"| {p['a']} − {p['b']} | {p['test']}, {n} | {_f(p['mean_diff'], '+.4f')} | {ci} "
                     f"| {_f(p['p'], '.3g')} | {_f(p['p_adjusted'], '.3g')} | {verdict} | {mdd} |")
    return lines


def markdown(run: dict) -> list:
    sweep, sig = run["sweep"], run["significance"]
    varies = ", ".join(run["varies"])
    lines = [f"{len(run['seeds'])} seeds per library ({', '.join(map(str, run['seeds']))}); between seeds: {varies}.",
             "", "| library | seeds ok | val acc mean ± sd | min–max | val loss mean ± sd | min–max "
                 "| images/s median (min–max) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in sweep.items():
        acc, loss, speed = s["val_acc"], s["val_loss"], s["images_per_s"]
        lines.append(f"| {name} | {s['seeds_ok']}/{len(run['seeds'])} | {_f(acc['mean'], '.4f')} ± {_f(acc['sd'], '.4f')} "
                     f"| {_f(acc['min'], '.3f')}–{_f(acc['max'], '.3f')} | {_f(loss['mean'], '.4f')} ± {_f(loss['sd'], '.4f')} "
                     f"| {_f(loss['min'], '.3f')}–{_f(loss['max'], '.3f')} | {_f(speed['median'], '.0f')} "
                     f"({_f(speed['min'], '.0f')}–{_f(speed['max'], '.0f')}) |")
    for metric, pairs in sig["metrics"].items():
        lines += [""] + _significance_lines(metric, pairs, sig)
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
            done = row and row["status"] == "ok" and epochs
            cells.append(f"{epochs[-1]['val_acc']:.3f}" if done else row["status"] if row else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any(r.get("executor", {}).get("shared") for rows in run["runs"].values() for r in rows.values()):
        lines += ["", ("Speeds were measured on a shared cluster, several jobs at a time: they are not comparable "
                       "with each other or with a local run.")]
    return lines


def plots(run: dict, folder: Path) -> list:
    """curves.png: curves_figure of the sweep."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = report._save(curves_figure(run), folder / "curves.png")
    plt.close("all")
    return [path]


def curves_figure(run: dict):
    """Each library's mean validation accuracy and loss per epoch, the min–max over seeds as a band and a bar at
    every epoch (a one-epoch sweep has no band), on whole-epoch ticks."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, metric in zip(axes, ("val_acc", "val_loss")):
        for i, name in enumerate(run["sweep"]):
            curves = [[e[metric] for e in rows[name]["record"]["epochs"]] for rows in run["runs"].values()
                      if name in rows and rows[name]["status"] == "ok"]
            curves = [c for c in curves if len(c) == run["config"]["epochs"]]
            if not curves:
                continue
            values, color = np.array(curves), f"C{i % 10}"
            x = np.arange(1, values.shape[1] + 1)
            ax.plot(x, values.mean(0), marker="o", color=color, label=name)
            ax.fill_between(x, values.min(0), values.max(0), color=color, alpha=0.15)
            ax.vlines(x, values.min(0), values.max(0), color=color, alpha=0.6)
        ax.set_title(f"{METRIC_WORDS[metric].replace('final ', '')} (mean, band = min–max over seeds)")
        ax.set_xlabel("epoch")
        ax.set_xlim(0, run["config"]["epochs"] * 1.03)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
