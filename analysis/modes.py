"""One report per kind of training run: a single run, a seed sweep (--seeds K), a benchmark (--repeat N).
Each takes the plan and the dispatched rows, writes its plots into the results folder and returns the
results document (records.TrainingResults) and its Markdown text."""
from __future__ import annotations

from pathlib import Path

from analysis import report
from workers.records import Interruption, TrainingResults

RESUME = "python -m cli.train --resume"


def document(plan, outcome) -> TrainingResults:
    """What every mode's results.json holds; each row gets its summary figures and optimizer departures."""
    from builders import FAST_PATHS, native_batchnorm
    from spec import batchnorm

    mode = plan.config.get("batchnorm", "canonical")
    for rows in outcome.runs.values():
        for name, row in rows.items():
            row.summary = report.summary(row, plan.images)
            trained = batchnorm.semantics(plan.spec, native_batchnorm(name), mode)
            row.departures = (report.departures(row.record.optimizer, plan.experiment["optimizer"])
                              + batchnorm.departures(plan.spec, trained))
    validation = plan.experiment["validation"]
    return TrainingResults(
        experiment=plan.options.experiment, experiment_spec=plan.experiment, model=str(plan.model_path),
        config=plan.config, images_per_epoch=plan.images, init=plan.options.init,
        validation=f"validation on the first {validation['images']} official {validation['split']} images",
        shuffled=bool(plan.experiment["shuffle"]), environment=report.environment(plan.threads),
        executor=plan.options.executor, seeds=plan.seeds, runs=outcome.runs,
        fast_paths={n: {"base": FAST_PATHS[n].base, "changes": FAST_PATHS[n].changes}
                    for n in plan.names if n in FAST_PATHS},
        converted=plan.conversion.to_json() if plan.conversion else None)


def single_run(plan, outcome, folder: Path) -> tuple:
    run = document(plan, outcome)
    run.libraries = outcome.runs[plan.runs[0].key]
    config = plan.config
    if (config["optimizer"]["mode"] == "canonical" and config.get("batchnorm", "canonical") == "canonical"
            and (not config["dropout"] or config["dropout_masks"] == "harness")):
        rules = report.load_tolerances()
        rtol = [max(rules["step_loss_rtol"], rules["step_loss_envelope_k"] * d) for d in loss_drift(plan, 3)]
        run.step_agreement = {**report.step_agreement(run.libraries, len(rtol), rtol),
                              "envelope_k": rules["step_loss_envelope_k"]}
    report.plots(run, folder)
    return run, report.markdown(run)


def loss_drift(plan, steps: int) -> list:
    """verify.steps.float32_loss_drift of the run's first `steps` steps (fewer if the run has fewer)."""
    import sys

    from spec import training as harness
    from verify.steps import float32_loss_drift

    bs = plan.batch_size
    order = harness.batch_order(len(plan.arrays[0]), 1, plan.experiment["shuffle"], plan.base_seed, plan.limit)
    batches = [order[0][i:i + bs] for i in range(0, min(steps * bs, order.shape[1]), bs)]
    data = harness.TrainingData(*plan.arrays, order, augment=plan.config.get("augment"), seed=plan.base_seed)
    print(f"step agreement: measuring float32 drift of the reference over {len(batches)} steps", file=sys.stderr)
    return float32_loss_drift(harness.without_dropout(plan.spec), data, batches, plan.experiment["optimizer"])


def seed_sweep(plan, outcome, folder: Path) -> tuple:
    from analysis import sweep

    run = document(plan, outcome)
    runs = run.to_json()["runs"]
    run.varies = varies(plan)
    run.sweep = sweep.summarize(runs, plan.names, plan.epochs, plan.images)
    run.drift = sweep.drift(runs, plan.names)
    run.significance = sweep.significance(runs, plan.names, plan.epochs, report.load_tolerances()["significance"],
                                        pair_by_seed=sweep.paired(plan.config))
    doc = run.to_json()
    sweep.plots(doc, folder)
    return run, "\n".join(report.heading(run) + sweep.markdown(doc)) + "\n"


# the benchmark mode's report is benchmarks.bench's, joined by the command (analysis and benchmarks are one layer)
MODES = {"single": single_run, "sweep": seed_sweep}


def make(plan, outcome, folder: Path, more_modes: dict | None = None) -> tuple:
    """(results document, Markdown) of the plan's mode (from MODES or `more_modes`); an interrupted run's say
    what is missing and how to finish it."""
    run, text = {**MODES, **(more_modes or {})}[plan.mode](plan, outcome, folder)
    text += "\n".join(["", *report.judge_lines(outcome.runs)]) + "\n"
    if outcome.interrupted is not None:
        signal = outcome.interrupted.signal_name
        run.interrupted = Interruption(signal, outcome.missing)
        text = (f"**INTERRUPTED by {signal}**: {len(outcome.missing)} job(s) did not finish "
                f"({', '.join(outcome.missing)}); their rows say 'interrupted'. Finish them with "
                f"`{RESUME} {folder}`.\n\n" + text)
    return run, text


def varies(plan) -> list:
    """What differs between the seeds of a sweep, in words."""
    config, out = plan.config, []
    if config["dropout"]:
        out.append("dropout masks (" + ("drawn by the harness, identical in every library)"
                                        if config["dropout_masks"] == "harness" else
                                        "each library's own generator, seeded)"))
    out.append("batch order" if plan.experiment["shuffle"] else
               "nothing in the batch order (the experiment does not shuffle)")
    out.append("initial weights (redrawn from each seed)" if plan.options.init == "seeded" else
               "not the initial weights (the experiment's model for every seed)")
    return out
