"""Tee stdout into `<output>/log.txt`; a rerun writes `log.txt-<timestamp>` (Dassl behaviour)."""
import os
import sys
import time


class _Tee:
    def __init__(self, stream, path):
        self.stream = stream
        self.file = open(path, "a", buffering=1)  # line-buffered: a killed run's log keeps every full line

    def write(self, msg):
        self.stream.write(msg)
        self.file.write(msg)

    def flush(self):
        self.stream.flush()
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self):
        self.file.close()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def log_path_for(output):
    """`output` itself if it names a .txt/.log file, else `<output>/log.txt`; never overwrites."""
    path = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
    if os.path.exists(path):
        path += time.strftime("-%Y-%m-%d-%H-%M-%S")
    return path


def setup_logger(output):
    """Start teeing stdout (not stderr: progress bars stay out of the log). Returns a closer."""
    path = log_path_for(output)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tee = _Tee(sys.stdout, path)
    sys.stdout = tee

    def close():
        if sys.stdout is tee:
            sys.stdout = tee.stream
        tee.flush()
        tee.close()

    return close
