"""`python -m cli.explain`: where each gap of the 2017 table came from.

Runs three seed sweeps of all six libraries on the seed-2017 experiment (or reuses their results folders):
    native     each library's default RMSprop, its own dropout      defaults + randomness + numerics
    canonical  the same RMSprop everywhere, each library's dropout  randomness + numerics
    identical  the same RMSprop and the harness's dropout masks     numerics only
and sets them beside the published 2017 figures (spec/comparison_2017.toml), stating per library which part
of its gap came from the 2017 script, from defaults, from randomness and from numerics (analysis.explain).
Each sweep is a `cli.train` run made from typed options; all three are checked before the first starts.
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
    p = Parser(prog="python -m cli.explain", description=description(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Interrupted, it stops after marking the sweep it was in and says how to finish it.\n"
                      "Exit status: 0 report written, 1 a sweep had failed jobs (the report says which), 2 bad "
                      "input, 130/143 interrupted.")
    p.add_argument("--seeds", type=int, default=5, help="seeds per library in each sweep (default 5)")
    p.add_argument("--epochs", type=int, help="epochs (default: the experiment's, 5)")
    p.add_argument("--max-batches", type=int, help="only the first N batches of each epoch (quick checks)")
    p.add_argument("--executor", choices=("local", "dask"), default="local", help="as in cli.train")
    p.add_argument("--scheduler", metavar="ADDRESS", help="as in cli.train")
    p.add_argument("--workers", type=int, default=2, help="as in cli.train")
    p.add_argument("--threads", type=int, help="as in cli.train")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one training job may take")
    p.add_argument("--out", default="results", help="folder that receives the sweeps' and the report's folders")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 archive, folder or npz")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help="as in cli.train (default auto)")
    p.add_argument("--reuse", nargs=3, metavar=("NATIVE", "CANONICAL", "IDENTICAL"),
                   help="results folders of the three sweeps from earlier runs, instead of training")
    return p


def sweep_options(args) -> dict:
    """{sweep key: the cli.train options of that sweep}."""
    from analysis.explain import SWEEPS

    base = TrainOptions(libraries=["all"], experiment="seed-2017", seeds=args.seeds, epochs=args.epochs,
                        max_batches=args.max_batches, executor=args.executor, scheduler=args.scheduler,
                        workers=args.workers, threads=args.threads, timeout=args.timeout, out=args.out,
                        data=args.data, progress=args.progress)
    return {key: dataclasses.replace(base, optimizer=optimizer, dropout=dropout)
            for key, (optimizer, dropout) in SWEEPS.items()}


def prepare(args) -> dict:
    """{sweep key: its checked plan}; the model and data are loaded once, for the first."""
    plans = {}
    for key, options in sweep_options(args).items():
        first = next(iter(plans.values()), None)
        plans[key] = train.prepare(options, like=first)
    return plans


class SweepInterrupted(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def run_sweeps(plans: dict) -> tuple:
    """({sweep key: results folder}, worst exit status); SweepInterrupted stops before the next sweep."""
    folders, code = {}, EXIT_OK
    for key, plan in plans.items():
        print(f"explain: sweep {key} ({plan.options.optimizer} RMSprop, dropout {plan.options.dropout})",
              file=sys.stderr, flush=True)
        status, folder = train.execute(plan)
        if status >= 128:  # interrupted: that sweep's folder says so; the later sweeps do not start
            done = " ".join(str(f) for f in folders.values())
            finish = f"finish it with `python -m cli.train --resume {folder}`, then " if folder else ""
            raise SweepInterrupted(status, f"explain: interrupted in sweep {key}; {finish}run the rest or pass the "
                                           f"three sweep folders to --reuse (finished so far: {done or 'none'})")
        folders[key] = folder
        code = max(code, status)
    return folders, code


def main(argv=None) -> int:
    from analysis import explain
    from trainers import dispatch
    from workers import lifeline

    p = parser()
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds must be at least 2 (spread and significance need two runs per library)")
    lifeline.on_interrupt_raise()
    try:
        if args.reuse:
            dispatch.check_out(args.out)
            folders, code = dict(zip(explain.SWEEPS, map(Path, args.reuse))), EXIT_OK
        else:
            folders, code = run_sweeps(prepare(args))
        docs = {k: explain.load(f, k) for k, f in folders.items()}
        result = explain.explain(docs, explain.published())
        result["sweeps"] = {k: str(v) for k, v in folders.items()}
        folder = dispatch.new_folder(Path(args.out), f"{time.strftime('%Y%m%d-%H%M%S')}-explain-2017")
    except (ValueError, BadInput) as exc:
        return fail(str(exc))
    except SweepInterrupted as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except lifeline.Interrupted as exc:  # between sweeps, or while one was reading its data
        print(f"explain: {exc}; every finished sweep's folder is complete", file=sys.stderr)
        return exc.exit_status
    write(result, folders, docs, folder)
    return code


def write(result: dict, folders: dict, docs: dict, folder: Path) -> None:
    from analysis import explain
    from workers import results

    text = explain.markdown(result, folders, docs)
    results.write_json(folder / "explain.json", result)
    results.write_atomic(folder / "explain.md", text)
    explain.plot(result, folder)
    print(text)
    print(f"explanation: {folder}")


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("cli.explain")
    sys.exit(main())
