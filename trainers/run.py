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


def parser() -> argparse.ArgumentParser:
    from trainers import FRAMEWORKS

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
                   help=f"'all' or any of: {', '.join(FRAMEWORKS)}")
    p.add_argument("--experiment", default="seed-2017", help="experiment name (default seed-2017)")
    p.add_argument("--optimizer", choices=("canonical", "native"), default="canonical",
                   help="RMSprop mode (default canonical)")
    p.add_argument("--epochs", type=int, help="epochs (default: the experiment's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the experiment's)")
    p.add_argument("--seed", type=int, help="seed of the shared shuffling (default: the experiment's)")
    p.add_argument("--no-dropout", action="store_true", help="train with dropout switched off")
    p.add_argument("--max-batches", type=int, default=None,
                   help="train only the first N batches of each epoch (quick checks)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help=f"threads every library may use (default: all cores, {os.cpu_count()})")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one library may train (default 3600)")
    p.add_argument("--out", default="results", help="folder that receives this run's results folder")
    p.add_argument("--data", default=None, metavar="PATH", help="CIFAR-10 archive, folder or npz")
    return p


def _positive(args, parser_):
    for name in ("epochs", "batch_size", "max_batches", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser_.error(f"--{name.replace('_', '-')} must be at least 1")


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    _positive(args, p)
    import cifar10
    import results
    from spec import experiments
    from spec.onnx_import import ModelError, import_model
    from trainers import FRAMEWORKS, harness, report
    from trainers.supervisor import train_one
    from verify import equivalence

    names = list(FRAMEWORKS) if args.libraries == ["all"] else args.libraries
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        print(f"error: unknown library {unknown[0]!r}; choose from {', '.join(FRAMEWORKS)} or 'all'", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        experiment = experiments.load(args.experiment)
        model_path = experiments.model_path(experiment)
        spec = import_model(model_path)
        arrays = harness.datasets(cifar10.find(args.data), experiment)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ModelError, cifar10.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    epochs = args.epochs or experiment["epochs"]
    batch_size = args.batch_size or experiment["batch_size"]
    seed = experiment["seed"] if args.seed is None else args.seed
    limit = args.max_batches * batch_size if args.max_batches else None
    order = harness.batch_order(len(arrays[0]), epochs, experiment["shuffle"], seed, limit)
    config = harness.config_for(experiment, epochs, batch_size, args.optimizer, args.threads, seed,
                                dropout=not args.no_dropout)
    train_spec = spec if config["dropout"] else harness.without_dropout(spec)
    steps_per_epoch = -(-order.shape[1] // batch_size)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(args.out) / f"{stamp}-{args.experiment}-{args.optimizer}{'' if config['dropout'] else '-nodropout'}"
    folder.mkdir(parents=True, exist_ok=False)
    print(f"results folder: {folder}", file=sys.stderr)

    print(f"verifying forward equivalence of {len(names)} libraries first", file=sys.stderr, flush=True)
    verified = equivalence.run(model_path, names, args.data)
    results.write_json(folder / "verification.json", verified)

    rows = {}
    with tempfile.TemporaryDirectory(prefix="train-") as tmp:
        job = Path(tmp)
        harness.write_job(job, train_spec, arrays, order, config)
        for name in names:
            check = verified["frameworks"][name]
            if check["status"] != "pass":
                where = check.get("first_divergent_layer") or {}
                reason = check["message"] or f"first divergent layer {where.get('name')}"
                rows[name] = {"status": "not verified", "reason": f"forward equivalence {check['status']}: {reason}",
                              "record": {"optimizer": None, "steps": [], "epochs": []}, "wall_s": 0.0}
                print(f"{name}: not trained ({rows[name]['reason']})", file=sys.stderr)
                continue
            rows[name] = train_one(name, job, epochs * steps_per_epoch, args.threads, args.timeout, folder)
            if rows[name]["status"] != "ok":
                print(f"{name}: {rows[name]['status']} — {rows[name]['reason']}", file=sys.stderr)

    images = order.shape[1]
    for row in rows.values():
        row["summary"] = report.summarize(row, images)
        row["departures"] = report.departures(row["record"]["optimizer"], experiment["optimizer"])
    validation = experiment["validation"]
    run = {
        "experiment": args.experiment, "experiment_spec": experiment, "model": str(model_path), "config": config,
        "images_per_epoch": images,
        "validation": f"validation on the first {validation['images']} official {validation['split']} images",
        "shuffled": bool(experiment["shuffle"]), "environment": report.environment(args.threads),
        "libraries": rows,
    }
    if config["optimizer"]["mode"] == "canonical" and not config["dropout"]:
        run["step_agreement"] = report.step_agreement(rows, 3, report.load_tolerances()["step_loss_rtol"])
    text = report.markdown(run)
    results.write_json(folder / "results.json", run)
    results.write_atomic(folder / "results.md", text)
    report.plots(run, folder)
    print(text)
    print(f"results: {folder}")
    failed = [n for n, r in rows.items() if r["status"] != "ok"]
    return EXIT_FAILED_LIBRARY if failed else EXIT_OK


if __name__ == "__main__":
    from envs import reexec_in_main

    reexec_in_main("trainers.run")
    sys.exit(main())
