"""Benchmark figures of a `cli.train --repeat N` run: per library, medians and spread over N fresh
processes, the first epoch apart, achieved GFLOP/s against this machine's measured matrix-multiply peak,
and peak memory. Plain data in, plain data out; the Markdown and the chart are made from that data."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from workers import number, results


def machine_peak(threads: int) -> dict:
    """benchmarks.peak in a fresh main-environment process with the training thread settings."""
    from benchmarks.peak import measure_in_subprocess

    return measure_in_subprocess(threads)


def _spread(values: list) -> dict:
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None}
    q1, q3 = (np.percentile(values, [25, 75]).tolist() if len(values) > 1 else (values[0], values[0]))
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values),
            "q1": q1, "q3": q3}


def _steady(epoch_s: list):
    return statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else None


def summarize(runs: dict, names: list, images_per_epoch: int, flops: dict, peaks: list, plain: dict) -> dict:
    """plain: {run key: {library: workers.plain.run_plain result}}; the harness/plain ratio compares
    median steady epoch times (the same boundaries: one epoch's training steps)."""
    peak = max((p["gflops"] for p in peaks), default=None)
    libraries = {}
    for name in names:
        rows = [rows[name] for rows in runs.values() if name in rows and rows[name]["status"] == "ok"]
        summaries = [r["summary"] for r in rows]
        steady = [s["steady_epoch_s"] for s in summaries if s["steady_epoch_s"]]
        speed = [images_per_epoch / t for t in steady]
        entry = {"runs_ok": len(rows), "runs": len(runs),
                 "steady_epoch_s": _spread(steady), "images_per_s": _spread(speed),
                 "first_epoch_s": _spread([s["first_epoch_s"] for s in summaries if s["first_epoch_s"]]),
                 "peak_rss_mib": _spread([s["peak_rss_mib"] for s in summaries if s.get("peak_rss_mib")])}
        median_speed = entry["images_per_s"]["median"]
        entry["gflops"] = median_speed * flops["training"] / 1e9 if median_speed else None
        entry["percent_of_peak"] = 100 * entry["gflops"] / peak if entry["gflops"] and peak else None
        plain_steady = [_steady(p[name]["epoch_s"]) for p in plain.values()
                        if name in p and p[name]["status"] == "ok"]
        entry["plain_steady_epoch_s"] = _spread([t for t in plain_steady if t])
        harness_median, plain_median = entry["steady_epoch_s"]["median"], entry["plain_steady_epoch_s"]["median"]
        entry["overhead_ratio"] = harness_median / plain_median if harness_median and plain_median else None
        libraries[name] = entry
    return {"flops_per_image": {"forward": flops["forward"], "training": flops["training"]},
            "peak": {"gflops": peak, "measurements": peaks}, "libraries": libraries}


def _median_range(spread: dict, spec: str) -> str:
    return f"{number(spread['median'], spec)} ({number(spread['min'], spec)}–{number(spread['max'], spec)})"


def markdown(run: dict) -> list:
    b = run["benchmark"]
    peak = b["peak"]
    lines = [f"Benchmark: every library trained {len(run['runs'])} times, each in a fresh process, one after "
             f"another. Steady state = the median epoch after the first; spread = min–max over the runs.", "",
             "| library | runs ok | steady epoch s median (min–max) | images/s median (min–max) | first epoch s median "
             "| GFLOP/s | % of peak | peak RSS MiB | plain loop steady s | harness / plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in b["libraries"].items():
        s, v = e["steady_epoch_s"], e["images_per_s"]
        cells = [f"{e['runs_ok']}/{e['runs']}", _median_range(s, ".2f"), _median_range(v, ".0f"),
                 number(e["first_epoch_s"]["median"], ".2f"), number(e["gflops"], ".1f"),
                 number(e["percent_of_peak"], ".1f"), number(e["peak_rss_mib"]["max"], ".0f"),
                 number(e["plain_steady_epoch_s"]["median"], ".2f"), number(e["overhead_ratio"], ".3f")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    measured = ", ".join(f"{p['gflops']:.0f} ({p['by']})" for p in peak["measurements"])
    lines += ["", f"FLOPs per image (spec/flops.py, from the ONNX graph): forward {b['flops_per_image']['forward'] / 1e6:.1f} M, "
                  f"training (forward + backward) {b['flops_per_image']['training'] / 1e6:.1f} M. Machine peak: the "
                  f"fastest float32 matrix product (numpy, PyTorch, TensorFlow; 2048² and 4096²) at "
                  f"{run['config']['threads']} thread(s), measured before and after the runs: {measured} GFLOP/s; "
                  f"% of peak uses the higher. Peak RSS: the largest over the runs. Harness / plain: median steady "
                  f"epoch of the harness over that of the library's plain tutorial-style loop (benchmarks/plain), "
                  f"run alternately with it on the same job; 1.000 = no overhead."]
    return lines


def plot(run: dict, folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = run["benchmark"]["libraries"]
    names = [n for n, e in libs.items() if e["images_per_s"]["median"]]
    med = np.array([libs[n]["images_per_s"]["median"] for n in names])
    low = med - np.array([libs[n]["images_per_s"]["min"] for n in names])
    high = np.array([libs[n]["images_per_s"]["max"] for n in names]) - med
    fig, ax = plt.subplots(figsize=(10, 4.8))
    bars = ax.bar(names, med, yerr=[low, high], capsize=4)
    for bar, n in zip(bars, names):
        pct = libs[n]["percent_of_peak"]
        if pct is not None:
            ax.annotate(f"{pct:.0f}% of peak", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        xytext=(0, 12), textcoords="offset points", ha="center", fontsize=8)
    ax.set_ylabel("training images / s (median; bars: min–max)")
    ax.set_title(f"{len(run['runs'])} fresh-process runs per library, {run['config']['threads']} thread(s)")
    ax.tick_params(axis="x", rotation=15)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = results.write_figure(fig, folder / "benchmark.png")
    plt.close("all")
    return path
