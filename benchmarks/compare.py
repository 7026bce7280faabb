"""`python -m benchmarks.compare BASELINE CANDIDATE`: two benchmark results folders side by side.

Per library: median images/s of each, their ratio, and a verdict. A library counts as a regression (or an
improvement) only when the two runs' min–max ranges do not overlap; inside the spread it is 'same'.
Exit 0 no regression, 1 any regression, 2 bad input. --json PATH also writes the comparison as JSON.
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


def compare(base: dict, cand: dict) -> dict:
    rows = {}
    for name in [n for n in base["benchmark"]["libraries"] if n in cand["benchmark"]["libraries"]]:
        a = base["benchmark"]["libraries"][name]["images_per_s"]
        b = cand["benchmark"]["libraries"][name]["images_per_s"]
        if a["median"] is None or b["median"] is None:
            rows[name] = {"verdict": "missing", "baseline": a, "candidate": b, "ratio": None}
            continue
        verdict = "regression" if b["max"] < a["min"] else "improvement" if b["min"] > a["max"] else "same"
        rows[name] = {"verdict": verdict, "ratio": b["median"] / a["median"], "baseline": a, "candidate": b}
    settings = [k for k in ("threads", "epochs", "batch_size") if base["config"].get(k) != cand["config"].get(k)]
    return {"libraries": rows, "different_settings": settings,
            "only_in_baseline": sorted(set(base["benchmark"]["libraries"]) - set(cand["benchmark"]["libraries"])),
            "only_in_candidate": sorted(set(cand["benchmark"]["libraries"]) - set(base["benchmark"]["libraries"]))}


def markdown(result: dict, base_name: str, cand_name: str) -> str:
    lines = [f"Images/s, median (min–max): baseline `{base_name}` vs candidate `{cand_name}`", "",
             "| library | baseline | candidate | candidate / baseline | verdict |", "|---|---|---|---|---|"]
    for name, r in result["libraries"].items():
        a, b = r["baseline"], r["candidate"]
        def cell(s):
            return "-" if s["median"] is None else f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        verdict = r["verdict"].upper() if r["verdict"] == "regression" else r["verdict"]
        lines.append(f"| {name} | {cell(a)} | {cell(b)} | {ratio} | {verdict} |")
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
