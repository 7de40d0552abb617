"""Run one Flower simulation (``run_simulation``, Ray backend, one actor) in this process.

``tests/test_flower.py`` starts this file as a child process so that a simulation that
stops answering (a Ray worker that never replies leaves Flower's ``ray.get`` waiting with
no timeout) is bounded: ``faulthandler`` prints every thread's stack and exits the child
after ``--timeout`` seconds, and the test kills what the child started, by pid.

Usage: ``python tests/flower_simulation.py CONFIG.json NODES TIMEOUT_S [--observe FILE]``
where CONFIG.json holds the run config. With ``--observe``, each round's unmasked secure
sum is pickled to FILE (the secure-aggregation test compares it with the plain sum).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import pickle
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("nodes", type=int)
    parser.add_argument("timeout", type=float)
    parser.add_argument("--observe", type=Path)
    args = parser.parse_args(argv)
    # First, so that even a hang while importing Ray or torch is bounded and shown.
    faulthandler.dump_traceback_later(args.timeout, exit=True)

    import ray
    from flwr.simulation import run_simulation

    from fedllmrec.apps.flower import client_app, make_server_app

    received: list[tuple[Any, Any]] = []
    observe = (lambda plan, total: received.append((plan, total))) if args.observe else None
    server_app = make_server_app(json.loads(args.config.read_text()), observe=observe)
    try:
        run_simulation(
            server_app,
            client_app,
            num_supernodes=args.nodes,
            # One actor on one CPU: the machine is shared, and one actor serving every node
            # exercises per-node state (private rows), not per-process memory.
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 1, "include_dashboard": False},
            },
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if args.observe is not None:
        args.observe.write_bytes(pickle.dumps(received))
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main(sys.argv[1:])
