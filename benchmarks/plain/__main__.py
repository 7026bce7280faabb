"""python -m benchmarks.plain LIBRARY JOB_DIR: see benchmarks/plain/__init__.py."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

from workers import ExitCode, lifeline
from workers.turns import TURN


def main(argv=None) -> int:
    from benchmarks.plain import LIBRARIES

    argv = sys.argv[1:] if argv is None else argv
    lifeline.die_with_parent()  # no orphan if the run that started this worker dies
    if len(argv) != 2 or argv[0] not in LIBRARIES:
        print(f"usage: python -m benchmarks.plain {{{','.join(LIBRARIES)}}} JOB_DIR", file=sys.stderr)
        return ExitCode.BAD_INPUT
    library, job = argv[0], Path(argv[1])
    try:
        from spec.training import load_job

        spec, data, config = load_job(job)
        module_name, options = LIBRARIES[library]
        config = {**config, "options": options}
        module = importlib.import_module(module_name)
        # stdout carries only the result line: what libraries print while training (tflearn's progress) is
        # discarded, as the harness discards it
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            epochs = module.train(spec, data, config)
    except Exception as exc:  # noqa: BLE001 - one line, whatever failed
        print(f"{library}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return ExitCode.FAILED
    costs = {f"epoch_{key}": [span[key] for span in epochs.spans] for key in ("cpu_s", "steal_s", "pressure_s")}
    print(json.dumps({"library": library, "epoch_s": list(epochs), **costs, "final_loss": epochs.final_loss,
                      "final_loss_of": epochs.final_loss_of, "turns": "epoch" if TURN.kept else None}))
    sys.stdout.flush()
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
