"""Command line: ``python -m benchmarks.prune_vs_small train|status|report``."""

from __future__ import annotations

import argparse
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from benchmarks.prune_vs_small.arms import ARMS, arm_digest
from benchmarks.prune_vs_small.config import PROTOCOL, RESULTS
from benchmarks.prune_vs_small.runs import Quiet, Record, launch, measured_marker, run_dir

#: how often ``train`` looks for a measuring arm's marker (seconds)
POLL_S = 2.0


def finished(name: str, seed: int) -> Record | None:
    """The run folder of ``name``/``seed`` when it can be reused: this configuration, a clean revision, weights."""
    arm = ARMS[name]
    record = Record.load(run_dir(name, seed))
    return record if record is not None and record.reusable(arm_digest(arm, seed)) \
        else None


def _pending(args: argparse.Namespace) -> list[tuple[int, str]]:
    """The (seed, arm) runs to train, seed by seed in ``ARMS`` order (so a seed's whole comparison comes first);
    reused runs are said and left out."""
    todo = []
    for seed in args.seeds:
        for name in args.arms:
            record = finished(name, seed)
            if record is not None and not args.force:
                print(f"{name} seed {seed}: reused ({record.data['git']['revision'][:7]})")
                continue
            todo.append((seed, name))
    return todo


def train(args: argparse.Namespace) -> int:
    """Train what is not reusable, up to ``--jobs`` children at once (each with ``--threads``); a run starts once
    the runs it needs (same seed) have finished, and one whose needs failed or are missing is skipped. While an arm
    that measures latency as it trains (``Arm.alone``) has not finished measuring (its last pruning step), nothing
    else starts and the runs beside it are stopped (:class:`~benchmarks.prune_vs_small.runs.Quiet`); then they go on
    and others may start beside it. A plain training (base, small, small-distill*) that a session's end stopped goes
    on from its last epoch when its configuration is unchanged. SIGTERM or SIGINT: nothing more starts and the
    command waits for the running ones (exit 1: some runs did not start)."""
    todo, running, failed = _pending(args), {}, set()
    jobs = max(1, args.jobs)
    quiet = Quiet(args.workdir, alone=lambda name: ARMS[name].alone)
    stop = _StopRequest()
    with ThreadPoolExecutor(max_workers=jobs) as pool, stop:
        try:
            while (todo and not stop.requested) or running:
                started = False
                measuring = quiet.update(running)
                for seed, name in list(todo):
                    if len(running) >= jobs or measuring or stop.requested:
                        break
                    needs = [(seed, n) for n in ARMS[name].needs]
                    if any(need in running or need in todo for need in needs):
                        continue  # waits for a run in this invocation
                    missing = [n for s, n in needs if (s, n) in failed or finished(n, s) is None]
                    todo.remove((seed, name))
                    if missing:
                        print(f"{name} seed {seed}: skipped, needs {missing} first", flush=True)
                        failed.add((seed, name))
                        continue
                    print(f"{name} seed {seed}: training ...", flush=True)
                    if ARMS[name].alone:
                        measured_marker(args.workdir, name, seed).unlink(missing_ok=True)
                        measuring = True  # the others stop at the next update
                    log = args.workdir / "logs" / f"{name}-seed{seed}.log"
                    running[(seed, name)] = pool.submit(launch, name, seed, args.workdir, args.threads, log,
                                                        started=quiet.started((seed, name)))
                    started = True
                if not running:
                    continue
                timeout = 0.1 if started else POLL_S if measuring or quiet.stopped else None
                done, _ = wait(running.values(), return_when=FIRST_COMPLETED, timeout=timeout)
                for key, future in list(running.items()):
                    if future in done:
                        rc = future.result()
                        print(f"{key[1]} seed {key[0]}: {'done' if rc == 0 else f'FAILED (exit {rc})'}", flush=True)
                        if rc != 0:
                            failed.add(key)
                        del running[key]
        finally:
            quiet.release()
    if stop.requested and todo:
        print(f"stopped: {len(todo)} run(s) not started", flush=True)
    return 1 if failed or (stop.requested and todo) else 0


class _StopRequest:
    """SIGTERM or SIGINT while ``train`` runs: start nothing more and wait for the running ones, which finish and
    write their run folders on their own (a run stopped beside a measuring arm goes on after its marker, as before).
    ``nohup cmd &`` from a script ignores SIGINT, so SIGTERM is the one to send; a second signal is not caught."""

    def __init__(self) -> None:
        self.requested, self._previous = False, {}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        print(f"{signal.Signals(signum).name}: starting nothing more; waiting for the running trainings", flush=True)
        self.__exit__()

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for sig, handler in self._previous.items():  # None: a handler not set from Python; the default then
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prune_vs_small",
                                     description="Does pruning beat the smaller model? (issue 35)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the arms that have no reusable run folder yet")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/prune_vs_small"))
    p.add_argument("--threads", type=int, default=PROTOCOL.threads, help="threads of each training")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (e.g. one per core with --threads 1)")
    p.add_argument("--force", action="store_true", help="train again even where a reusable run exists")
    p = sub.add_parser("report", help="regime check, latency, verdict and plots from the run folders")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p = sub.add_parser("status", help="which runs are reusable, superseded or missing (measures nothing)")
    p.add_argument("--write", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.command == "train":
        return train(args)
    if args.command == "status":
        from benchmarks.prune_vs_small.report import status

        text = status()
        print(text, end="")
        if args.write:
            args.write.write_text(f"# prune_vs_small: where it stands\n\nMade by `python -m benchmarks.prune_vs_small "
                                  f"status --write {args.write}` from the committed run folders.\n\n{text}")
        return 0
    from benchmarks.prune_vs_small.report import report

    return report(args)


if __name__ == "__main__":
    sys.exit(main())
