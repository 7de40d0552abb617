"""Atomic folder replacement under real concurrency: two processes, one folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each writer waits for the "go" file so that both replace the folder at the same time.
WRITER = """
import sys, time
from pathlib import Path
from fedllmrec.io import atomic_dir

target, writer, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(target.parent.parent / f"ready-{writer}").touch()
while not (target.parent.parent / "go").exists():
    time.sleep(0.001)
for i in range(n):
    with atomic_dir(target) as tmp:
        for name in ("a.txt", "b.txt", "c.txt"):
            (tmp / name).write_text(f"{writer}-{i}")
"""


def test_two_processes_replacing_one_folder(tmp_path: Path) -> None:
    parent = tmp_path / "prepared"
    parent.mkdir()
    target = parent / "ds"
    n = 300
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target), writer, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for writer in ("A", "B")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{w}").exists() for w in "AB"):
        assert time.monotonic() < deadline, "writers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert err == ""
    # One writer's last folder, whole: three files written in the same iteration.
    contents = {p.name: p.read_text() for p in target.iterdir()}
    assert set(contents) == {"a.txt", "b.txt", "c.txt"}
    assert len(set(contents.values())) == 1
    assert next(iter(contents.values())) in {f"A-{n - 1}", f"B-{n - 1}"}
    # No temporary or old copy is left beside it.
    assert [p.name for p in parent.iterdir()] == ["ds"]
