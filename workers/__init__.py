"""Worker processes and the files they leave: the layer verify, trainers and benchmarks share.

    status     Status (the word a row's outcome takes) and ExitCode (every process's exit codes)
    spawn      run(): the one function that starts a worker, waits for it and classifies its exit
    training   the training worker's protocol: its events, its files, train_one()
    progress   how training shows on stderr (--progress auto|bar|lines|off): bars, or lines fit for log files
    plain      the plain tutorial-loop worker (benchmarks.plain) and its JSON result line
    lifeline   workers never outlive the run that started them
    results    result files are complete or absent (write_atomic, write_json, write_figure)
    text       last_line, first_line and the number formatter every table uses

Standard library and numpy only (it is imported inside every environment, the theano one included); the
workers themselves are named by module strings, so nothing here imports verify, trainers or benchmarks.
"""
from workers.spawn import Outcome, run, worker_env
from workers.status import ExitCode, Status
from workers.text import first_line, last_line, number

__all__ = ["ExitCode", "Outcome", "Status", "first_line", "last_line", "number", "run", "worker_env"]
