"""`python -m benchmarks.compare BASELINE CANDIDATE`: two benchmark results folders side by side.

Per library, what the verdict judges: the harness's cost, i.e. each run's harness/plain ratio of epochs measured
side by side (workers.turns), candidate over baseline, the runs the replicates (a Welch t interval on the logarithms;
95 % for the whole table, Bonferroni over the libraries compared). The plain loop ran at the same moment as the
harness, so whatever the machine did between the two benchmarks cancels: a change in the harness's code shows, a
change of the machine does not. Where either benchmark lacks side-by-side epochs (a Dask run), the verdict falls
back on the raw epoch time ratio (CPU time where both recorded it; epochs resampled), which is shown for every
library beside it and includes the machine's drift: a slower library or machine shows there. A library is a
regression when the judged interval lies wholly above 1 and its estimate above 1 + minimum_change
(benchmarks/policy.json): significant and larger than what is not worth a verdict; an improvement likewise below;
else the same. The interval's half-width is the smallest change the two benchmarks could have detected.
Exit 0 no regression, 1 any regression, 2 bad input. --json PATH also writes the comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers import ExitCode, number


class BadInput(Exception):
    pass


def load(folder: Path) -> dict:
    path = Path(folder) / "results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: not a readable results file ({exc.__class__.__name__})") from None
    if "benchmark" not in doc:
        raise BadInput(f"{path}: not a benchmark (made without cli.train --repeat N, N >= 2)")
    return doc


def _epochs(doc: dict, name: str) -> list:
    """The (wall, cpu) seconds of `name`'s undisturbed steady epochs over all runs (benchmarks.bench)."""
    from benchmarks import bench, stats

    rows = [rows[name] for rows in doc["runs"].values() if name in rows and rows[name]["status"] == "ok"]
    epochs, _, _ = bench.undisturbed(bench.harness_epochs(rows), doc["environment"]["cores"], stats.policy())
    return [(wall, cpu) for wall, cpu, _, _ in epochs]


def _overheads(doc: dict, name: str) -> list:
    """Each run's harness/plain wall-time ratio of side-by-side epochs (empty where the runs did not take turns)."""
    from benchmarks import bench, stats

    rows, plain = bench.of_library(doc["runs"], name), bench.of_library(doc.get("plain", {}), name)
    runs = bench.undisturbed_pairs(bench.side_by_side(rows, plain), doc["environment"]["cores"], stats.policy())
    return stats.run_ratios([[(h[0], p[0]) for h, p in pairs] for pairs in runs.values()])


def _verdict(interval: dict, change: float) -> str:
    """Significant and relevant: the interval excludes 1 and the estimate lies beyond the minimum change."""
    if interval["low"] is None:
        return "missing"
    if interval["low"] > 1 and interval["ratio"] > 1 + change:
        return "regression"
    return "improvement" if interval["high"] < 1 and interval["ratio"] < 1 - change else "same"


def _library(base: dict, cand: dict, name: str, confidence: float, rules: dict) -> dict:
    """The harness's time relative to its library's plain loop, candidate over baseline (what the machine's drift
    between the two runs cancels from); where either run lacks side-by-side epochs, the raw epoch time ratio."""
    from benchmarks import stats

    a, b = _epochs(base, name), _epochs(cand, name)
    clock = "cpu" if all(cpu for _, cpu in a + b) else "wall"
    a, b = ([e[1 if clock == "cpu" else 0] for e in epochs] for epochs in (a, b))
    found = {"baseline": base["benchmark"]["libraries"][name]["images_per_s"],
             "candidate": cand["benchmark"]["libraries"][name]["images_per_s"], "clock": clock,
             "time_ratio": stats.ratio_interval(b, a, confidence) if len(a) > 1 and len(b) > 1 else None}
    before, after = _overheads(base, name), _overheads(cand, name)
    relative = stats.change_interval(before, after, confidence)
    found["overhead_change"] = relative if relative["low"] is not None else None
    found["overhead"] = {"baseline": stats.geometric_mean(before), "candidate": stats.geometric_mean(after)}
    judged = found["overhead_change"] or found["time_ratio"]
    if judged is None:
        return {**found, "verdict": "missing", "judged_by": None, "detectable": None}
    return {**found, "verdict": _verdict(judged, rules["minimum_change"]),
            "judged_by": "overhead" if found["overhead_change"] else "time",
            "detectable": (judged["high"] - judged["low"]) / 2}


def compare(base: dict, cand: dict) -> dict:
    from benchmarks import stats

    names = [n for n in base["benchmark"]["libraries"] if n in cand["benchmark"]["libraries"]]
    rules = stats.policy()
    confidence = 1 - (1 - stats.CONFIDENCE) / max(1, len(names))  # Bonferroni: 5 % false alarms per comparison
    rows = {name: _library(base, cand, name, confidence, rules) for name in names}
    settings = [k for k in ("threads", "epochs", "batch_size") if base["config"].get(k) != cand["config"].get(k)]
    return {"libraries": rows, "confidence": confidence, "minimum_change": rules["minimum_change"],
            "different_settings": settings,
            "only_in_baseline": sorted(set(base["benchmark"]["libraries"]) - set(cand["benchmark"]["libraries"])),
            "only_in_candidate": sorted(set(cand["benchmark"]["libraries"]) - set(base["benchmark"]["libraries"]))}


def _interval(figure: dict | None) -> str:
    return "-" if figure is None else f"{figure['ratio']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def markdown(result: dict, base_name: str, cand_name: str) -> str:
    confidence = f"{100 * result['confidence']:.1f} %"
    lines = [f"Baseline `{base_name}` vs candidate `{cand_name}`, {confidence} intervals (95 % for the whole table, "
             f"Bonferroni over {len(result['libraries'])} libraries). Judged by the harness's cost: each run's "
             f"harness/plain ratio of epochs measured side by side, candidate over baseline, runs the replicates "
             f"(the machine's drift between the two benchmarks cancels); where either lacks side-by-side epochs, by the "
             f"raw epoch time ratio (drift included). A regression: the interval lies wholly above 1 and the "
             f"estimate above 1 + {result['minimum_change']:g}; the smallest detectable change is the interval's "
             f"half-width.", "",
             "| library | harness / plain, baseline → candidate | change of harness / plain [interval] "
             "| raw epoch time ratio [interval] | smallest detectable change | baseline images/s | candidate images/s "
             "| verdict |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["libraries"].items():
        def cell(s):
            return "-" if s["median"] is None else f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})"
        o = r["overhead"]
        overhead = " → ".join(number(o[k], ".3f") for k in ("baseline", "candidate"))
        detectable = "-" if r["detectable"] is None else f"±{100 * r['detectable']:.1f} %"
        verdict = r["verdict"].upper() if r["verdict"] == "regression" else r["verdict"]
        lines.append(f"| {name} | {overhead} | {_interval(r['overhead_change'])} "
                     f"| {_interval(r['time_ratio'])} ({r['clock']}) | {detectable} | {cell(r['baseline'])} "
                     f"| {cell(r['candidate'])} | {verdict} |")
    if result["different_settings"]:
        lines += ["", "Warning: the runs differ in " + ", ".join(result["different_settings"]) + "."]
    for key, words in (("only_in_baseline", "only in the baseline"), ("only_in_candidate", "only in the candidate")):
        if result[key]:
            lines += ["", f"{words.capitalize()}: {', '.join(result[key])}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split(":", 1)[1].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", type=Path)
    p.add_argument("candidate", type=Path)
    p.add_argument("--json", type=Path, metavar="PATH")
    args = p.parse_args(argv)
    try:
        result = compare(load(args.baseline), load(args.candidate))
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(markdown(result, args.baseline.name, args.candidate.name), end="")
    if args.json:
        from workers import results

        results.write_json(args.json, result)
    regressed = [n for n, r in result["libraries"].items() if r["verdict"] == "regression"]
    return ExitCode.FAILED if regressed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
