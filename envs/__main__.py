"""`python3 -m envs [NAME ...]`: create the pinned environments (all of them by default)."""
import argparse
import sys

from envs import REQUIREMENTS, EnvError, create, is_ready, python_of


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m envs", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("names", nargs="*",
                        help=f"environments to create: {', '.join(REQUIREMENTS)} (default: all)")
    args = parser.parse_args(argv)
    names = args.names or list(REQUIREMENTS)
    unknown = [n for n in names if n not in REQUIREMENTS]
    if unknown:
        print(f"error: unknown environment {unknown[0]!r}; known: {', '.join(REQUIREMENTS)}", file=sys.stderr)
        return 2
    try:
        for name in names:
            state = "up to date" if is_ready(name) else None
            create(name)
            print(f"{name}: {python_of(name)}" + (f" ({state})" if state else ""))
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
