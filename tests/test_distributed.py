"""DDP with two CPU processes (gloo): every rank ends with the identical pruned architecture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.skipif(sys.platform == "win32", reason="gloo subprocess launch is tested on Linux")
def test_ddp_ranks_prune_identically(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True,
                               timeout=400)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["shapes"] == ranks[1]["shapes"]
    assert ranks[0]["history"] == ranks[1]["history"]
    assert [entry["epoch"] for entry in ranks[0]["history"]] == [1, 2]
    # sharded sensitivity probes were gathered: the plan pruned something, towards the 40 % target
    assert 0.5 <= ranks[0]["flops_ratio"] <= 0.7
