"""Run folders: where a finished arm lives, whether it can be reused, and running an arm in a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
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


def measured_marker(workdir: Path, arm: str, seed: int) -> Path:
    """The file an arm that measures latency while it trains (``Arm.alone``) writes once its last measurement is
    done (after its last pruning step): from then on it is a plain training that others may run beside."""
    return workdir / "train" / f"{arm}-seed{seed}" / "measured"


def launch(arm: str, seed: int, workdir: Path, threads: int, log: Path, extra: list[str] = (),
           started: Callable[[int], None] | None = None) -> int:
    """Train ``arm`` for ``seed`` in a child process (its own threads, its own failure, its own process group, so
    :class:`Quiet` can stop and continue it as a whole); ``started`` gets its pid. Returns its exit code."""
    env = dict(os.environ, YOLO_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.prune_vs_small.train", "--arm", arm, "--seed", str(seed),
           "--workdir", str(workdir), "--threads", str(threads), *extra]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        if started is not None:
            started(child.pid)
        return child.wait()


class Quiet:
    """Keeps the other trainings stopped (``SIGSTOP`` to their process groups) while an arm that measures latency
    has not written its :func:`measured_marker`: its cost tables then read a quiet machine, and the other core is
    not idle for the rest of its run. A stopped training loses nothing (CPU-minutes count process time)."""

    def __init__(self, workdir: Path, alone: Callable[[str], bool],
                 signal_group: Callable[[int, int], None] = os.killpg) -> None:
        self.workdir, self._alone, self._signal = workdir, alone, signal_group
        self.pids: dict[tuple[int, str], int] = {}
        self.stopped: set[tuple[int, str]] = set()

    def started(self, key: tuple[int, str]) -> Callable[[int], None]:
        return lambda pid: self.pids.__setitem__(key, pid)

    def measuring(self, keys: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
        """The runs among ``keys`` that measure latency now (alone arms without their marker)."""
        return [(seed, name) for seed, name in keys
                if self._alone(name) and not measured_marker(self.workdir, name, seed).is_file()]

    def update(self, keys: Iterable[tuple[int, str]]) -> bool:
        """Stop every run in ``keys`` but the measuring one while one measures, continue them after; returns
        whether one measures."""
        keys = list(keys)
        holders = self.measuring(keys)
        for key in keys:
            pid = self.pids.get(key)
            if pid is None:
                continue
            if holders and key not in holders and key not in self.stopped:
                self._send(pid, signal.SIGSTOP)
                self.stopped.add(key)
            elif not holders and key in self.stopped:
                self._send(pid, signal.SIGCONT)
                self.stopped.discard(key)
        for key in [k for k in self.stopped if k not in keys]:  # ended while stopped (killed from outside)
            self.stopped.discard(key)
        return bool(holders)

    def release(self) -> None:
        """Continue every stopped run (the command ends or fails: nothing is left stopped)."""
        for key in list(self.stopped):
            self._send(self.pids[key], signal.SIGCONT)
        self.stopped.clear()

    def _send(self, pid: int, sig: int) -> None:
        try:
            self._signal(pid, sig)
        except ProcessLookupError:  # it has just ended
            pass
