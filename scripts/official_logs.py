"""Reading one run's number as CoOp's `parse_test_res.py` does, for both modes of `parse_results.py`.

A run's number comes from its `results.json`, or else from its log: the last `* accuracy: X%` after the
end-of-training signal (base phase) or `=> result` (an evaluation-only log).
"""
import glob
import json
import os
import re
import sys

TRAIN_SIGNALS = ("Finish training", "Finished training")  # Dassl >= 0.6.1, and the older spelling
TEST_SIGNALS = ("=> result",)


def log_files(run_dir, newest=False):
    """The logs to try, in order: `log.txt` only (the official choice: the first run's log), or with `newest`
    the rerun logs `log.txt-<timestamp>` newest first and then `log.txt`."""
    first = os.path.join(run_dir, "log.txt")
    logs = [first] if os.path.isfile(first) else []
    if newest:
        reruns = sorted(glob.glob(os.path.join(glob.escape(run_dir), "log.txt-*")))  # timestamps sort in time order
        logs = [p for p in reversed(reruns) if os.path.isfile(p)] + logs
    return logs


def read_log(path, signals, keyword="accuracy"):
    """The last `* <keyword>: X%` after a line equal to one of `signals`; None if there is none."""
    pattern = re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")
    started, value = False, None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line in signals:
                started = True
            match = pattern.search(line)
            if match and started:
                value = float(match.group(1))
    return value


def read_run(run_dir, signals, keyword="accuracy", newest_log=False, from_logs=False):
    """(value, file it came from) for one run: results.json first, else the log; (None, None)."""
    results = os.path.join(run_dir, "results.json")
    if not from_logs and os.path.isfile(results):
        try:
            with open(results) as f:
                record = json.load(f)
        except (OSError, ValueError) as err:
            print(f"Warning: unreadable {results} ({err}); reading the log instead", file=sys.stderr)
        else:
            if isinstance(record.get(keyword), (int, float)):
                return float(record[keyword]), results
    for log in log_files(run_dir, newest_log):  # the first log holding a result wins (a crashed rerun has none)
        value = read_log(log, signals, keyword)
        if value is not None:
            return value, log
    return None, None
