"""Benchmark figures of a `cli.train --repeat N` run: per library, medians and spread over N fresh
processes, the first epoch apart, achieved GFLOP/s against this machine's measured matrix-multiply peak,
and peak memory. Plain data in, plain data out; the Markdown and the chart are made from that data."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from benchmarks import stats
from workers import number, results, turns


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


def harness_epochs(rows: list) -> list:
    """[(wall, cpu, steal, pressure)] of every steady epoch (after the first) of the rows' records."""
    return [(e["train_s"], e.get("cpu_s"), e.get("steal_s"), e.get("pressure_s"))
            for row in rows for e in row["record"]["epochs"][1:]]


def _plain_epochs(results: list) -> list:
    def column(p, key):
        return p.get(key) or [None] * len(p["epoch_s"])
    return [epoch for p in results for epoch in list(zip(p["epoch_s"], column(p, "epoch_cpu_s"),
                                                         column(p, "epoch_steal_s"),
                                                         column(p, "epoch_pressure_s")))[1:]]


def of_library(runs: dict, name: str) -> dict:
    """{run key: the library's row} of the runs where it finished ok (harness rows or plain-loop results)."""
    return {key: rows[name] for key, rows in runs.items() if name in rows and rows[name]["status"] == "ok"}


def side_by_side(rows: dict, plain: dict) -> dict:
    """{run key: [(harness epoch, plain epoch)]} of the runs whose plain loop took turns with the harness epoch by
    epoch (workers.turns): each steady epoch beside the other side's epoch of the same number, measured right after
    it."""
    return {key: list(zip(harness_epochs([row]), _plain_epochs([plain[key]]))) for key, row in rows.items()
            if plain.get(key, {}).get("turns") == "epoch"}


def undisturbed(epochs: list, cores: int, rules: dict) -> tuple:
    """(the epochs that count, how many were left out, how many were disturbed)."""
    flags = [stats.disturbed(wall, steal, pressure, cores, rules) for wall, _, steal, pressure in epochs]
    return (*stats.kept(epochs, flags, rules["minimum_epochs"]), stats.count(flags))


def _pair_disturbed(pair: tuple, cores: int, rules: dict) -> bool:
    return any(stats.disturbed(e[0], e[2], e[3], cores, rules) for e in pair)


def undisturbed_pairs(runs: dict, cores: int, rules: dict) -> dict:
    """The runs' pairs without those where either side was disturbed (all kept when too few would remain)."""
    every = [(key, pair) for key, pairs in runs.items() for pair in pairs]
    flags = [_pair_disturbed(pair, cores, rules) for _, pair in every]
    found = {key: [] for key in runs}
    for key, pair in stats.kept(every, flags, rules["minimum_epochs"])[0]:
        found[key].append(pair)
    return found


def clean_runs(runs: dict, cores: int, rules: dict) -> int:
    """How many runs of side_by_side() have a pair of epochs neither of which was disturbed."""
    return sum(any(not _pair_disturbed(pair, cores, rules) for pair in pairs) for pairs in runs.values())


def overhead(rows: dict, plain: dict, cores: int, rules: dict) -> dict:
    """harness/plain in wall and CPU time with 95 % intervals: where the runs took turns, each run's median ratio
    of side-by-side epochs, the runs the replicates (paired: how many runs); else the ratio of the two sides'
    median epochs, epochs resampled (paired 0)."""
    runs = undisturbed_pairs(side_by_side(rows, plain), cores, rules)
    if sum(map(len, runs.values())) >= rules["minimum_epochs"]:
        def ratio(clock):
            return stats.paired_ratio_interval([[(h[clock], p[clock]) for h, p in pairs if h[clock] and p[clock]]
                                                for pairs in runs.values()])
        return {"paired": sum(1 for pairs in runs.values() if pairs), "overhead_wall": ratio(0),
                "overhead_cpu": ratio(1)}
    harness = undisturbed(harness_epochs(list(rows.values())), cores, rules)[0]
    loop = undisturbed(_plain_epochs(list(plain.values())), cores, rules)[0]
    return {"paired": 0, "overhead_wall": stats.ratio_interval([e[0] for e in harness], [e[0] for e in loop]),
            "overhead_cpu": stats.ratio_interval([e[1] for e in harness if e[1]], [e[1] for e in loop if e[1]])}


def precision(rows: dict, plain: dict, images_per_epoch: int, flops: dict, peak_per_cpu_s, cores: int,
              rules: dict) -> dict:
    """Per-epoch figures with 95 % intervals: images/s, harness/plain in wall and in CPU time (overhead), % of peak
    per busy core; disturbed epochs left out (benchmarks.stats). rows, plain: {run key: row} of one library."""
    harness, left_out, disturbed = undisturbed(harness_epochs(list(rows.values())), cores, rules)
    loop, plain_left_out, plain_disturbed = undisturbed(_plain_epochs(list(plain.values())), cores, rules)
    wall, cpu = [e[0] for e in harness], [e[1] for e in harness if e[1]]
    cpu_median = float(np.median(cpu)) if cpu else None
    per_core = (100 * images_per_epoch * flops["training"] / cpu_median / 1e9 / peak_per_cpu_s
                if cpu_median and peak_per_cpu_s else None)
    return {"epochs": len(harness) + left_out, "disturbed": disturbed, "left_out": left_out,
            "plain_epochs": len(loop) + plain_left_out, "plain_disturbed": plain_disturbed,
            "plain_left_out": plain_left_out,
            "images_per_s_ci": stats.median_interval([images_per_epoch / t for t in wall]),
            "cpu_epoch_s": cpu_median, "percent_of_peak_per_core": per_core, **overhead(rows, plain, cores, rules)}


def half_width(interval: dict) -> float | None:
    """An interval's half-width relative to its central value (None without an interval)."""
    if interval.get("low") is None:
        return None
    return (interval["high"] - interval["low"]) / 2 / interval["ratio"]


def widths(runs: dict, plain: dict, names: list, cores: int) -> dict:
    """{library: (relative half-width, clock)} of each harness/plain ratio so far, the more precise of its wall and
    CPU intervals; (None, None) while a library has no interval to judge: fewer than minimum_runs runs, or, where
    the two sides took turns, fewer than minimum_runs runs with an undisturbed pair of epochs (an interval that had
    to keep disturbed epochs says how busy the machine was, not what the harness costs)."""
    rules, found = stats.policy(), {}
    for name in names:
        rows, loop = of_library(runs, name), of_library(plain, name)
        found[name] = (None, None)
        pairs = side_by_side(rows, loop)
        replicates = clean_runs(pairs, cores, rules) if pairs else min(len(rows), len(loop))
        if replicates >= rules["minimum_runs"]:
            figures = overhead(rows, loop, cores, rules)
            measured = [(half_width(figures[f"overhead_{clock}"]), clock) for clock in ("wall", "cpu")]
            found[name] = min(((w, clock) for w, clock in measured if w is not None), default=(None, None))
    return found


def unsettled(found: dict, target: float) -> list:
    """The libraries of widths() whose harness/plain interval is not yet within ±target: the ones more runs are
    for (a library within it is not run again, so its interval stays as judged)."""
    return [name for name, (width, _) in found.items() if width is None or width > target]


def run_peaks(peaks: list, keys: list) -> dict:
    """{run key: the machine's peak at that run's moment}: the mean of the measurements just before and just after
    it (trainers.dispatch measures between runs); runs without one get none."""
    after = {p.get("after_run"): p["gflops"] for p in peaks}
    found = {}
    for previous, key in zip([None, *keys], keys):
        around = [after[k] for k in (previous, key) if k in after]
        if len(around) == 2:
            found[key] = sum(around) / 2
    return found


def same_moment_percent(rows: dict, images_per_epoch: int, flops: dict, peaks: dict) -> dict:
    """% of the same-moment peak of each run's median steady epoch ({run key: row}): median and min-max."""
    percent = [100 * images_per_epoch / _steady([e["train_s"] for e in row["record"]["epochs"]]) * flops["training"]
               / 1e9 / peaks[key] for key, row in rows.items()
               if key in peaks and row["status"] == "ok" and len(row["record"]["epochs"]) > 1]
    return _spread(percent)


def summarize(runs: dict, names: list, images_per_epoch: int, flops: dict, peaks: list, plain: dict,
              cores: int = 1) -> dict:
    """plain: {run key: {library: workers.plain.run_plain result}}; the harness/plain ratio compares
    median steady epoch times (the same boundaries: one epoch's training steps)."""
    peak = max((p["gflops"] for p in peaks), default=None)
    moments = run_peaks(peaks, list(runs))
    per_cpu_peak = max((p["gflops_per_cpu_s"] for p in peaks if p.get("gflops_per_cpu_s")), default=None)
    rules = stats.policy()
    libraries = {}
    for name in names:
        rows = [rows[name] for rows in runs.values() if name in rows and rows[name]["status"] == "ok"]
        summaries = [r["summary"] for r in rows]
        steady = [s["steady_epoch_s"] for s in summaries if s["steady_epoch_s"]]
        speed = [images_per_epoch / t for t in steady]
        entry = {"runs_ok": len(rows), "runs": sum(name in rows_of_run for rows_of_run in runs.values()),
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
        entry.update(precision(of_library(runs, name), of_library(plain, name), images_per_epoch, flops,
                               per_cpu_peak, cores, rules))
        if entry["paired"]:  # both tables say the same: the side-by-side figure
            entry["overhead_ratio"] = entry["overhead_wall"]["ratio"]
        entry["percent_of_same_moment_peak"] = same_moment_percent(
            {key: rows_of_run[name] for key, rows_of_run in runs.items() if name in rows_of_run}, images_per_epoch,
            flops, moments)
        libraries[name] = entry
    return {"flops_per_image": {"forward": flops["forward"], "training": flops["training"]},
            "peak": {"gflops": peak, "measurements": peaks, "per_run": moments,
                     "spread": _spread([p["gflops"] for p in peaks])}, "libraries": libraries,
            "side_by_side_env": turns.allocator()}


def _median_range(spread: dict, spec: str) -> str:
    return f"{number(spread['median'], spec)} ({number(spread['min'], spec)}–{number(spread['max'], spec)})"


def markdown(run: dict) -> list:
    b = run["benchmark"]
    peak = b["peak"]
    made = {e["runs"] for e in b["libraries"].values()}
    times = f"{len(run['runs'])} times" if made <= {len(run["runs"])} else (
        f"up to {len(run['runs'])} times (--target-ci: a library whose harness/plain interval was within the target "
        f"was not run again; 'runs ok' says how many it had)")
    lines = [f"Benchmark: every library trained {times}, each in a fresh process, one after "
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
    lines += ["", *precision_markdown(b["libraries"]), *_allocator_note(run)]
    measured = ", ".join(f"{p['gflops']:.0f} ({p['by']})" for p in peak["measurements"])
    lines += ["", f"FLOPs per image (spec/flops.py, from the ONNX graph): forward {b['flops_per_image']['forward'] / 1e6:.1f} M, "
                  f"training (forward + backward) {b['flops_per_image']['training'] / 1e6:.1f} M. Machine peak: the "
                  f"fastest float32 matrix product (numpy, PyTorch, TensorFlow; 2048² and 4096²) at "
                  f"{run['config']['threads']} thread(s), measured before the runs and after each: {measured} "
                  f"GFLOP/s (spread {_median_range(peak['spread'], '.0f')}); the first table's % of peak uses the "
                  f"highest, the second's each run's own moment. Peak RSS: the largest over the runs. Harness / "
                  f"plain: the harness's steady epochs over those of the library's plain tutorial-style loop "
                  f"(benchmarks/plain), run beside it on the same job, the two processes taking turns epoch by epoch "
                  f"(workers/turns.py): the second table's wall-time figure (without side-by-side runs, the ratio of "
                  f"the two medians); 1.000 = no overhead."]
    return lines


def _interval(figure: dict, spec: str, key: str = "median") -> str:
    if figure.get(key) is None:
        return "-"
    bounds = f" [{figure['low']:{spec}}, {figure['high']:{spec}}]" if figure.get("low") is not None else ""
    return f"{figure[key]:{spec}}{bounds}"


def precision_markdown(libraries: dict) -> list:
    """Epoch-level figures with 95 % intervals, disturbed epochs left out (benchmarks.stats)."""
    rules = stats.policy()
    lines = ["Per epoch, with 95 % intervals (images/s: bootstrap over the steady epochs of all runs; harness / plain: "
             "see below; disturbed epochs left out):", "",
             "| library | steady epochs used (disturbed) | images/s median [95 % CI] | harness / plain, wall [95 % CI] "
             "| harness / plain, CPU time [95 % CI] | CPU s per epoch | % of same-moment peak, median (min–max) "
             "| % of peak per busy core |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in libraries.items():
        if "epochs" not in e:
            continue
        used = f"{e['epochs'] - e['left_out']} of {e['epochs']} ({e['disturbed']})" + (
            " all kept: too few undisturbed" if e["disturbed"] > e["left_out"] else "")
        used += f"; plain {e['plain_epochs'] - e['plain_left_out']} of {e['plain_epochs']} ({e['plain_disturbed']})"
        if e.get("paired"):
            used += f"; {e['paired']} runs side by side"
        lines.append(f"| {name} | {used} | {_interval(e['images_per_s_ci'], '.0f')} "
                     f"| {_interval(e['overhead_wall'], '.3f', 'ratio')} | {_interval(e['overhead_cpu'], '.3f', 'ratio')} "
                     f"| {number(e['cpu_epoch_s'], '.2f')} | {_median_range(e['percent_of_same_moment_peak'], '.1f')} "
                     f"| {number(e['percent_of_peak_per_core'], '.1f')} |")
    lines += ["", "Harness / plain: where the two took turns epoch by epoch (workers/turns.py), each run's median ratio "
                  "of its side-by-side epochs (the machine's drift cancels within a pair), and the geometric mean of "
                  "the runs with a t interval over runs: each process has a speed of its own (±5 % here between "
                  "processes of one program, whatever their epochs), so runs, not epochs, are the replicates. "
                  "Otherwise the ratio of the two sides' median epochs, epochs resampled.",
              "", f"An epoch is disturbed when some runnable task waited for a CPU more than "
                  f"{100 * rules['pressure_share']:.0f} % of its wall time (/proc/pressure/cpu) or the hypervisor stole "
                  f"more than {100 * rules['steal_share']:.0f} % of the machine's CPU time (/proc/stat); such epochs "
                  f"are left out while at least {rules['minimum_epochs']} remain (benchmarks/policy.json). CPU time is "
                  f"the worker's user + system time over the epoch's training steps, all threads: what other processes "
                  f"disturb least. % of same-moment peak: each run's images/s against the mean of the peaks measured "
                  f"just before and just after it. % of peak per busy core: the training's GFLOP per CPU-second (all "
                  f"threads) over the matmul's, both measured in CPU time and so both indifferent to how busy the "
                  f"machine was."]
    return lines


def _allocator_note(run: dict) -> list:
    settings = run["benchmark"].get("side_by_side_env")
    took_turns = any(p.get("turns") == "epoch" for rows in run.get("plain", {}).values() for p in rows.values())
    if not settings or not took_turns:
        return []
    said = ", ".join(f"{key}={value}" for key, value in settings.items())
    return ["", f"Both processes of a side-by-side run had the same malloc settings, {said} (workers/turns.py): "
                "glibc's own threshold moves with what a process freed before, which gave each PyTorch process a "
                "speed of its own (docs/results/2026-12-03-allocator.md); the images/s above are with these settings."]


def plot(run: dict, folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = run["benchmark"]["libraries"]
    names = [n for n, e in libs.items() if e["images_per_s"]["median"]]
    # the 95 % interval of the median over epochs where there is one, else the min-max over runs
    figures = [libs[n]["images_per_s_ci"] if libs[n].get("images_per_s_ci", {}).get("low") is not None else
               {"median": libs[n]["images_per_s"]["median"], "low": libs[n]["images_per_s"]["min"],
                "high": libs[n]["images_per_s"]["max"]} for n in names]
    med = np.array([f["median"] for f in figures])
    low, high = med - np.array([f["low"] for f in figures]), np.array([f["high"] for f in figures]) - med
    fig, ax = plt.subplots(figsize=(10, 4.8))
    # each library's own run count: under --target-ci a library stops once its interval is narrow enough
    made = {n: libs[n].get("runs", len(run["runs"])) for n in names}
    labels = [f"{n}\n{made[n]} run{'s' if made[n] != 1 else ''}" for n in names]
    bars = ax.bar(labels, med, yerr=[low, high], capsize=4)
    for bar, n in zip(bars, names):
        pct = libs[n]["percent_of_peak"]
        if pct is not None:  # at the bar's foot, clear of the interval's whiskers
            ax.annotate(f"{pct:.0f}% of peak", (bar.get_x() + bar.get_width() / 2, 0), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=8, color="white")
    ax.set_ylabel("training images / s (median, 95 % interval)")
    ax.set_title(f"Fresh-process runs, {run['config']['threads']} thread(s)")
    ax.tick_params(axis="x", rotation=15)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = results.write_figure(fig, folder / "benchmark.png")
    plt.close("all")
    return path
