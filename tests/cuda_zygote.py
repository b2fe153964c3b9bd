"""Runs code snippets in fresh processes with fresh CUDA contexts, cheaply: this process imports
torch and marsops once (no CUDA call) and forks one child per snippet, so each costs a CUDA
start-up instead of a Python + torch + marsops start-up. The bad-label tests need one process per
snippet on GPUs: a device-side assertion ends the CUDA context of the process it fires in.

Protocol (tests/helpers.py drives it): one JSON line per request on stdin, {"code": ..., "log":
path}; the child's stdout and stderr (the device's assertion message among them) go to `log`;
the answer is one JSON line on stdout, the child's exit code (1: an exception, 0: none).
"""
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's marsops

import torch  # noqa: E402

import marsops  # noqa: E402

torch.set_num_threads(1)  # no CPU thread pool is started here: forked children could not use it


def run(code: str, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    status = 0
    try:
        exec(code, {"torch": torch, "marsops": marsops})
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run(request["code"], request["log"])
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps(os.waitstatus_to_exitcode(status)) + "\n")


if __name__ == "__main__":
    main()
