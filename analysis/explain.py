"""`python -m trainers.explain`: where each gap of the 2017 table came from.

Runs three seed sweeps of all six libraries on the seed-2017 experiment (or reuses their results folders):
    native     each library's default RMSprop, its own dropout      defaults + randomness + numerics
    canonical  the same RMSprop everywhere, each library's dropout  randomness + numerics
    identical  the same RMSprop and the harness's dropout masks     numerics only
and sets them beside the published 2017 figures (spec/comparison_2017.toml), stating per library which part
of its gap came from the 2017 script, from defaults, from randomness and from numerics.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
COMPARISON = Path(__file__).resolve().parent.parent / "spec" / "comparison_2017.toml"
SWEEPS = {"native": ("native", "own"), "canonical": ("canonical", "own"), "identical": ("canonical", "identical")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.explain", description=__doc__.split(":", 1)[1].strip().capitalize(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 report written, 1 a sweep had failed jobs (the report "
                                       "says which), 2 bad input.")
    p.add_argument("--seeds", type=int, default=5, help="seeds per library in each sweep (default 5)")
    p.add_argument("--epochs", type=int, help="epochs (default: the experiment's, 5)")
    p.add_argument("--max-batches", type=int, help="only the first N batches of each epoch (quick checks)")
    p.add_argument("--executor", choices=("local", "dask"), default="local", help="as in trainers.run")
    p.add_argument("--scheduler", metavar="ADDRESS", help="as in trainers.run")
    p.add_argument("--workers", type=int, default=2, help="as in trainers.run")
    p.add_argument("--threads", type=int, help="as in trainers.run")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one training job may take")
    p.add_argument("--out", default="results", help="folder that receives the sweeps' and the report's folders")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 archive, folder or npz")
    p.add_argument("--reuse", nargs=3, metavar=("NATIVE", "CANONICAL", "IDENTICAL"),
                   help="results folders of the three sweeps from earlier runs, instead of training")
    return p


def _run_sweeps(args) -> tuple:
    from trainers import run

    folders, code = {}, EXIT_OK
    for key, (optimizer, dropout) in SWEEPS.items():
        argv = ["all", "--experiment", "seed-2017", "--optimizer", optimizer, "--dropout", dropout,
                "--seeds", str(args.seeds), "--executor", args.executor, "--workers", str(args.workers),
                "--timeout", str(args.timeout), "--out", args.out]
        for flag, value in (("--epochs", args.epochs), ("--max-batches", args.max_batches),
                            ("--scheduler", args.scheduler), ("--threads", args.threads), ("--data", args.data)):
            if value is not None:
                argv += [flag, str(value)]
        print(f"explain: sweep {key} ({optimizer} RMSprop, dropout {dropout})", file=sys.stderr, flush=True)
        sweep_args = run.parse(argv)
        status, folders[key] = run.execute(sweep_args, *run.prepare(sweep_args))
        if status >= 128:  # interrupted: that sweep's folder says so; the later sweeps do not start
            done = " ".join(str(f) for k, f in folders.items() if k != key)
            raise Interrupted(status, f"explain: interrupted in sweep {key}; finish it with `python -m trainers.run "
                                      f"--resume {folders[key]}`, then run the rest or pass the three sweep folders "
                                      f"to --reuse (finished so far: {done or 'none'})")
        code = max(code, status)
    return folders, code


class Interrupted(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _load(folder: Path, key: str) -> dict:
    path = Path(folder) / "results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable results file ({exc.__class__.__name__})") from None
    optimizer, dropout = SWEEPS[key]
    masks = "harness" if dropout == "identical" else "library"
    config = doc.get("config", {})
    if ("sweep" not in doc or doc.get("experiment") != "seed-2017" or config.get("optimizer", {}).get("mode") != optimizer
            or not config.get("dropout") or config.get("dropout_masks") != masks):
        raise ValueError(f"{path}: not a seed-2017 sweep with {optimizer} RMSprop and dropout {dropout} "
                         f"(run trainers.run with --seeds 2 or more)")
    return doc


def _gap_to_median(sweep: dict, names: list) -> dict:
    means = {n: sweep[n]["val_acc"]["mean"] for n in names if sweep[n]["val_acc"]["mean"] is not None}
    median = statistics.median(means.values()) if means else None
    return {n: (means[n] - median if n in means else None) for n in names}


def _welch(a: list, b: list):
    from scipy import stats

    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return float("nan")
    if sorted(a) == sorted(b):  # a library whose defaults are canonical: the same runs twice
        return 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def explain(docs: dict, published: dict) -> dict:
    from analysis import report, sweep

    rules = report.load_tolerances()["significance"]
    names = list(docs["canonical"]["sweep"])
    epochs = {k: d["config"]["epochs"] for k, d in docs.items()}
    acc = {k: {n: sweep.finals(d["runs"], n, "val_acc", epochs[k]) for n in names} for k, d in docs.items()}
    defaults_p = sweep.holm([_welch(acc["native"][n], acc["canonical"][n]) for n in names])
    canonical_gap = _gap_to_median(docs["canonical"]["sweep"], names)
    numerics = {}
    for n in names:  # per seed, this library's distance to the libraries' median with identical masks
        per_seed = []
        for rows in docs["identical"]["runs"].values():
            finals = {m: r["record"]["epochs"][-1]["val_acc"] for m, r in rows.items()
                      if r["status"] == "ok" and len(r["record"]["epochs"]) == epochs["identical"]}
            if n in finals and len(finals) > 1:
                per_seed.append(finals[n] - statistics.median(finals.values()))
        numerics[n] = {"mean": statistics.fmean(per_seed) if per_seed else None,
                       "max_abs": max(map(abs, per_seed)) if per_seed else None}
    pairs = docs["canonical"]["significance"]["metrics"]["val_acc"]
    native_rows = next(iter(docs["native"]["runs"].values()))
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
            "native_departures": native_rows.get(n, {}).get("departures", []),
            "defaults_significant": bool(not np.isnan(defaults_p[i]) and defaults_p[i] < rules["alpha"]),
            "canonical_gap_to_median": canonical_gap[n],
            "significantly_different_from": [p["b"] if p["a"] == n else p["a"] for p in pairs
                                             if p["significant"] and n in (p["a"], p["b"])],
            "numerics": numerics[n],
        }
    significant_pairs = {k: sum(p["significant"] for p in d["significance"]["metrics"]["val_acc"])
                         for k, d in docs.items()}
    return {"test": rules["test"], "correction": rules["correction"], "alpha": rules["alpha"], "libraries": libraries,
            "significant_pairs": significant_pairs, "pairs": len(pairs),
            "drift": {k: d.get("drift") for k, d in docs.items()}}


def _f(value, spec=".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def markdown(result: dict, folders: dict, docs: dict) -> str:
    lib = result["libraries"]
    seeds = docs["canonical"]["seeds"]
    config = docs["canonical"]["config"]
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


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds must be at least 2 (spread and significance need two runs per library)")
    for name in ("epochs", "max_batches", "workers", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    import lifeline
    import results
    from trainers import run

    published = tomllib.loads(COMPARISON.read_text())
    lifeline.on_interrupt_raise()
    try:
        if args.reuse:
            folders, code = dict(zip(SWEEPS, map(Path, args.reuse))), EXIT_OK
        else:
            folders, code = _run_sweeps(args)
        docs = {k: _load(f, k) for k, f in folders.items()}
    except (ValueError, run.BadInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except lifeline.Interrupted as exc:  # between sweeps, or while one was reading its data
        print(f"explain: {exc}; every finished sweep's folder is complete", file=sys.stderr)
        return exc.exit_status
    result = explain(docs, published)
    result["sweeps"] = {k: str(v) for k, v in folders.items()}
    folder = run.new_folder(Path(args.out), f"{time.strftime('%Y%m%d-%H%M%S')}-explain-2017")
    text = markdown(result, folders, docs)
    results.write_json(folder / "explain.json", result)
    results.write_atomic(folder / "explain.md", text)
    plot(result, folder)
    print(text)
    print(f"explanation: {folder}")
    return code


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("trainers.explain")
    sys.exit(main())
