"""`python -m verify equivalence ...`: prove each library's build of an ONNX model computes what onnxruntime computes."""
import argparse
import math
import sys
from pathlib import Path

from envs import reexec_in_main
from spec import batchnorm
from workers import progress
from workers.status import ExitCode

EXIT_PASS, EXIT_MISMATCH, EXIT_BAD_INPUT = ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT
STEPS_EXPERIMENT = "seed-2017"  # the experiment `verify steps` trains (verify.steps.run)


class UsageError(Exception):
    """A bad argument, found before any work: one `error:` line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _count(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {value:g}")
    return value


MODEL_KINDS = ("an ONNX file, or a model converted to one first: a Keras file (.keras, loaded in safe mode), a "
               "TensorFlow SavedModel folder or a torch.export program (.pt2)")
CONVERTED_HELP = ("where the ONNX converted from a .keras, SavedModel or .pt2 --model is written and kept (default: "
                  "converted/NAME.onnx); an existing file is replaced only if it was converted from the same model")


def parser() -> argparse.ArgumentParser:
    from builders import FAST_PATHS, LIBRARIES

    p = _Parser(prog="python -m verify", description=__doc__.split(":", 1)[1].strip())
    sub = p.add_subparsers(dest="command", required=True)
    eq = sub.add_parser("equivalence", help="forward-pass equivalence of every library against onnxruntime",
                        description="Import the ONNX model into each library, run the same fixed batch through "
                                    "each and through onnxruntime, and compare every layer's output. Exit 0 when "
                                    "all pass, 1 on any mismatch or failed library, 2 on bad input.")
    eq.add_argument("--model", default=None, metavar="PATH",
                    help=f"the model: {MODEL_KINDS} (default: the canonical spec/seed_cnn.onnx)")
    eq.add_argument("--converted", default=None, metavar="PATH", help=CONVERTED_HELP)
    eq.add_argument("--libraries", "--frameworks", default="all",
                    help=f"comma-separated: 'all' (the six libraries), 'fast-paths' ({', '.join(FAST_PATHS)}) "
                         f"or any of {', '.join(LIBRARIES)} and the fast paths (default: all)")
    eq.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON here")
    eq.add_argument("--data", default=None, metavar="PATH",
                    help="CIFAR-10 archive, extracted folder or npz (default: $CIFAR10_PATH, then the usual places)")
    eq.add_argument("--inputs", default=None, metavar="FILE.npz",
                    help="your own inputs instead of the fixed batch: an npz whose array named after the model's "
                         "input (`verify describe` prints it) holds float [N, C, H, W]; as many as the memory "
                         "budget holds are used")
    eq.add_argument("--jobs", type=_count, default=2,
                    help="libraries verified at once, each in its own process (default 2)")
    eq.add_argument("--timeout", type=_seconds, default=900, help="seconds one library may take (default 900)")
    st = sub.add_parser("steps", help="gradients and RMSprop updates of every library against a float64 reference",
                        description="Train the first N steps in each library (canonical batch order, dropout off) "
                                    "and compare, per step and parameter tensor, the gradient and the update with an "
                                    "independent float64 reference. Every step and tensor is judged: gradients must "
                                    "match in both modes; in native mode (the RMSprop the library's own API offers "
                                    "in the version installed, with its defaults) the update must be the RMSprop "
                                    "the library declares, and its departures from canonical are reported, not "
                                    "failed. Exit 0 when all pass, 1 otherwise, 2 on bad input.")
    st.add_argument("--steps", type=_count, default=16,
                    help=f"optimizer steps to check (default 16, one epoch; at most the {STEPS_EXPERIMENT} run's)")
    st.add_argument("--libraries", "--frameworks", default="all",
                    help="comma-separated subset (default: all); --frameworks is the old name")
    st.add_argument("--optimizer", choices=("canonical", "native"), default="canonical",
                    help="canonical: all must match; native: each library's own RMSprop (its API's default in "
                         "the version installed): show where it departs")
    st.add_argument("--batchnorm", choices=batchnorm.MODES,
                    default="canonical",
                    help="BatchNorm semantics each library trains (as cli.train --batchnorm); the reference takes the "
                         "same ones, so native passes only where a library does what its native row declares "
                         "(default canonical)")
    st.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON here")
    st.add_argument("--data", default=None, metavar="PATH", help="CIFAR-10 archive, folder or npz")
    st.add_argument("--model", default=None, metavar="PATH",
                    help=f"model to train in place of the canonical CNN, {MODEL_KINDS}: a 3x32x32 input and 10 "
                         "classes (probabilities, or logits, which get the softmax inside the loss); BatchNorm trains "
                         "in ONNX's training mode and its running statistics are judged after every step")
    st.add_argument("--converted", default=None, metavar="PATH", help=CONVERTED_HELP)
    st.add_argument("--progress", choices=progress.MODES, default="auto",
                    help="how stderr shows each library's training, as in cli.train: bar, lines (for log files), off "
                         "(only start and end lines) or auto = bar on a terminal, else lines (default auto)")
    desc = sub.add_parser("describe", help="show the layers the importer reads from an ONNX model")
    desc.add_argument("model", help=f"{MODEL_KINDS} (converted into a temporary file)")
    sv = sub.add_parser("survey", help="forward equivalence over many models: one verdict per model and library",
                        description="Run `verify equivalence` on every model given (files or folders of .onnx "
                                    "files) and/or the onnx package's own test models, and print one table: PASS, "
                                    "MISMATCH at the first divergent node, UNSUPPORTED with the library's reason, "
                                    "or the importer's one-line refusal. Exit 0 when every cell passes, 1 otherwise, "
                                    "2 on bad input.")
    sv.add_argument("models", nargs="*", help="ONNX files or folders of them")
    sv.add_argument("--onnx-backend", action="append", choices=("light", "pytorch-converted", "pytorch-operator",
                                                                "all"),
                    help="add the onnx package's test models of this set (image models only); repeatable")
    sv.add_argument("--libraries", "--frameworks", default="all", help="as in equivalence (default: all)")
    sv.add_argument("--json", default=None, metavar="PATH", help="write the results here, after every model")
    sv.add_argument("--timeout", type=_seconds, default=900, help="seconds one library may take per model")
    from verify import export

    export.add_parser(sub, _seconds)
    return p


def _output_file(option: str, text: str) -> None:
    """Refuse, before the run, an output path that could not be written after it."""
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{option} {text}: is a folder; name a file")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"{option} {text}: {folder} is a file, not a folder")
            break


def _steps_limit() -> int:
    from spec import experiments

    e = experiments.load(STEPS_EXPERIMENT)
    return e["epochs"] * -(-e["train_images"] // e["batch_size"])


def parse(argv=None) -> argparse.Namespace:
    """The arguments, every option checked before any work; UsageError names the first bad one.
    `libraries` comes back as the list of library names."""
    args = parser().parse_args(argv)
    if args.command == "describe":
        return args
    from verify.equivalence import parse_libraries

    try:
        args.libraries = parse_libraries(args.libraries)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        _output_file("--json", args.json)
    if args.command == "equivalence" and args.inputs and args.data:
        raise UsageError("--inputs and --data both name the inputs to verify with; give one")
    if args.command == "survey":
        args.model_list = _survey_models(args)
    if args.command == "export":
        from verify import export

        export.check(args, UsageError)
    if args.command == "steps" and args.steps > _steps_limit():
        raise UsageError(f"--steps {args.steps}: {STEPS_EXPERIMENT} trains {_steps_limit()} steps; check at most "
                         f"that many")
    if args.command in ("equivalence", "steps"):
        _check_converted(args)
    if args.command == "steps" and args.model and not args.converted_to:
        _cifar_shaped(args.model)  # a model still to convert is checked once converted (main)
    return args


def _check_converted(args) -> None:
    """args.converted_to: where the --model is converted to, None for an ONNX file (or no --model)."""
    from spec import convert
    from spec.onnx_import import ModelError

    args.converted_to = None
    try:
        kind = convert.kind(args.model) if args.model else "onnx"
    except ModelError as exc:  # equivalence accepts any path here and refuses it before its work (main)
        if args.command == "steps":
            raise UsageError(str(exc)) from None
        return
    if kind == "onnx":
        if args.converted:
            raise UsageError(f"--converted names where a converted model is written; --model "
                             f"{args.model or '(the canonical CNN)'} is an ONNX file and is not converted")
        return
    args.converted_to = Path(args.converted) if args.converted else convert.default_target(args.model)
    _output_file("--converted", str(args.converted_to))


def _cifar_shaped(path: str) -> None:
    """UsageError unless the model can train on CIFAR-10 (spec.training.cifar_model)."""
    from spec.onnx_import import ModelError
    from spec.training import cifar_model

    try:
        cifar_model(path)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


def _survey_models(args) -> list:
    from verify.survey import ONNX_BACKEND_SETS, onnx_backend_models

    found = []
    for text in args.models:
        path = Path(text)
        if path.is_dir():
            found += [(str(p), p) for p in sorted(path.rglob("*.onnx"))]
        elif path.is_file():
            found.append((str(path), path))
        else:
            raise UsageError(f"{text}: no such model file or folder")
    sets = args.onnx_backend or []
    found += onnx_backend_models(ONNX_BACKEND_SETS if "all" in sets else tuple(dict.fromkeys(sets)))
    if not found:
        raise UsageError("no models to survey: name files or folders, or --onnx-backend SET")
    return found


def _survey(args) -> int:
    from verify import survey

    doc = survey.run(args.model_list, args.libraries, args.timeout, json_path=args.json)
    print(survey.table(doc))
    cells = [v for entry in doc["models"].values() for v in entry["verdicts"].values()]
    print(f"\n{sum(c == 'PASS' for c in cells)}/{len(cells)} (model, library) pairs pass")
    return EXIT_PASS if all(c == "PASS" for c in cells) else EXIT_MISMATCH


def _convert(args):
    """Convert a --model that is not ONNX (said on stderr) and point args.model at the ONNX file; the Converted,
    or None. ModelError when the model cannot be loaded or converted."""
    from spec import convert

    if not args.converted_to:
        if args.model:
            convert.kind(args.model)  # ModelError for a kind --model does not take, naming those it does
        return None
    done = convert.to_onnx(args.model, args.converted_to)
    print(done.line(), file=sys.stderr, flush=True)
    args.model = str(done.onnx_path)
    return done


def _steps(args, converted) -> int:
    from spec.training import cifar_model
    from verify import steps
    from workers import results

    if converted:
        cifar_model(args.model)
    report = steps.run(args.libraries, args.steps, args.optimizer, data_path=args.data, model=args.model,
                       batchnorm_mode=args.batchnorm, shown=args.progress)
    print(steps.table(report))
    if args.json:
        results.write_json(args.json, {**report, **({"converted": converted.to_json()} if converted else {})})
    return EXIT_PASS if report["passed"] else EXIT_MISMATCH


def _error_line(exc: Exception) -> str:
    return "error: " + str(exc).replace("\n", "\\n")  # one line even when a path holds a newline


def main(argv=None) -> int:
    try:
        args = parse(argv)
    except UsageError as exc:
        print(_error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    import cifar10
    from spec import experiments
    from spec.onnx_import import ModelError, describe, import_model
    from verify import equivalence
    from workers import results

    try:
        if args.command == "describe":
            from spec.convert import to_temporary

            print(describe(import_model(to_temporary(args.model).onnx_path)))
            return EXIT_PASS
        if args.command == "survey":
            return _survey(args)
        if args.command == "export":
            from verify import export

            return export.main(args)
        converted = _convert(args)
        if args.command == "steps":
            return _steps(args, converted)
        model = args.model or experiments.model_path(experiments.load("verification"))
        report = equivalence.run(model, args.libraries, args.data, args.timeout, args.jobs, inputs_path=args.inputs)
    except (ModelError, cifar10.DataError, equivalence.InputsError) as exc:
        print(_error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the workers were stopped on the way out (verify.equivalence)
        kept = args.command == "survey" and args.json
        print(f"interrupted; the models surveyed so far are in {args.json}" if kept else "interrupted; nothing was written",
              file=sys.stderr)
        return ExitCode.INTERRUPTED
    print(equivalence.table(report))
    if equivalence.envelope_line(report):
        print(equivalence.envelope_line(report))
    passed = sum(r["status"] == "pass" for r in report["libraries"].values())
    print(f"\n{passed}/{len(report['libraries'])} libraries match onnxruntime; {report['wall_s']:.1f} s")
    if args.json:
        results.write_json(args.json, {**report, **({"converted": converted.to_json()} if converted else {})})
    return EXIT_PASS if report["passed"] else EXIT_MISMATCH


if __name__ == "__main__":
    reexec_in_main("verify")
    sys.exit(main())
