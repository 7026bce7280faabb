"""`python -m trainers.run all` / `python -m trainers.run pytorch tflearn`: identical RMSprop epochs in
each library, forward equivalence verified first, results table + JSON + plots in a results folder."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED_LIBRARY, EXIT_BAD_INPUT = 0, 1, 2
DROPOUT_SUFFIX = {"own": "", "identical": "-identicaldropout", "off": "-nodropout"}


def parser() -> argparse.ArgumentParser:
    from builders import FAST_PATHS, FRAMEWORKS

    p = argparse.ArgumentParser(
        prog="python -m trainers.run", description=__doc__.split(":", 1)[1].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Optimizer modes:\n"
               "  canonical  every library performs the same RMSprop arithmetic (lr, rho, eps of the experiment;\n"
               "             mean square starting at 0; eps inside the square root), with the library's optimizer\n"
               "             configured to match or a small subclass where it cannot; the table says how.\n"
               "  native     each library's own RMSprop with its own defaults, as 'default RMSprop' gives it;\n"
               "             the table says where each departs from canonical.\n"
               "Experiments (spec/experiments.toml):\n"
               "  seed-2017  first 2000 training images, validation on the first 400 of them, no shuffling\n"
               "  default    same training images, validation on official test images, shuffled by --seed\n"
               "Exit status: 0 all libraries trained, 1 any library failed (its row says why), 2 bad input.")
    p.add_argument("libraries", nargs="+", metavar="LIBRARY",
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
    args = p.parse_args(argv)
    _positive(args, p)
    return args


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
    args = parse(argv)
    try:
        prepared = prepare(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    code, _ = execute(args, *prepared)
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


def execute(args, names, experiment, model_path, spec, arrays) -> tuple:
    """Verify, train every (library, seed) job, write the results folder; (exit status, folder)."""
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

    stamp = time.strftime("%Y%m%d-%H%M%S")
    sweep_suffix = f"-{len(seeds)}seeds" if len(seeds) > 1 else f"-repeat{args.repeat}" if args.repeat > 1 else ""
    folder = Path(args.out) / f"{stamp}-{args.experiment}-{args.optimizer}{DROPOUT_SUFFIX[dropout]}{sweep_suffix}"
    folder.mkdir(parents=True, exist_ok=False)
    print(f"results folder: {folder}", file=sys.stderr)

    print(f"verifying forward equivalence of {len(names)} libraries first", file=sys.stderr, flush=True)
    verified = equivalence.run(model_path, names, args.data)
    results.write_json(folder / "verification.json", verified)

    runs = {key: {} for key, _, _ in plan}
    plain = {key: {} for key, _, _ in plan}
    peaks = []
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
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
        if args.repeat > 1:
            peaks.append(bench.machine_peak(args.threads))
        if args.executor == "dask":
            finished = run_dask(jobs, args.threads, args.timeout, folder, args.scheduler, args.workers)
        else:
            finished = run_local(jobs, args.threads, args.timeout, folder)
        for job, row in finished:
            (plain if job.plain else runs)[job.run][job.framework] = row
            if row["status"] != "ok":
                print(f"{job.label}: {row['status']} — {row['reason']}", file=sys.stderr)
        if args.repeat > 1:
            peaks.append(bench.machine_peak(args.threads))

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
    results.write_json(folder / "results.json", run)
    results.write_atomic(folder / "results.md", text)
    print(text)
    print(f"results: {folder}")
    failed = [row for rows in [*runs.values(), *plain.values()] for row in rows.values() if row["status"] != "ok"]
    return (EXIT_FAILED_LIBRARY if failed else EXIT_OK), folder


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("trainers.run")
    sys.exit(main())
