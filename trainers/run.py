"""`python -m trainers.run all` / `python -m trainers.run pytorch tflearn`: identical RMSprop epochs in
each library, forward equivalence verified first, results table + JSON + plots in a results folder."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED_LIBRARY, EXIT_BAD_INPUT = 0, 1, 2
DROPOUT_SUFFIX = {"own": "", "identical": "-identicaldropout", "off": "-nodropout"}
INVOCATION = "invocation.json"  # in every results folder: the arguments that made it, for --resume


def parser() -> argparse.ArgumentParser:
    from builders import FAST_PATHS, FRAMEWORKS

    p = argparse.ArgumentParser(
        prog="python -m trainers.run", description=__doc__.split(":", 1)[1].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Optimizer modes:\n"
               "  canonical  every library performs the same RMSprop arithmetic (lr, rho, eps of the experiment;\n"
               "             mean square starting at 0; eps inside the square root), with the library's optimizer\n"
               "             configured to match or a small subclass where it cannot; the table says how.\n"
               "  native     the RMSprop the library's own API offers in the version installed, with its defaults\n"
               "             (tensorlayer has none: TensorFlow 2's tf.optimizers.RMSprop, as for raw TensorFlow);\n"
               "             the table names each row's implementation and where it departs from canonical.\n"
               "Experiments (spec/experiments.toml):\n"
               "  seed-2017  first 2000 training images, validation on the first 400 of them, no shuffling\n"
               "  default    same training images, validation on official test images, shuffled by --seed\n"
               "Interrupted (Ctrl-C, SIGTERM): the workers are stopped, the results folder keeps every finished\n"
               "job and is marked INTERRUPTED; `--resume FOLDER` runs only the missing jobs.\n"
               "Exit status: 0 all libraries trained, 1 any library failed (its row says why), 2 bad input,\n"
               "130/143 interrupted by SIGINT/SIGTERM.")
    p.add_argument("libraries", nargs="*", metavar="LIBRARY",
                   help=f"'all' (the six libraries: {', '.join(FRAMEWORKS)}), 'fast-paths' (faster ways to run "
                        f"the same model, each verified before it is timed: {', '.join(FAST_PATHS)}), or any of these")
    p.add_argument("--experiment", default="seed-2017", help="experiment name (default seed-2017)")
    p.add_argument("--optimizer", choices=("canonical", "native"), default="canonical",
                   help="RMSprop mode (default canonical)")
    p.add_argument("--epochs", type=int, help="epochs (default: the experiment's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the experiment's)")
    p.add_argument("--seed", type=int, help="seed of the shared shuffling (default: the experiment's)")
    p.add_argument("--dropout", choices=("own", "identical", "off"), default="own",
                   help="own: each library draws its own dropout masks (seeded by --seed); identical: the harness "
                        "draws every mask from one seeded stream and every library applies exactly those; "
                        "off: no dropout (default own)")
    p.add_argument("--no-dropout", action="store_true", help="same as --dropout off")
    p.add_argument("--max-batches", type=int, default=None,
                   help="train only the first N batches of each epoch (quick checks)")
    p.add_argument("--seeds", type=int, default=1, metavar="K",
                   help="train every library K times, with seeds --seed, --seed+1, ...: dropout masks and (if the "
                        "experiment shuffles) batch order vary; the report adds mean, spread and pairwise "
                        "significance (default 1)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="benchmark: train every library N times with the same seed, each in a fresh process; the "
                        "report gives median and spread of epoch times and images/s, first epoch apart, GFLOP/s "
                        "and %% of this machine's measured matrix-multiply peak, peak memory (default 1)")
    p.add_argument("--no-plain", action="store_true",
                   help="with --repeat: skip the plain tutorial-style loops (benchmarks/plain) that measure the "
                        "harness's overhead")
    p.add_argument("--init", choices=("fixed", "seeded"), default="fixed",
                   help="initial weights: fixed = the experiment's model for every seed; seeded = Glorot-uniform "
                        "weights redrawn from each seed, the same in every library (default fixed)")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="local: jobs one after another on this machine; dask: (library, seed) jobs on a Dask "
                        "cluster (default local)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: an existing scheduler (tcp://host:port); default: start a local "
                        "cluster of --workers processes")
    p.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"threads every library may use (default: all {os.cpu_count()} cores; with a local Dask "
                        "cluster, the cores divided among its workers)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one library may train (default 3600)")
    p.add_argument("--out", default="results", help="folder that receives this run's results folder")
    p.add_argument("--data", default=None, metavar="PATH", help="CIFAR-10 archive, folder or npz")
    p.add_argument("--resume", metavar="FOLDER",
                   help="finish an interrupted run: the same arguments as that run (read from its folder), only "
                        "the jobs it did not finish; no other arguments")
    return p


def _positive(args, parser_):
    for name in ("epochs", "batch_size", "max_batches", "threads", "seeds", "workers", "repeat"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser_.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.repeat > 1 and args.seeds > 1:
        parser_.error("--repeat and --seeds do not combine: a benchmark repeats one seed")
    if args.repeat > 1 and args.executor == "dask":
        parser_.error("--repeat needs --executor local: timings from several jobs at once are not a benchmark")
    if args.scheduler and args.executor != "dask":
        parser_.error("--scheduler needs --executor dask")
    if args.threads is None:
        local_cluster = args.executor == "dask" and not args.scheduler
        args.threads = max(1, (os.cpu_count() or 1) // args.workers) if local_cluster else os.cpu_count() or 1


class BadInput(Exception):
    """A user error: one line, exit 2."""


def parse(argv=None) -> argparse.Namespace:
    p = parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.resume:
        if argv != ["--resume", args.resume] and argv != [f"--resume={args.resume}"]:
            p.error("--resume takes no other arguments: the run's own are read from its folder")
        return args
    if not args.libraries:
        p.error("name the libraries to train ('all', 'fast-paths' or names)")
    _positive(args, p)
    args.argv = argv
    return args


def resumed(folder: str) -> tuple:
    """(the arguments of the run whose results folder this is, the folder), or BadInput."""
    path = Path(folder)
    try:
        saved = json.loads((path / INVOCATION).read_text())
        argv = [str(a) for a in saved["argv"]]
    except FileNotFoundError:
        raise BadInput(f"{path}: not a results folder of trainers.run (no {INVOCATION})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{path / INVOCATION}: unreadable ({exc})") from None
    if (path / "results.json").exists() and not (path / "INTERRUPTED").exists():
        raise BadInput(f"{path}: this run finished; there is nothing to resume")
    try:
        return parse(argv), path
    except SystemExit:
        raise BadInput(f"{path / INVOCATION}: its arguments no longer parse") from None


def prepare(args) -> tuple:
    """(library names, experiment, model path, spec, arrays) for `args`, or BadInput naming the problem."""
    import cifar10
    from spec import experiments
    from spec.onnx_import import ModelError, import_model
    from builders import select
    from trainers import harness

    try:
        names = select(args.libraries)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    try:
        experiment = experiments.load(args.experiment)
        model_path = experiments.model_path(experiment)
        spec = import_model(model_path)
        arrays = harness.datasets(cifar10.find(args.data), experiment)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    except (ModelError, cifar10.DataError) as exc:
        raise BadInput(str(exc)) from None
    return names, experiment, model_path, spec, arrays


def main(argv=None) -> int:
    import lifeline

    args, folder = parse(argv), None
    lifeline.on_interrupt_raise()
    try:
        if args.resume:
            args, folder = resumed(args.resume)
        prepared = prepare(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except lifeline.Interrupted as exc:
        print(f"{exc} before anything ran; nothing was written", file=sys.stderr)
        return exc.exit_status
    code, _ = execute(args, *prepared, folder=folder)
    return code


def _varies(experiment: dict, config: dict, init: str) -> list:
    out = []
    if config["dropout"]:
        out.append("dropout masks (" + ("drawn by the harness, identical in every library)" if config["dropout_masks"] ==
                                        "harness" else "each library's own generator, seeded)"))
    out.append("batch order" if experiment["shuffle"] else "nothing in the batch order (the experiment does not shuffle)")
    out.append("initial weights (redrawn from each seed)" if init == "seeded" else
               "not the initial weights (the experiment's model for every seed)")
    return out


def new_folder(out: Path, name: str) -> Path:
    """out/name, or out/name-2, -3, ... when a run started in the same second already took it."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        folder = out / (name if i == 1 else f"{name}-{i}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise BadInput(f"{out}: too many results folders named {name}")


class Ledger:
    """Every finished job's row, saved in the results folder the moment it arrives (rows/), so that an
    interrupted run loses nothing and --resume runs only what is missing."""

    def __init__(self, folder: Path):
        self.folder = folder / "rows"

    def _path(self, job) -> Path:
        return self.folder / job.run / f"{job.framework}{'.plain' if job.plain else ''}.json"

    def load(self, job):
        path = self._path(job)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, job, row) -> None:
        import results
        results.write_json(self._path(job), row)


def execute(args, names, experiment, model_path, spec, arrays, folder: Path | None = None) -> tuple:
    """Verify, train every (library, seed) job, write the results folder; (exit status, folder). With `folder`
    (--resume), the jobs already in its ledger are kept and only the others run."""
    import lifeline
    import results
    from benchmarks import bench
    from builders import FAST_PATHS
    from spec import flops
    from trainers import harness, report, sweep
    from trainers.executors import Job, run_dask, run_local
    from verify import equivalence

    epochs = args.epochs or experiment["epochs"]
    batch_size = args.batch_size or experiment["batch_size"]
    base_seed = experiment["seed"] if args.seed is None else args.seed
    seeds = [base_seed + i for i in range(args.seeds)]
    if args.repeat > 1:  # (runs key, seed, tag): the same seed again in fresh processes
        plan = [(f"repeat{r}", base_seed, f"repeat {r}") for r in range(1, args.repeat + 1)]
    else:
        plan = [(str(seed), seed, f"seed {seed}" if len(seeds) > 1 else "") for seed in seeds]
    limit = args.max_batches * batch_size if args.max_batches else None
    dropout = "off" if args.no_dropout else args.dropout
    configs = {seed: harness.config_for(experiment, epochs, batch_size, args.optimizer, args.threads, seed,
                                        dropout=dropout != "off",
                                        dropout_masks="harness" if dropout == "identical" else "library")
               for seed in seeds}
    config = configs[base_seed]
    images = len(arrays[0]) if limit is None else min(limit, len(arrays[0]))
    steps_total = epochs * -(-images // batch_size)

    if folder is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        sweep_suffix = f"-{len(seeds)}seeds" if len(seeds) > 1 else f"-repeat{args.repeat}" if args.repeat > 1 else ""
        folder = new_folder(Path(args.out),
                             f"{stamp}-{args.experiment}-{args.optimizer}{DROPOUT_SUFFIX[dropout]}{sweep_suffix}")
        results.write_json(folder / INVOCATION, {"argv": args.argv})
    print(f"results folder: {folder}", file=sys.stderr)
    ledger = Ledger(folder)

    runs = {key: {} for key, _, _ in plan}
    plain = {key: {} for key, _, _ in plan}
    peaks, jobs, interrupted = [], [], None
    try:
        with tempfile.TemporaryDirectory(prefix="train-") as tmp:
            if (folder / "verification.json").exists():  # resumed: verified before
                verified = results.read_json(folder / "verification.json")
            else:
                print(f"verifying forward equivalence of {len(names)} libraries first", file=sys.stderr, flush=True)
                verified = equivalence.run(model_path, names, args.data)
                results.write_json(folder / "verification.json", verified)
            jobs = []
            for key, seed, tag in plan:
                job_dir = Path(tmp) / f"seed-{seed}"
                if not job_dir.exists():
                    seed_spec = spec if args.init == "fixed" else harness.reinitialised(spec, seed)
                    train_spec = seed_spec if configs[seed]["dropout"] else harness.without_dropout(seed_spec)
                    order = harness.batch_order(len(arrays[0]), epochs, experiment["shuffle"], seed, limit)
                    harness.write_job(job_dir, train_spec, arrays, order, configs[seed])
                for name in names:
                    check = verified["frameworks"][name]
                    if check["status"] == "pass":
                        jobs.append(Job(name, key, job_dir, steps_total, tag))
                        if args.repeat > 1 and not args.no_plain:  # alternate harness and plain runs
                            jobs.append(Job(name, key, job_dir, steps_total, tag, plain=True))
                        continue
                    where = check.get("first_divergent_layer") or {}
                    reason = check["message"] or f"first divergent layer {where.get('name')}"
                    runs[key][name] = {"status": "not verified", "wall_s": 0.0,
                                       "reason": f"forward equivalence {check['status']}: {reason}",
                                       "record": {"optimizer": None, "steps": [], "epochs": []}}
                    if key == plan[0][0]:
                        print(f"{name}: not trained ({runs[key][name]['reason']})", file=sys.stderr)
            todo = []
            for job in jobs:
                row = ledger.load(job)
                if row is None:
                    todo.append(job)
                else:
                    (plain if job.plain else runs)[job.run][job.framework] = row
            if len(todo) < len(jobs):
                print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} jobs already done", file=sys.stderr)
            if args.repeat > 1:
                peaks.append(bench.machine_peak(args.threads))
            if args.executor == "dask":
                finished = run_dask(todo, args.threads, args.timeout, folder, args.scheduler, args.workers)
            else:
                finished = run_local(todo, args.threads, args.timeout, folder)
            for job, row in finished:
                ledger.save(job, row)
                (plain if job.plain else runs)[job.run][job.framework] = row
                if row["status"] != "ok":
                    print(f"{job.label}: {row['status']} — {row['reason']}", file=sys.stderr)
            if args.repeat > 1:
                peaks.append(bench.machine_peak(args.threads))
    except lifeline.Interrupted as exc:
        stopped = lifeline.stop_all()
        interrupted = exc
        print(f"\n{exc}: stopped {stopped} worker(s); writing what finished", file=sys.stderr, flush=True)
    if interrupted is not None and not (folder / "verification.json").exists():
        results.write_atomic(folder / "INTERRUPTED", f"{interrupted} during verification; nothing trained.\n"
                                                     f"Resume: python -m trainers.run --resume {folder}\n")
        return interrupted.exit_status, folder
    missing = []
    for job in jobs:
        rows = plain if job.plain else runs
        if job.framework not in rows[job.run]:
            missing.append(job.label + (" (plain loop)" if job.plain else ""))
            rows[job.run][job.framework] = (
                {"status": "interrupted", "reason": "did not finish: the run was interrupted"} if job.plain else
                {"status": "interrupted", "reason": "did not finish: the run was interrupted", "wall_s": 0.0,
                 "record": {"optimizer": None, "steps": [], "epochs": []}})

    for key, rows in runs.items():
        for row in rows.values():
            row["summary"] = report.summarize(row, images)
            row["departures"] = report.departures(row["record"]["optimizer"], experiment["optimizer"])
        runs[key] = {name: rows[name] for name in names if name in rows}  # the order the user named them
    validation = experiment["validation"]
    run = {
        "experiment": args.experiment, "experiment_spec": experiment, "model": str(model_path), "config": config,
        "images_per_epoch": images, "init": args.init,
        "validation": f"validation on the first {validation['images']} official {validation['split']} images",
        "shuffled": bool(experiment["shuffle"]), "environment": report.environment(args.threads),
        "executor": args.executor, "seeds": seeds, "runs": runs,
        "fast_paths": {n: {"base": FAST_PATHS[n].base, "changes": FAST_PATHS[n].changes}
                       for n in names if n in FAST_PATHS},
    }
    if args.repeat > 1:
        run["plain"] = plain
        run["benchmark"] = bench.summarize(runs, names, images, flops.model_flops(spec), peaks, plain)
        text = "\n".join(report.heading(run) + bench.markdown(run)) + "\n"
        bench.plot(run, folder)
    elif len(seeds) == 1:
        run["libraries"] = runs[str(base_seed)]
        if config["optimizer"]["mode"] == "canonical" and (not config["dropout"] or config["dropout_masks"] == "harness"):
            run["step_agreement"] = report.step_agreement(run["libraries"], 3,
                                                          report.load_tolerances()["step_loss_rtol"])
        text = report.markdown(run)
        report.plots(run, folder)
    else:
        run["varies"] = _varies(experiment, config, args.init)
        run["sweep"] = sweep.summarize(runs, names, epochs, images)
        run["drift"] = sweep.drift(runs, names)
        run["significance"] = sweep.significance(runs, names, epochs, report.load_tolerances()["significance"])
        text = "\n".join(report.heading(run) + sweep.markdown(run)) + "\n"
        sweep.plots(run, folder)
    if interrupted is not None:
        run["interrupted"] = {"signal": interrupted.signal_name, "missing": missing}
        text = (f"**INTERRUPTED by {interrupted.signal_name}**: {len(missing)} job(s) did not finish "
                f"({', '.join(missing)}); their rows say 'interrupted'. Finish them with "
                f"`python -m trainers.run --resume {folder}`.\n\n" + text)
    results.write_json(folder / "results.json", run)
    results.write_atomic(folder / "results.md", text)
    if interrupted is not None:
        results.write_atomic(folder / "INTERRUPTED", f"{interrupted}; {len(missing)} job(s) missing.\n"
                                                     f"Resume: python -m trainers.run --resume {folder}\n")
        print(f"interrupted: results so far in {folder}; resume with --resume {folder}", file=sys.stderr)
        return interrupted.exit_status, folder
    (folder / "INTERRUPTED").unlink(missing_ok=True)
    print(text)
    print(f"results: {folder}")
    failed = [row for rows in [*runs.values(), *plain.values()] for row in rows.values() if row["status"] != "ok"]
    return (EXIT_FAILED_LIBRARY if failed else EXIT_OK), folder


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("trainers.run")
    sys.exit(main())
