"""`verify survey`: forward equivalence over many models, one verdict per (model, library), as a table.

The yardstick the README quotes is `--onnx-backend`: the test models that ship inside the onnx package (its
`light` model-zoo files and every `pytorch-converted` / `pytorch-operator` model whose one input is a float
[N, C, H, W] image), independent of this project. A model the importer refuses gets that one-line reason in
every library's cell. Results are written after every model (`--json`), so an interrupted survey keeps them.
"""
from __future__ import annotations

import sys
from pathlib import Path

ONNX_BACKEND_SETS = ("light", "pytorch-converted", "pytorch-operator")


def onnx_backend_models(sets=ONNX_BACKEND_SETS) -> list:
    """[(name, path)] of the onnx package's test models of `sets` that take one float image batch."""
    import onnx
    import onnx.backend.test

    root = Path(onnx.backend.test.__file__).parent / "data"
    found = []
    for name in sets:
        paths = sorted((root / name).glob("*.onnx")) if name == "light" else sorted((root / name).glob("*/model.onnx"))
        for path in paths:
            if name == "light" or _takes_one_image(onnx.load(str(path), load_external_data=False)):
                found.append((f"{name}/{path.stem if name == 'light' else path.parent.name}", path))
    return found


def _takes_one_image(model) -> bool:
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        return False
    t = inputs[0].type.tensor_type
    return t.elem_type == 1 and len(t.shape.dim) == 4


def cell(row: dict) -> str:
    """One library's verdict on one model, in a few words."""
    status = row["status"]
    if status == "pass":
        return "PASS"
    if status == "mismatch":
        where = row.get("first_divergent_layer") or {}
        return f"MISMATCH at {where.get('name')} ({where.get('kind')})"
    return f"{status.upper()}: {row.get('message', '')}"


def survey_one(path: Path, libraries: list, timeout: float, log=sys.stderr) -> dict:
    """{"model", "layers", "verdicts": {library: cell}, "refused": reason or None, "notes"}."""
    from spec.onnx_import import ModelError, import_model
    from verify import equivalence

    try:
        spec = import_model(path)
        report = equivalence.run(path, libraries, timeout=timeout, log=log)
    except ModelError as exc:
        reason = str(exc).split(": ", 1)[-1]
        return {"model": str(path), "layers": None, "refused": reason, "notes": [],
                "verdicts": {name: f"refused: {reason}" for name in libraries}}
    return {"model": str(path), "layers": len(spec.layers), "refused": None, "notes": list(spec.notes),
            "verdicts": {name: cell(row) for name, row in report["libraries"].items()}}


def run(models: list, libraries: list, timeout: float = 900, json_path=None, log=sys.stderr) -> dict:
    from workers import results

    doc = {"libraries": libraries, "models": {}}
    for k, (name, path) in enumerate(models, 1):
        print(f"[{k}/{len(models)}] {name}", file=log, flush=True)
        doc["models"][name] = survey_one(path, libraries, timeout, log=log)
        if json_path:
            results.write_json(json_path, doc)
    return doc


def table(doc: dict) -> str:
    libraries = doc["libraries"]
    lines = ["| model | layers | " + " | ".join(libraries) + " |", "|---|---|" + "---|" * len(libraries)]
    for name, entry in doc["models"].items():
        if entry["refused"]:
            lines.append(f"| {name} | refused | {entry['refused'][:150]} |" + " |" * (len(libraries) - 1))
            continue
        cells = [_short(entry["verdicts"][lib]) for lib in libraries]
        lines.append(f"| {name} | {entry['layers']} | " + " | ".join(cells) + " |")
    passing = {lib: sum(e["verdicts"][lib] == "PASS" for e in doc["models"].values()) for lib in libraries}
    lines.append(f"| **passed** ({len(doc['models'])} models) | | " + " | ".join(str(passing[lib]) for lib in libraries)
                 + " |")
    return "\n".join(lines)


def _short(text: str) -> str:
    return text.replace("|", "/")[:90]
