"""The parent's side of a run: each stage (pretraining, an arm) in its own child process under a wall-time limit,
the pretrained weights cached per seed, and an arm run or taken from an earlier run."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _harness import git_rev
from _harness import run_child as run_limited

from .config import CODE_PATHS, Config, log
from .reuse import _earlier_result, _scratch_from_elsewhere


def run_child(stage: str, cfg: Config, workdir: Path, timeout: float) -> dict[str, Any]:
    """One stage (``pretrain`` or an arm) in a child process (its process group killed after ``timeout`` s)."""
    result_file = workdir / f"result-{stage}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.accuracy", "--child", stage, "--config-json",
           json.dumps(asdict(cfg)), "--workdir", str(workdir)]
    result, _, _ = run_limited(cmd, result_file, workdir / f"log-{stage}.txt", timeout, mem_gb=0.0,
                               threads=cfg.threads)
    return result


def pretrained(cfg: Config, workdir: Path, timeout: float) -> dict[str, Any]:
    meta = workdir / "pretrained.json"
    with contextlib.suppress(OSError, ValueError):
        cached = json.loads(meta.read_text())
        if cached.get("key") == cfg.pretrain_key() and (workdir / "pretrained.pt").is_file():
            log(f"pretrained weights reused from {workdir} (mAP50-95 {cached['map50_95']:.3f})")
            return {**cached, "reused": True}
    log(f"pretraining {cfg.model} for {cfg.pretrain_epochs} epochs ...")
    result = run_child("pretrain", cfg, workdir, timeout)
    if not result.get("ok"):
        raise SystemExit(f"pretraining failed: {result['error']}")
    meta.write_text(json.dumps(result))
    log(f"pretrained: mAP50-95 {result['map50_95']:.3f} in {result['fit_s']:.0f} s")
    return result


def arm_result(arm: str, cfg: Config, workdir: Path, args: argparse.Namespace,
               need_model: bool = True) -> dict[str, Any]:
    """Run an arm, or with ``--reuse`` take its earlier result when it ran with the same configuration: from the
    work directory, or (``--reuse-json``) from an earlier results file — only for seeds whose models are not timed
    (``need_model=False``), since a results file holds no models."""
    result_file = workdir / f"result-{arm}.json"
    if args.reuse:
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(result_file.read_text())
            if old.get("ok") and old.get("config") == asdict(cfg) and (
                    not need_model or (workdir / f"arm-{arm}.pt").is_file()):
                return {**old, "reused": True}
        if not need_model:
            taken = _earlier_result(arm, cfg, getattr(args, "reuse_json", None) or [])
            if taken is not None:
                return taken
        taken = _scratch_from_elsewhere(arm, cfg, workdir, getattr(args, "scratch_workdir", None))
        if taken is not None:
            return taken
    log(f"  arm {arm} ...")
    result = run_child(arm, cfg, workdir, args.timeout)
    result["config"] = asdict(cfg)
    result["git"] = git_rev(CODE_PATHS)  # arms reused from another invocation keep the revision they ran at
    result_file.write_text(json.dumps(result))
    return result
