"""Run folders: where a finished arm lives, whether it can be reused, and running an arm in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.prune_vs_small.config import REPO, RESULTS


def run_dir(arm: str, seed: int, root: Path = RESULTS) -> Path:
    return root / arm / f"seed{seed}"


def git_state() -> dict[str, Any]:
    """The revision and whether the tree is clean (result folders and caches aside)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/results"], cwd=REPO,
                            capture_output=True, text=True).stdout
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    return {"revision": head, "clean": not dirty, "dirty_files": dirty[:20]}


@dataclass
class Record:
    """``run.json`` of a finished arm."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> Record | None:
        file = folder / "run.json"
        if not file.is_file():
            return None
        try:
            return cls(file, json.loads(file.read_text()))
        except (OSError, json.JSONDecodeError):
            return None

    def reusable(self, digest: str) -> bool:
        """Finished with this configuration, at a clean revision, and its weights are there."""
        return (self.data.get("digest") == digest and self.data.get("git", {}).get("clean", False)
                and (self.path.parent / "weights.pt").is_file() and "test" in self.data)


def launch(arm: str, seed: int, workdir: Path, threads: int, log: Path, extra: list[str] = ()) -> int:
    """Train ``arm`` for ``seed`` in a child process (its own threads, its own failure); returns its exit code."""
    env = dict(os.environ, YOLO_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.prune_vs_small.train", "--arm", arm, "--seed", str(seed),
           "--workdir", str(workdir), "--threads", str(threads), *extra]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
