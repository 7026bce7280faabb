"""A worker that does what it is told, for the tests of workers.run: `python -m tests.worker_probe ACTION [N]`.

    ok        prints its pid and two lines to stdout, a line to stderr, exits 0
    exit N    prints "reason N" to stderr and exits N
    kill      SIGKILLs itself
    sleep     prints its pid, then sleeps for a minute
    flood     prints N lines to stdout (more than a pipe holds), exits 0
"""
import os
import signal
import sys
import time


def main(argv: list) -> int:
    action = argv[0]
    if action in ("ok", "sleep"):
        print(os.getpid(), flush=True)
    if action == "ok":
        print("first\nsecond", flush=True)
        print("a line on stderr", file=sys.stderr)
    elif action == "exit":
        print(f"reason {argv[1]}", file=sys.stderr)
        return int(argv[1])
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "sleep":
        time.sleep(60)
    elif action == "flood":
        sys.stdout.write(("x" * 99 + "\n") * int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
