"""`python -m benchmarks.compare BASELINE CANDIDATE`: two benchmark results folders side by side.

Per library: the candidate's median steady epoch over the baseline's, in CPU time where both runs recorded it
(what other processes disturb least) else in wall time, with its interval (bootstrap over the undisturbed steady
epochs of all runs, benchmarks.stats; 95 % for the whole table, Bonferroni over the libraries compared). A library
is a regression when the whole interval lies above 1 + minimum_change (benchmarks/policy.json: changes smaller than
that are the machine's drift between runs, not the code's), an improvement when it lies below 1 - minimum_change,
else the same; the interval's half-width is the smallest change the two runs could have detected. Images/s medians are
shown beside it. Exit 0 no regression, 1 any regression, 2 bad input. --json PATH also writes the comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workers import ExitCode


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


def _library(base: dict, cand: dict, name: str, confidence: float, rules: dict) -> dict:
    from benchmarks import stats

    a, b = _epochs(base, name), _epochs(cand, name)
    clock = "cpu" if all(cpu for _, cpu in a + b) else "wall"
    a, b = ([e[1 if clock == "cpu" else 0] for e in epochs] for epochs in (a, b))
    speed = {"baseline": base["benchmark"]["libraries"][name]["images_per_s"],
             "candidate": cand["benchmark"]["libraries"][name]["images_per_s"]}
    if len(a) < 2 or len(b) < 2:
        return {"verdict": "missing", "clock": clock, "time_ratio": None, "detectable": None, **speed}
    ratio = stats.ratio_interval(b, a, confidence)
    change = rules["minimum_change"]
    verdict = "regression" if ratio["low"] > 1 + change else "improvement" if ratio["high"] < 1 - change else "same"
    return {"verdict": verdict, "clock": clock, "time_ratio": ratio,
            "detectable": (ratio["high"] - ratio["low"]) / 2, **speed}


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


def markdown(result: dict, base_name: str, cand_name: str) -> str:
    confidence = f"{100 * result['confidence']:.1f} %"
    lines = [f"Baseline `{base_name}` vs candidate `{cand_name}`: candidate / baseline median steady epoch time with "
             f"its {confidence} interval (> 1: slower; {confidence} = 95 % for the whole table, Bonferroni over "
             f"{len(result['libraries'])} libraries), and images/s median (min–max over runs). A regression: the "
             f"interval lies wholly above 1 + {result['minimum_change']:g}.", "",
             "| library | clock | epoch time ratio [interval] | smallest detectable change | baseline images/s "
             "| candidate images/s | verdict |", "|---|---|---|---|---|---|---|"]
    for name, r in result["libraries"].items():
        def cell(s):
            return "-" if s["median"] is None else f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})"
        t = r["time_ratio"]
        ratio = "-" if t is None else f"{t['ratio']:.3f} [{t['low']:.3f}, {t['high']:.3f}]"
        detectable = "-" if r["detectable"] is None else f"±{100 * r['detectable']:.1f} %"
        verdict = r["verdict"].upper() if r["verdict"] == "regression" else r["verdict"]
        lines.append(f"| {name} | {r['clock']} | {ratio} | {detectable} | {cell(r['baseline'])} "
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
