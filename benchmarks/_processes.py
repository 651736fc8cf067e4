"""benchmarks/scale.py parts (d) and (e), through the real console script:

(d) images/s of the search and of the retrain with 1 and with 2 processes (``torchrun``,
gloo on the CPU; one process uses every core, two processes one core each, torchrun's
OMP_NUM_THREADS=1), read from each run's manifest (``compute.images_per_s``: images of all
ranks per second);
(e) the time from a ``kill -9`` during the search to resumed progress: from starting
``--resume`` to its first search epoch finished after the checkpoint, and to the log line that
says it resumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("nas2deploy"))
RUN = ["search-and-export", "--method", "dsonas", "--search-epochs", "4", "--retrain-epochs",
       "2", "--max-rounds", "1", "--target", "onnxruntime:cpu", "--export", "onnx"]


def processes(work: Path, dataset: str) -> str:
    rows = {}
    for n in (1, 2):
        out = work / f"p{n}"
        cmd = [EXE, *RUN, "--dataset", dataset, "--out", str(out)]
        if n > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(n), *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if res.returncode not in (0, 3):
            raise SystemExit(f"{n} process(es) failed: {res.stderr[-2000:]}")
        m = json.loads((out / "manifest.json").read_text())
        rates = m["compute"]["images_per_s"]
        rows[n] = (rates["search_images_per_s"], rates["retrain_images_per_s"],
                   m["timings"]["search_s"], m["timings"]["retrain_s"])
        print(f"{n} process(es): search {rows[n][0]:.0f} img/s ({rows[n][2]:.1f} s), retrain "
              f"{rows[n][1]:.0f} img/s ({rows[n][3]:.1f} s)")
    s, r = rows[2][0] / rows[1][0], rows[2][1] / rows[1][1]
    return (f"processes: search {rows[1][0]:.0f} -> {rows[2][0]:.0f} img/s ({s:.2f}x), "
            f"retrain {rows[1][1]:.0f} -> {rows[2][1]:.0f} img/s ({r:.2f}x) with 1 -> 2")


def kill_to_resume(work: Path, dataset: str) -> str:
    out = work / "k"
    args = [EXE, *RUN, "--dataset", dataset, "--out", str(out)]
    marker = work / "paused"
    env = {**os.environ, "NAS2DEPLOY_PAUSE_AT": "search-2", "NAS2DEPLOY_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not marker.exists():
        if proc.poll() is not None:
            raise SystemExit("the run ended before its checkpoint of search epoch 2")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.perf_counter()
    resumed = first = None
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAS2DEPLOY_PAUSE")}
    with subprocess.Popen([*args, "--resume", str(work / "k.run")], env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as res:
        for line in res.stderr:
            if resumed is None and "resuming search after epoch" in line:
                resumed = time.perf_counter() - t0
            if first is None and re.search(r"dsonas search epoch 3:", line):
                first = time.perf_counter() - t0
    if res.returncode not in (0, 3) or resumed is None or first is None:
        raise SystemExit(f"the resumed run failed ({res.returncode})")
    print(f"kill -9 after the checkpoint of search epoch 2, then --resume: search continued "
          f"after {resumed:.1f} s (start-up, dataset, the budget's measurements replayed), "
          f"epoch 3 done after {first:.1f} s")
    return f"kill_to_resume: {resumed:.1f} s to resumed search, {first:.1f} s to the next epoch"
