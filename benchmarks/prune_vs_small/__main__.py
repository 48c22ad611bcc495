"""Command line: ``python -m benchmarks.prune_vs_small train|report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.prune_vs_small.arms import ARMS
from benchmarks.prune_vs_small.config import PROTOCOL, RESULTS
from benchmarks.prune_vs_small.runs import Record, launch, run_dir


def train(args: argparse.Namespace) -> int:
    failures = 0
    for seed in args.seeds:
        for name in args.arms:
            arm = ARMS[name]
            record = Record.load(run_dir(name, seed))
            digest = PROTOCOL.digest(name, seed, arm.train, arm.spec)
            if record is not None and record.reusable(digest) and not args.force:
                print(f"{name} seed {seed}: reused ({record.data['git']['revision'][:7]})")
                continue
            missing = [n for n in arm.needs if Record.load(run_dir(n, seed)) is None]
            if missing:
                print(f"{name} seed {seed}: skipped, needs {missing} first")
                failures += 1
                continue
            print(f"{name} seed {seed}: training ...", flush=True)
            rc = launch(name, seed, args.workdir, args.threads, args.workdir / "logs" / f"{name}-seed{seed}.log")
            print(f"{name} seed {seed}: {'done' if rc == 0 else f'FAILED (exit {rc})'}", flush=True)
            failures += rc != 0
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prune_vs_small",
                                     description="Does pruning beat the smaller model? (issue 35)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the arms that have no reusable run folder yet")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/prune_vs_small"))
    p.add_argument("--threads", type=int, default=PROTOCOL.threads)
    p.add_argument("--force", action="store_true", help="train again even where a reusable run exists")
    p = sub.add_parser("report", help="regime check, latency, verdict and plots from the run folders")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    from benchmarks.prune_vs_small.report import report

    return report(args)


if __name__ == "__main__":
    sys.exit(main())
