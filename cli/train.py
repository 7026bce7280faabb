"""`python -m cli.train all` / `python -m cli.train pytorch tflearn`: identical RMSprop epochs in each library,
forward equivalence verified first, results table + JSON + plots in a results folder.

A run is plan (trainers.plan: every option, the model and the data checked) → gate (cli.gate: verify
equivalence) → dispatch (trainers.dispatch: jobs, executors, resume, interruptions) → report (analysis.modes:
single run, seed sweep or benchmark). Nothing is written before the gate has passed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cli import EXIT_FAILED, EXIT_OK, Parser, description, fail, gate
from spec.batchnorm import MODES
from trainers import dispatch
from trainers import plan as planning
from trainers.plan import BadInput, TrainOptions
from workers import lifeline, results
from workers.progress import LINE_EVERY_S
from workers.progress import MODES as PROGRESS_MODES

PROGRESS_HELP = ("how stderr shows each library's training: bar = a progress bar per library; lines = a line when a "
                 "library starts, one per epoch (steps, loss, validation accuracy, seconds, images/s), one at most "
                 f"every {LINE_EVERY_S:.0f} s within an epoch, one when it ends, for log files; off = only the start "
                 "and end lines; auto = bar when stderr is a terminal, else lines (default auto)")
INVOCATION = "invocation.json"  # in every results folder: the options that made it, for --resume
EPILOG = """Optimizer modes:
  canonical  every library performs the same RMSprop arithmetic (lr, rho, eps of the experiment;
             mean square starting at 0; eps inside the square root), with the library's optimizer
             configured to match or a small subclass where it cannot; the table says how.
  native     each library's own RMSprop with its own defaults, as 'default RMSprop' gives it;
             the table says where each departs from canonical.
Experiments (spec/experiments.toml):
  seed-2017  first 2000 training images, validation on the first 400 of them, no shuffling
  default    same training images, validation on official test images, shuffled by --seed
  resnet20   ResNet-20 with BatchNorm (spec/resnet20.onnx) on the official 50,000 training images
             (--train-images N for the first N where fewer are at hand), 1000 test images, shuffled
Every option, the model and the data are checked before anything runs; a run that stops before its first
job leaves no results folder.
Interrupted (Ctrl-C, SIGTERM): the workers are stopped, the results folder keeps every finished
job and is marked INTERRUPTED; `--resume FOLDER` runs only the missing jobs.
Exit status: 0 all libraries trained, 1 any library failed (its row says why), 2 bad input,
130/143 interrupted by SIGINT/SIGTERM."""


def _percent(text: str) -> float:
    """argparse type: '3%' or '3' -> 0.03."""
    try:
        return float(text.strip().rstrip("%")) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 3%, got {text!r}") from None


def parser() -> Parser:
    from builders import FAST_PATHS, LIBRARIES

    p = Parser(prog="python -m cli.train", description=description(__doc__.split("\n\n")[0]),
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("libraries", nargs="*", metavar="LIBRARY",
                   help=f"'all' (the six libraries: {', '.join(LIBRARIES)}), 'fast-paths' (faster ways to run "
                        f"the same model, each verified before it is timed: {', '.join(FAST_PATHS)}), or any of these")
    p.add_argument("--experiment", default="seed-2017", help="experiment name (default seed-2017)")
    p.add_argument("--model", metavar="PATH",
                   help="model to train in place of the experiment's: an ONNX file, or a Keras file (.keras, safe "
                        "mode), a TensorFlow SavedModel folder or a torch.export program (.pt2), converted to ONNX "
                        "first and kept in the results folder; any model `verify equivalence` passes with a 3x32x32 "
                        "input and 10 classes (a model ending in logits gets the softmax inside the loss; BatchNorm "
                        "trains in ONNX's training mode); verified before it trains")
    p.add_argument("--optimizer", choices=planning.OPTIMIZERS, default="canonical", help="RMSprop mode (default canonical)")
    p.add_argument("--batchnorm", choices=MODES, default="canonical",
                   help="BatchNorm training semantics: canonical = the graph's momentum and epsilon, ONNX's training "
                        "mode (biased batch variance); native = each library's own layer with its defaults (every "
                        "departure listed in the report); momentum, epsilon, running-variance = canonical with only "
                        "that one native departure (to attribute a native gap) (default canonical)")
    p.add_argument("--augment", action="store_true",
                   help="random crop (the experiment's padding) and horizontal flip, drawn by the harness once per "
                        "epoch and image and applied identically in every library (the experiment's [augment] table)")
    p.add_argument("--epochs", type=int, help="epochs (default: the experiment's)")
    p.add_argument("--train-images", type=int, metavar="N",
                   help="train on the first N training images instead of the experiment's count (at most what the "
                        "data holds)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the experiment's)")
    p.add_argument("--seed", type=int, help="seed of the shared shuffling (default: the experiment's)")
    p.add_argument("--dropout", choices=planning.DROPOUTS, default="own",
                   help="own: each library draws its own dropout masks (seeded by --seed); identical: the harness "
                        "draws every mask from one seeded stream and every library applies exactly those; "
                        "off: no dropout (default own)")
    p.add_argument("--no-dropout", action="store_true", help="same as --dropout off")
    p.add_argument("--max-batches", type=int, help="train only the first N batches of each epoch (quick checks)")
    p.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="train every library K times, with seeds --seed, --seed+1, ...: dropout masks and (if the "
                        "experiment shuffles) batch order vary; the report adds mean, spread and pairwise "
                        "significance (default 1)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="benchmark: train every library N times with the same seed, each in a fresh process; the "
                        "report gives median and spread of epoch times and images/s, first epoch apart, GFLOP/s "
                        "and %% of this machine's measured matrix-multiply peak, peak memory (default 1)")
    p.add_argument("--target-ci", type=_percent, metavar="PCT",
                   help="with --repeat N: stop repeating once every library's harness/plain ratio has a 95 %% "
                        "interval within +-PCT (wall or CPU time, whichever is narrower; e.g. 3%%); N is the cap")
    p.add_argument("--no-plain", action="store_true",
                   help="with --repeat: skip the plain tutorial-style loops (benchmarks/plain) that measure the "
                        "harness's overhead")
    p.add_argument("--init", choices=planning.INITS, default="fixed",
                   help="initial weights: fixed = the experiment's model for every seed; seeded = Glorot-uniform "
                        "weights redrawn from each seed, the same in every library (default fixed)")
    p.add_argument("--executor", choices=planning.EXECUTORS, default="local",
                   help="local: jobs one after another on this machine; dask: (library, seed) jobs on a Dask "
                        "cluster (default local)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: an existing scheduler (tcp://host:port); default: start a local "
                        "cluster of --workers processes")
    p.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster (default 2)")
    p.add_argument("--threads", type=int,
                   help=f"threads every library may use (default: all {os.cpu_count()} cores; with a local Dask "
                        "cluster, the cores divided among its workers)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one library may train (default 3600)")
    p.add_argument("--out", default="results", help="folder that receives this run's results folder")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 archive, folder or npz")
    p.add_argument("--progress", choices=PROGRESS_MODES, default="auto", help=PROGRESS_HELP)
    p.add_argument("--resume", metavar="FOLDER",
                   help="finish an interrupted run: the same options as that run (read from its folder), only "
                        "the jobs it did not finish; no other arguments")
    return p


def options_of(args) -> TrainOptions:
    return TrainOptions(
        libraries=list(args.libraries), experiment=args.experiment, model=args.model, optimizer=args.optimizer,
        batchnorm=args.batchnorm, augment=args.augment,
        epochs=args.epochs, train_images=args.train_images,
        batch_size=args.batch_size, seed=args.seed, dropout="off" if args.no_dropout else args.dropout,
        max_batches=args.max_batches, seeds=args.seeds, repeat=args.repeat, plain=not args.no_plain,
        target_ci=args.target_ci, init=args.init,
        executor=args.executor, scheduler=args.scheduler, workers=args.workers, threads=args.threads,
        timeout=args.timeout, out=args.out, data=args.data, progress=args.progress)


def parse(argv: list) -> tuple:
    """(options, None) for a new run, or (None, FOLDER) for --resume FOLDER; a parser error exits 2."""
    p = parser()
    args = p.parse_args(argv)
    if args.resume:
        if argv != ["--resume", args.resume] and argv != [f"--resume={args.resume}"]:
            p.error("--resume takes no other arguments: the run's own are read from its folder")
        return None, Path(args.resume)
    return options_of(args), None


def resumed(folder: Path) -> TrainOptions:
    """The options of the interrupted run whose results folder this is, or BadInput."""
    if not folder.is_dir():
        raise BadInput(f"{folder}: not a results folder (" + ("a file" if folder.exists() else "no such folder") + ")")
    if (folder / "results.json").exists() and not (folder / "INTERRUPTED").exists():
        raise BadInput(f"{folder}: this run finished; there is nothing to resume")
    try:
        saved = json.loads((folder / INVOCATION).read_text())
        if "options" in saved:
            return TrainOptions.from_json(saved["options"])
        return options_of(parser().parse_args([str(a) for a in saved["argv"]]))  # a folder of trainers.run
    except FileNotFoundError:
        raise BadInput(f"{folder}: not a results folder of cli.train (no {INVOCATION})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"{folder / INVOCATION}: unreadable ({exc})") from None
    except SystemExit:
        raise BadInput(f"{folder / INVOCATION}: its arguments no longer parse") from None


def prepare(options: TrainOptions, folder: Path | None = None, like: planning.Plan | None = None) -> planning.Plan:
    """The plan of a new run (or of the run resumed in `folder`), everything checked: options, libraries,
    experiment, model, data, the verification inputs and where results can be written. BadInput otherwise.
    `like`: a plan prepared before on the same experiment and data (they are not loaded and checked again)."""
    plan = planning.make(options, like, folder)
    if folder is None:
        dispatch.check_out(options.out)
    if options.scheduler:  # an existing cluster: refused before anything is written unless it can run the jobs
        from trainers.executors import ClusterError, check_cluster
        try:
            check_cluster(options.scheduler, plan.names)
        except ClusterError as exc:
            raise BadInput(str(exc)) from None
    if plan.spec is not getattr(like, "spec", None):
        gate.preflight(plan)
    return plan


def execute(plan: planning.Plan, folder: Path | None = None, argv: list | None = None) -> tuple:
    """Gate, dispatch and report a prepared plan (into `folder` when resuming); (exit status, results folder or
    None when nothing was written). BadInput from the gate means nothing was written either."""
    try:
        verified = gate.verify(plan, folder)
    except lifeline.Interrupted as exc:
        print(f"{exc} during verification; " + ("nothing was written" if folder is None else
                                                 f"{folder} is as it was"), file=sys.stderr)
        return exc.exit_status, folder
    if folder is None:
        folder = dispatch.new_folder(Path(plan.options.out), plan.folder_name(time.strftime("%Y%m%d-%H%M%S")))
        converted = planning.keep_conversion(plan, folder)
        results.write_json(folder / INVOCATION, {"options": plan.options.to_json(), "argv": argv,
                                                 **({"converted": converted} if converted else {})})
    if not (folder / gate.VERIFICATION).exists():  # new, or resumed from an interruption during verification
        if plan.conversion:  # the file verified, kept: the same bytes under the name the results give
            verified.model, verified.converted = str(plan.model_path), plan.conversion.to_json()
        results.write_json(folder / gate.VERIFICATION, verified.to_json())
    print(f"results folder: {folder}", file=sys.stderr)
    passed, refused = gate.verdicts(verified, plan.names)
    outcome = dispatch.run(plan, folder, passed, refused, _peak(plan) if plan.mode == "benchmark" else None,
                           _still_wanted(plan, passed) if plan.options.target_ci else None)
    return finish(plan, folder, outcome)


def _peak(plan: planning.Plan):
    from benchmarks import bench

    return lambda: bench.machine_peak(plan.threads)


def _still_wanted(plan: planning.Plan, names: list):
    """--target-ci: before each run, those of `names` (the libraries that passed the gate) whose harness/plain
    interval is not yet narrow enough (said on stderr); the run trains only those, and none left ends the runs."""
    from benchmarks import bench, stats

    def wanted(outcome) -> list:
        runs, plain = ({key: {name: row.to_json() for name, row in rows.items()} for key, rows in which.items()}
                       for which in (outcome.runs, outcome.plain))
        found = bench.widths(runs, plain, names, os.cpu_count() or 1)
        target, left = plan.options.target_ci, bench.unsettled(found, plan.options.target_ci)
        if not found:
            return []
        lacking = [name for name, (width, _) in found.items() if width is None]
        if lacking:
            said = (f"{lacking[0]} has no interval yet (it needs {stats.policy()['minimum_runs']} runs with "
                    "undisturbed epochs)")
        else:
            width, name, clock = max((width, name, clock) for name, (width, clock) in found.items())
            said = f"widest harness/plain interval ±{100 * width:.1f} % ({name}, {clock} time)"
        if not left:
            said += "; enough runs"
        elif len(left) < len(found):
            said += f"; the next run trains only {', '.join(left)} (the others are within ±{100 * target:g} %)"
        print(f"--target-ci ±{100 * target:g} %: {said}", file=sys.stderr, flush=True)
        return left
    return wanted


def benchmark_report(plan, outcome, folder: Path) -> tuple:
    """The --repeat mode's results document and Markdown: the run's document plus benchmarks.bench's figures."""
    from analysis import modes, report
    from benchmarks import bench
    from spec import flops

    run = modes.document(plan, outcome)
    run.plain = outcome.plain
    doc = run.to_json()
    run.benchmark = bench.summarize(doc["runs"], plan.names, plan.images, flops.model_flops(plan.spec), outcome.peaks,
                                    doc["plain"], run.environment["cores"])
    doc = run.to_json()
    bench.plot(doc, folder)
    return run, "\n".join(report.heading(run) + bench.markdown(doc)) + "\n"


def judge_models(plan: planning.Plan, outcome, folder: Path) -> None:
    """Each finished row's trained model evaluated by onnxruntime beside the library's own last evaluation."""
    from spec.training import ends_in_logits
    from verify import judge
    from workers.records import Judgement

    rules, x_val, y_val = judge.policy(), plan.arrays[2], plan.arrays[3]
    for rows in outcome.runs.values():
        for row in rows.values():
            if row.status != "ok" or not row.record.epochs:
                continue
            if row.model is None:
                row.judge = Judgement("no model", "the trained model could not be written (see the run's stderr)")
                continue
            last = row.record.epochs[-1]
            row.judge = judge.judge(folder / row.model, plan.spec, x_val, y_val, last.val_loss, last.val_acc,
                                    ends_in_logits(plan.spec), rules)


def finish(plan: planning.Plan, folder: Path, outcome) -> tuple:
    """Write the report of the dispatched rows; (exit status, folder)."""
    from analysis import modes

    judge_models(plan, outcome, folder)
    run, text = modes.make(plan, outcome, folder, {"benchmark": benchmark_report})
    results.write_json(folder / "results.json", run.to_json())
    results.write_atomic(folder / "results.md", text)
    if outcome.interrupted is not None:
        results.write_atomic(folder / "INTERRUPTED", f"{outcome.interrupted}; {len(outcome.missing)} job(s) missing.\n"
                                                     f"Resume: {modes.RESUME} {folder}\n")
        print(f"interrupted: results so far in {folder}; resume with --resume {folder}", file=sys.stderr)
        return outcome.interrupted.exit_status, folder
    (folder / "INTERRUPTED").unlink(missing_ok=True)
    print(text)
    print(f"results: {folder}")
    rows = [row for by_run in (outcome.runs, outcome.plain) for by_name in by_run.values() for row in by_name.values()]
    return (EXIT_FAILED if any(row.status != "ok" for row in rows) else EXIT_OK), folder


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, folder = parse(argv)
    lifeline.on_interrupt_raise()
    try:
        if folder is not None:
            options = resumed(folder)
        plan = prepare(options, folder)
        code, _ = execute(plan, folder, argv)
    except BadInput as exc:
        return fail(str(exc))
    except lifeline.Interrupted as exc:
        print(f"{exc} before anything ran; nothing was written", file=sys.stderr)
        return exc.exit_status
    return code


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("cli.train")
    sys.exit(main())
