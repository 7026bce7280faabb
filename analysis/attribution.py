"""Which BatchNorm convention caused each native gap: seed sweeps of one model and experiment, all paired by seed
(same seeds, batch order and initial weights, dropout off), in BatchNorm mode
    canonical   the graph's semantics in every library (ONNX's training mode)
    native      each library's own layer and defaults
    <departure> canonical but for that one native departure (spec.batchnorm.DEPARTURES), in the libraries that have it
Per library and metric: the native gap (native - canonical) and what each departure alone moves (departure -
canonical), each with its 95% interval, paired t-test and the smallest difference it could detect; the remainder is
the gap the departures alone do not add up to (their interaction). `python -m cli.attribute` runs the sweeps.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis import sweep
from spec import batchnorm
from workers.records import TrainingResults

METRICS = ("val_acc", "val_loss")


def load(folder: Path, mode: str) -> dict:
    """results.json of the sweep in BatchNorm mode `mode`, as JSON; ValueError when it is not such a sweep."""
    path = Path(folder) / "results.json"
    try:
        doc = TrainingResults.from_json(json.loads(path.read_text())).to_json()
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable results file ({exc.__class__.__name__})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a results file of cli.train ({exc})") from None
    config = doc["config"]
    if doc.get("sweep") is None or config.get("batchnorm", "canonical") != mode or config["dropout"]:
        raise ValueError(f"{path}: not a seed sweep with --batchnorm {mode} and dropout off")
    return doc


def merged(docs: list) -> dict:
    """One sweep of several folders of the same mode and pairing (each a sweep of other libraries)."""
    out = {**docs[0], "runs": {seed: dict(rows) for seed, rows in docs[0]["runs"].items()}}
    for doc in docs[1:]:
        if _key(doc) != _key(out):
            raise ValueError("sweeps of one mode to merge must share model, experiment, images, epochs, seeds, "
                             "optimizer and augmentation")
        for seed, rows in doc["runs"].items():
            twice = set(rows) & set(out["runs"][seed])
            if twice:
                raise ValueError(f"{', '.join(sorted(twice))} trained in two sweeps of one mode")
            out["runs"][seed].update(rows)
    return out


def _key(doc: dict) -> tuple:
    return doc["experiment"], Path(doc["model"]).name, doc["images_per_epoch"], doc["config"]["epochs"], \
        tuple(doc["seeds"]), doc["config"]["optimizer"]["mode"], bool(doc["config"].get("augment"))


def attribute(docs: dict, departures: dict, rules: dict) -> dict:
    """docs: {mode: results JSON} with "canonical" and "native"; departures: {library: [its native departures in
    words]}. Holm's correction runs over every test of a metric (gaps and effects together)."""
    mismatched = [m for m, d in docs.items() if _key(d) != _key(docs["canonical"])]
    if mismatched:
        raise ValueError(f"the {', '.join(mismatched)} sweep does not pair with the canonical one (model, experiment, "
                         f"images, epochs, seeds, optimizer and augmentation must be the same)")
    epochs = docs["canonical"]["config"]["epochs"]
    libraries = [n for n in docs["native"]["runs"][str(docs["native"]["seeds"][0])] if n in departures]
    out = {"metrics": {}, "libraries": libraries, "departures": departures, "seeds": docs["canonical"]["seeds"],
           "alpha": rules["alpha"], "power": rules["power"]}
    for metric in METRICS:
        finals = {mode: {n: sweep.finals_by_seed(doc["runs"], n, metric, epochs) for n in libraries}
                  for mode, doc in docs.items()}
        rows, tests = {}, []
        for name in libraries:
            row = {"canonical": _mean(finals["canonical"][name]), "native": _mean(finals["native"][name]),
                   "gap": sweep.compare(finals["native"][name], finals["canonical"][name], True), "alone": {}}
            tests.append(row["gap"])
            for mode in batchnorm.DEPARTURES:
                if mode in finals and finals[mode][name]:
                    row["alone"][mode] = sweep.compare(finals[mode][name], finals["canonical"][name], True)
                    tests.append(row["alone"][mode])
            effects = [e["mean_diff"] for e in row["alone"].values() if e["mean_diff"] is not None]
            gap = row["gap"]["mean_diff"]
            unmeasured = [m for m in batchnorm.DEPARTURES if _has(departures[name], m) and m not in row["alone"]]
            row["not_run"] = unmeasured
            row["remainder"] = None if gap is None else gap - sum(effects)  # includes the unmeasured departures
            rows[name] = row
        for test, adjusted in zip(tests, sweep.holm([t["p"] for t in tests])):
            test["p_adjusted"] = adjusted
            test["significant"] = bool(not np.isnan(adjusted) and adjusted < rules["alpha"])
            se = test.pop("se")
            test["mdd"] = None if se is None else sweep.detectable(se, test["df"], rules["alpha"], rules["power"])
        out["metrics"][metric] = rows
    return out


def _mean(values: dict):
    return float(np.mean(list(values.values()))) if values else None


def _has(words: list, mode: str) -> bool:
    return any(w.startswith(f"BatchNorm {mode.replace('-', ' ')} ") for w in words)


def _cell(test: dict | None, has: bool = True) -> str:
    if test is None:
        return "not run" if has else "(no such departure)"
    if test["mean_diff"] is None:
        return f"- ({test['note']})"
    ci = test["ci95"]
    mark = "**" if test["significant"] else ""
    if test["t"] is None:  # no variance over the seeds (deterministic): the note says so
        return f"{test['mean_diff']:+.4f} ({test['note']})"
    text = f"{mark}{test['mean_diff']:+.4f}{mark} [{ci[0]:+.4f}, {ci[1]:+.4f}], p {sweep._f(test['p_adjusted'], '.2g')}"
    if not test["significant"] and test["mdd"] is not None:
        text += f", detectable ≥ {test['mdd']:.4f}"
    return text


def markdown(result: dict, folders: dict) -> str:
    lines = ["# BatchNorm attribution: which native convention caused each gap", "",
             f"Seeds {', '.join(map(str, result['seeds']))}, every sweep paired by seed (same batch order and initial "
             f"weights, dropout off). Each cell: mean over seeds of (mode − canonical) [95% interval], Holm-adjusted "
             f"p of the paired t-test over every cell of the table; bold where significant at alpha "
             f"{result['alpha']:g}, else the smallest difference the test detects with {result['power']:.0%} power. "
             f"Remainder: the gap minus the departures' effects alone (their interaction, and noise).", "",
             "Sweeps: " + ", ".join(f"{mode} `{folder}`" for mode, folder in folders.items()), ""]
    modes = [m for m in batchnorm.DEPARTURES if any(m in r["alone"] for r in result["metrics"]["val_acc"].values())]
    for metric, rows in result["metrics"].items():
        lines += [f"## {sweep.METRIC_WORDS[metric]}", "",
                  "| library | native departures | canonical | native | native − canonical | "
                  + " | ".join(f"{m} alone" for m in modes) + " | remainder |",
                  "|---|---|---|---|---|" + "---|" * len(modes) + "---|"]
        for name, row in rows.items():
            words = "; ".join(d.replace("BatchNorm ", "") for d in result["departures"][name]) or "none"
            lines.append(f"| {name} | {words} | {sweep._f(row['canonical'], '.4f')} | {sweep._f(row['native'], '.4f')} "
                         f"| {_cell(row['gap'])} | "
                         + " | ".join(_cell(row['alone'].get(m), _has(result['departures'][name], m)) for m in modes)
                         + f" | {sweep._f(row['remainder'], '+.4f')}"
                         + (f" (includes {', '.join(row['not_run'])}, not run)" if row["not_run"] else "") + " |")
        lines.append("")
    return "\n".join(lines)
