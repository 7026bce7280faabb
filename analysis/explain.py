"""Where each gap of the 2017 table came from, from three seed sweeps of all six libraries on the seed-2017
experiment (`python -m cli.explain` runs them, or reuses their results folders):
    native     each library's default RMSprop, its own dropout      defaults + randomness + numerics
    canonical  the same RMSprop everywhere, each library's dropout  randomness + numerics
    identical  the same RMSprop and the harness's dropout masks     numerics only
set beside the published 2017 figures (spec/comparison_2017.toml), stating per library which part of its gap
came from the 2017 script, from defaults, from randomness and from numerics.
"""
from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path

import numpy as np

from workers.records import TrainingResults

COMPARISON = Path(__file__).resolve().parent.parent / "spec" / "comparison_2017.toml"
SWEEPS = {"native": ("native", "own"), "canonical": ("canonical", "own"), "identical": ("canonical", "identical")}


def published() -> dict:
    """The 2017 figures and each script's known faults, per library."""
    return tomllib.loads(COMPARISON.read_text())


def load(folder: Path, key: str) -> TrainingResults:
    """The results of sweep `key` from its folder; ValueError when it is not that sweep or not readable."""
    path = Path(folder) / "results.json"
    try:
        doc = TrainingResults.from_json(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable results file ({exc.__class__.__name__})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a results file of cli.train ({exc})") from None
    optimizer, dropout = SWEEPS[key]
    masks = "harness" if dropout == "identical" else "library"
    config = doc.config
    if (doc.sweep is None or doc.experiment != "seed-2017" or config.get("optimizer", {}).get("mode") != optimizer
            or not config.get("dropout") or config.get("dropout_masks") != masks):
        raise ValueError(f"{path}: not a seed-2017 sweep with {optimizer} RMSprop and dropout {dropout} "
                         f"(run cli.train with --seeds 2 or more)")
    return doc


def _gap_to_median(sweep: dict, names: list) -> dict:
    means = {n: sweep[n]["val_acc"]["mean"] for n in names if sweep[n]["val_acc"]["mean"] is not None}
    median = statistics.median(means.values()) if means else None
    return {n: (means[n] - median if n in means else None) for n in names}


def _welch(a: list, b: list):
    """Welch's p of two libraries' finals, by the sweep's rules: a difference without noise is certain (p 0)."""
    from analysis import sweep

    return sweep.compare(dict(enumerate(a)), dict(enumerate(b)), pair_by_seed=False)["p"]


def explain(docs: dict, published: dict) -> dict:
    """docs: {sweep key: TrainingResults}; published: the 2017 figures."""
    from analysis import report, sweep

    rules = report.load_tolerances()["significance"]
    names = list(docs["canonical"].sweep)
    epochs = {k: d.config["epochs"] for k, d in docs.items()}
    runs = {k: d.to_json()["runs"] for k, d in docs.items()}
    acc = {k: {n: sweep.finals(runs[k], n, "val_acc", epochs[k]) for n in names} for k in docs}
    defaults_p = sweep.holm([_welch(acc["native"][n], acc["canonical"][n]) for n in names])
    canonical_gap = _gap_to_median(docs["canonical"].sweep, names)
    numerics = {}
    for n in names:  # per seed, this library's distance to the libraries' median with identical masks
        per_seed = []
        for rows in docs["identical"].runs.values():
            finals = {m: r.record.epochs[-1].val_acc for m, r in rows.items()
                      if r.status == "ok" and len(r.record.epochs) == epochs["identical"]}
            if n in finals and len(finals) > 1:
                per_seed.append(finals[n] - statistics.median(finals.values()))
        numerics[n] = {"mean": statistics.fmean(per_seed) if per_seed else None,
                       "max_abs": max(map(abs, per_seed)) if per_seed else None}
    pairs = docs["canonical"].significance["metrics"]["val_acc"]
    native_rows = next(iter(docs["native"].runs.values()))
    libraries = {}
    for i, n in enumerate(names):
        mean = {k: (statistics.fmean(acc[k][n]) if acc[k][n] else None) for k in docs}
        sd = {k: (statistics.stdev(acc[k][n]) if len(acc[k][n]) > 1 else None) for k in docs}
        libraries[n] = {
            "published": published.get(n, {}), "mean": mean, "sd": sd, "seeds": {k: len(acc[k][n]) for k in docs},
            "script": (None if mean["native"] is None or n not in published
                       else published[n]["val_acc"] - mean["native"]),
            "defaults": None if None in (mean["native"], mean["canonical"]) else mean["native"] - mean["canonical"],
            "defaults_p_adjusted": defaults_p[i],
            "native_departures": (native_rows[n].departures or []) if n in native_rows else [],
            "defaults_significant": bool(not np.isnan(defaults_p[i]) and defaults_p[i] < rules["alpha"]),
            "canonical_gap_to_median": canonical_gap[n],
            "significantly_different_from": [p["b"] if p["a"] == n else p["a"] for p in pairs
                                             if p["significant"] and n in (p["a"], p["b"])],
            "numerics": numerics[n],
        }
    significant_pairs = {k: sum(p["significant"] for p in d.significance["metrics"]["val_acc"])
                         for k, d in docs.items()}
    return {"test": rules["test"], "correction": rules["correction"], "alpha": rules["alpha"], "libraries": libraries,
            "significant_pairs": significant_pairs, "pairs": len(pairs),
            "drift": {k: d.drift for k, d in docs.items()}}


def _f(value, spec=".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def markdown(result: dict, folders: dict, docs: dict) -> str:
    lib = result["libraries"]
    seeds = docs["canonical"].seeds
    config = docs["canonical"].config
    lines = ["# Explaining the 2017 table", "",
             f"seed-2017 experiment, {config['epochs']} epochs, {len(seeds)} seeds per library and sweep "
             f"(only dropout varies between seeds: the experiment does not shuffle and the initial weights are fixed). "
             "Final validation accuracy, mean ± sd over seeds. Sweeps: "
             + ", ".join(f"{k} `{Path(v).name}`" for k, v in folders.items()) + ".", "",
             "| library | 2017 published | native defaults | canonical RMSprop | canonical + identical masks |",
             "|---|---|---|---|---|"]
    for n, r in lib.items():
        cells = [f"{_f(r['mean'][k])} ± {_f(r['sd'][k])}" for k in ("native", "canonical", "identical")]
        lines.append(f"| {n} | {_f(r['published'].get('val_acc'), '.2f')} | " + " | ".join(cells) + " |")
    lines += ["", "| library | script (2017 − native) | defaults (native − canonical) | defaults significant? "
                  "| randomness: sd of one run | canonical gap to median | significantly different from "
                  "| numerics: gap with identical masks (mean, max) |", "|---|---|---|---|---|---|---|---|"]
    for n, r in lib.items():
        num = r["numerics"]
        lines.append(f"| {n} | {_f(r['script'], '+.3f')} | {_f(r['defaults'], '+.3f')} "
                     f"| {'yes' if r['defaults_significant'] else 'no'} (p adj {_f(r['defaults_p_adjusted'], '.2g')}) "
                     f"| {_f(r['sd']['canonical'])} | {_f(r['canonical_gap_to_median'], '+.3f')} "
                     f"| {', '.join(r['significantly_different_from']) or 'none'} "
                     f"| {_f(num['mean'], '+.4f')}, {_f(num['max_abs'], '.4f')} |")
    lines += ["", f"Tests: {result['test']}, {result['correction']}, alpha {result['alpha']:g} (defaults: native "
                  "against canonical seeds of the same library, corrected over the six libraries; 'significantly "
                  "different from': the canonical sweep's pairwise table).", "",
              "Library pairs whose final validation accuracy differs significantly: "
              + "; ".join(f"{k} {result['significant_pairs'][k]} of {result['pairs']}" for k in SWEEPS) + ".",
              "", "## Per library", ""]
    for n, r in lib.items():
        pub = r["published"]
        parts = [f"**{n}**: 2017 published {_f(pub.get('val_acc'), '.2f')}; here native "
                 f"{_f(r['mean']['native'])}, canonical {_f(r['mean']['canonical'])}."]
        if r["script"] is not None:
            faults = "; ".join(pub.get("script", [])) or "no known fault beyond what native mode reproduces"
            chance = (" — within two sd of one run's randomness, so it need not be the script's at all"
                      if r["sd"]["native"] is not None and abs(r["script"]) <= 2 * r["sd"]["native"] else "")
            parts.append(f"The remaining {_f(r['script'], '+.3f')} between the published single run and native mode "
                         f"here is the 2017 script's ({faults}), 2017's library versions and that run's own "
                         f"randomness{chance}.")
        if not r["native_departures"]:
            parts.append("Its default RMSprop already is canonical, so defaults account for nothing.")
        elif r["defaults"] is not None:
            parts.append(f"Defaults ({'; '.join(r['native_departures'])}) account for {_f(r['defaults'], '+.3f')}, "
                         + ("a significant difference." if r["defaults_significant"] else
                            "not distinguishable from randomness."))
        parts.append(f"Randomness: one run varies by ±{_f(r['sd']['canonical'])} (sd over seeds, own dropout); "
                     f"with canonical RMSprop its gap to the six-library median is {_f(r['canonical_gap_to_median'], '+.3f')}"
                     + (f", significant against {', '.join(r['significantly_different_from'])}."
                        if r["significantly_different_from"] else ", not significant against any other library."))
        parts.append(f"Numerics: with identical masks it ends {_f(r['numerics']['mean'], '+.4f')} from the median "
                     f"on average (at most {_f(r['numerics']['max_abs'], '.4f')}).")
        lines += [" ".join(parts), ""]
    for key in ("identical", "canonical"):
        d = result["drift"].get(key) or {}
        if d.get("per_epoch_median"):
            words = "identical masks (numerics only)" if key == "identical" else "own dropout (numerics + randomness)"
            lines.append(f"- Drift of step losses between libraries, {words}: "
                         + ", ".join(f"epoch {e + 1} {m:.1e}" for e, m in enumerate(d["per_epoch_median"]))
                         + " (largest relative deviation from the libraries' median; median over seeds).")
    return "\n".join(lines) + "\n"


def plot(result: dict, folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis import report

    names = list(result["libraries"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(names))
    published = [result["libraries"][n]["published"].get("val_acc", np.nan) for n in names]
    ax.bar(x - 0.3, published, 0.2, label="2017 published")
    for offset, key in zip((-0.1, 0.1, 0.3), ("native", "canonical", "identical")):
        means = [result["libraries"][n]["mean"][key] or np.nan for n in names]
        sds = [result["libraries"][n]["sd"][key] or 0 for n in names]
        ax.bar(x + offset, means, 0.2, yerr=sds, capsize=3, label=key)
    ax.set_xticks(x, names, rotation=15)
    ax.set_ylabel("final validation accuracy")
    ax.set_title("seed-2017: published, native defaults, canonical RMSprop, identical masks (error bars: sd over seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = report._save(fig, folder / "explain.png")
    plt.close("all")
    return path
