"""`python -m cli.attribute`: which BatchNorm convention caused each library's native gap.

Runs seed sweeps of one model (default spec/resnet20.onnx on the resnet20 experiment), every library trained with
canonical BatchNorm, then with its native layer, then with each native departure alone (momentum, epsilon,
running-variance: only in the libraries that have it), all paired by seed with dropout off; or reuses their results
folders (--reuse MODE=FOLDER). Reports per library the native gap and what each departure alone explains
(analysis.attribution). Each sweep is a `cli.train` run made from typed options, all checked before the first starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from cli import EXIT_OK, Parser, description, fail, train
from trainers.plan import BadInput, TrainOptions
from workers.progress import MODES as PROGRESS_MODES


def parser() -> Parser:
    p = Parser(prog="python -m cli.attribute", description=description(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Exit status: 0 report written, 1 a sweep had failed jobs (the report says which), 2 bad input, "
                      "130/143 interrupted (every finished sweep's folder is complete: pass it to --reuse).")
    p.add_argument("libraries", nargs="*", default=["all"], metavar="LIBRARY",
                   help="libraries to compare (default all), as in cli.train")
    p.add_argument("--model", default="spec/resnet20.onnx", help="ONNX model with BatchNorm (default %(default)s)")
    p.add_argument("--experiment", default="resnet20", help="experiment (default %(default)s)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per library in each sweep (default 5)")
    p.add_argument("--epochs", type=int, help="epochs (default: the experiment's)")
    p.add_argument("--train-images", type=int, metavar="N", help="as in cli.train")
    p.add_argument("--max-batches", type=int, help="only the first N batches of each epoch (quick checks)")
    p.add_argument("--threads", type=int, help="as in cli.train")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one training job may take")
    p.add_argument("--out", default="results", help="folder that receives the sweeps' and the report's folders")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 archive, folder or npz")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help="as in cli.train (default auto)")
    p.add_argument("--reuse", nargs="+", default=[], metavar="MODE=FOLDER",
                   help="results folder of an earlier sweep of that BatchNorm mode (canonical, native, momentum, "
                        "epsilon, running-variance), used instead of training it; several folders of one mode (other "
                        "libraries' sweeps with the same seeds) are merged")
    return p


def departures_by_library(spec, names: list) -> dict:
    """{library: its native BatchNorm departures on this model, in words}."""
    from builders import native_batchnorm
    from spec import batchnorm

    return {n: batchnorm.departures(spec, batchnorm.semantics(spec, native_batchnorm(n), "native")) for n in names}


def sweep_options(args, spec) -> dict:
    """{BatchNorm mode: the cli.train options of its sweep}; a departure's sweep trains only the libraries that
    have it."""
    from builders import native_batchnorm, select
    from spec import batchnorm

    base = TrainOptions(libraries=args.libraries or ["all"], experiment=args.experiment, model=args.model, seeds=args.seeds,
                        epochs=args.epochs, train_images=args.train_images, max_batches=args.max_batches,
                        dropout="off", threads=args.threads, timeout=args.timeout, out=args.out, data=args.data,
                        progress=args.progress)
    options = {"canonical": base, "native": dataclasses.replace(base, batchnorm="native")}
    for mode in batchnorm.DEPARTURES:
        having = [n for n in select(base.libraries)
                  if batchnorm.departures(spec, batchnorm.semantics(spec, native_batchnorm(n), mode))]
        if having:
            options[mode] = dataclasses.replace(base, libraries=having, batchnorm=mode)
    return options


def _reused(args) -> dict:
    from spec import batchnorm

    found = {}
    for item in args.reuse:
        mode, _, folder = item.partition("=")
        if mode not in batchnorm.MODES or not folder:
            raise BadInput(f"--reuse takes MODE=FOLDER with MODE one of {', '.join(batchnorm.MODES)}, not {item!r}")
        found.setdefault(mode, []).append(Path(folder))  # several folders of one mode: other libraries' sweeps
    return found


def _model(path):
    from spec.onnx_import import ModelError
    from spec.training import cifar_model

    try:
        return cifar_model(Path(path))
    except ModelError as exc:
        raise BadInput(str(exc)) from None


def main(argv=None) -> int:
    from analysis import attribution, report
    from trainers import dispatch
    from workers import lifeline, results

    p = parser()
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds must be at least 2 (intervals and tests need two seeds)")
    lifeline.on_interrupt_raise()
    try:
        reused = _reused(args)
        docs = {mode: attribution.merged([attribution.load(f, mode) for f in found])  # refused before training
                for mode, found in reused.items()}
        dispatch.check_out(args.out)
        plans, folders, code = {}, dict(reused), EXIT_OK
        first = None
        for mode, options in sweep_options(args, _model(args.model)).items():
            if mode not in reused:
                plans[mode] = first = train.prepare(options, like=first)
        for mode, plan in plans.items():
            print(f"attribute: sweep {mode} ({', '.join(plan.names)})", file=sys.stderr, flush=True)
            status, folder = train.execute(plan)
            if status >= 128:
                print(f"attribute: interrupted in sweep {mode}; pass the finished folders to --reuse", file=sys.stderr)
                return status
            folders[mode], code = [folder], max(code, status)
            docs[mode] = attribution.load(folder, mode)
        if not {"canonical", "native"} <= set(docs):
            raise BadInput("the attribution needs a canonical and a native sweep")
        spec = _model(docs["canonical"]["model"])
        names = list(docs["native"]["runs"][str(docs["native"]["seeds"][0])])
        result = attribution.attribute(docs, departures_by_library(spec, names),
                                       report.load_tolerances()["significance"])
        out = dispatch.new_folder(Path(args.out), f"{time.strftime('%Y%m%d-%H%M%S')}-attribute-batchnorm")
    except (ValueError, BadInput) as exc:
        return fail(str(exc))
    except lifeline.Interrupted as exc:
        print(f"attribute: {exc}; every finished sweep's folder is complete", file=sys.stderr)
        return exc.exit_status
    sweeps = {m: ", ".join(map(str, f)) for m, f in folders.items()}
    text = attribution.markdown(result, sweeps)
    results.write_json(out / "attribution.json", {**result, "sweeps": sweeps})
    results.write_atomic(out / "attribution.md", text)
    print(text)
    print(f"attribution: {out}")
    return code


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("cli.attribute")
    sys.exit(main())
