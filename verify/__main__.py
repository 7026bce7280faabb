"""`python -m verify equivalence ...`: prove each library's build of an ONNX model computes what onnxruntime computes."""
import argparse
import sys

from envs import reexec_in_main

EXIT_PASS, EXIT_MISMATCH, EXIT_BAD_INPUT = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    from builders import FAST_PATHS, FRAMEWORKS

    p = argparse.ArgumentParser(prog="python -m verify", description=__doc__.split(":", 1)[1].strip())
    sub = p.add_subparsers(dest="command", required=True)
    eq = sub.add_parser("equivalence", help="forward-pass equivalence of every library against onnxruntime",
                        description="Import the ONNX model into each library, run the same fixed batch through "
                                    "each and through onnxruntime, and compare every layer's output. Exit 0 when "
                                    "all pass, 1 on any mismatch or failed library, 2 on bad input.")
    eq.add_argument("--model", default=None, help="ONNX model (default: the canonical spec/seed_cnn.onnx)")
    eq.add_argument("--frameworks", default="all",
                    help=f"comma-separated: 'all' (the six libraries), 'fast-paths' ({', '.join(FAST_PATHS)}) "
                         f"or any of {', '.join(FRAMEWORKS)} and the fast paths (default: all)")
    eq.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON here")
    eq.add_argument("--data", default=None, metavar="PATH",
                    help="CIFAR-10 archive, extracted folder or npz (default: $CIFAR10_PATH, then the usual places)")
    eq.add_argument("--jobs", type=int, default=2,
                    help="libraries verified at once, each in its own process (default 2)")
    eq.add_argument("--timeout", type=float, default=900, help="seconds one library may take (default 900)")
    st = sub.add_parser("steps", help="gradients and RMSprop updates of every library against a float64 reference",
                        description="Train the first N steps in each library (canonical batch order, dropout off) "
                                    "and compare, per step and parameter tensor, the gradient and the update with an "
                                    "independent float64 reference. Every step and tensor is judged: gradients must "
                                    "match in both modes; in native mode (the RMSprop the library's own API offers "
                                    "in the version installed, with its defaults) the update must be the RMSprop "
                                    "the library declares, and its departures from canonical are reported, not "
                                    "failed. Exit 0 when all pass, 1 otherwise, 2 on bad input.")
    st.add_argument("--steps", type=int, default=16, help="optimizer steps to check (default 16, one epoch)")
    st.add_argument("--frameworks", default="all", help="comma-separated subset (default: all)")
    st.add_argument("--optimizer", choices=("canonical", "native"), default="canonical",
                    help="canonical: all must match; native: each library's own RMSprop (its API's default in "
                         "the version installed): show where it departs")
    st.add_argument("--json", default=None, metavar="PATH", help="also write the full report as JSON here")
    st.add_argument("--data", default=None, metavar="PATH", help="CIFAR-10 archive, folder or npz")
    desc = sub.add_parser("describe", help="show the layers the importer reads from an ONNX model")
    desc.add_argument("model")
    return p


def _steps(args, equivalence) -> int:
    import results
    from verify import steps

    if args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        frameworks = equivalence.parse_frameworks(args.frameworks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    report = steps.run(frameworks, args.steps, args.optimizer, data_path=args.data)
    print(steps.table(report))
    if args.json:
        results.write_json(args.json, report)
    return EXIT_PASS if report["passed"] else EXIT_MISMATCH


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    import cifar10
    import results
    from spec import experiments
    from spec.onnx_import import ModelError, describe, import_model
    from verify import equivalence

    try:
        if args.command == "describe":
            print(describe(import_model(args.model)))
            return EXIT_PASS
        if args.command == "steps":
            return _steps(args, equivalence)
        try:
            frameworks = equivalence.parse_frameworks(args.frameworks)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        model = args.model or experiments.model_path(experiments.load("verification"))
        report = equivalence.run(model, frameworks, args.data, args.timeout, args.jobs)
    except (ModelError, cifar10.DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # the workers were stopped on the way out (verify.equivalence)
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    print(equivalence.table(report))
    passed = sum(r["status"] == "pass" for r in report["frameworks"].values())
    print(f"\n{passed}/{len(report['frameworks'])} libraries match onnxruntime; {report['wall_s']:.1f} s")
    if args.json:
        results.write_json(args.json, report)
    return EXIT_PASS if report["passed"] else EXIT_MISMATCH


if __name__ == "__main__":
    reexec_in_main("verify")
    sys.exit(main())
