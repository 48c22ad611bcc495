"""The child process that trains one arm for one seed and writes its run folder (``python -m
benchmarks.prune_vs_small.train --arm base --seed 0 --workdir W``; the CLI launches it)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fcntl
import json
import resource
import time
from pathlib import Path

from benchmarks.prune_vs_small.arms import ARMS, arm_digest, small_yaml
from benchmarks.prune_vs_small.config import PROTOCOL, RESULTS
from benchmarks.prune_vs_small.runs import git_state, measured_marker, run_dir
from lightning_prune.utils.files import atomic_write


def ensure_data(workdir: Path) -> Path:
    """The protocol's Fashion-MNIST scenes set under ``workdir/data`` (written once, deterministic)."""
    from lightning_prune.data.fashion import make_fashion_dataset

    d = PROTOCOL.data
    root = workdir / "data" / d.folder_name()
    done = root / ".complete"
    if not done.is_file():
        make_fashion_dataset(root, d.num_train, d.num_val, d.num_test, d.imgsz, d.seed)
        done.write_text("ok\n")
    return root / "data.yaml"


class DataLock:
    """The data folder's lock, held while a child builds its data loaders or evaluates: ultralytics rewrites a
    split's label cache when it finds it stale, and two children rewriting it at once fail."""

    def __init__(self, root: Path) -> None:
        self._file, self._path = None, root / ".lock"

    def acquire(self) -> None:
        if self._file is None:
            self._file = self._path.open("a")
            fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self, *_: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> DataLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def cpu_minutes() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime) / 60


def val_history(results_csv: Path) -> list[float]:
    """Validation mAP50-95 per epoch from ultralytics' ``results.csv``."""
    with results_csv.open() as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k.strip() == "metrics/mAP50-95(B)")
    return [float(row[key]) for row in rows]


def evaluate(weights: Path, data_yaml: Path, split: str) -> dict[str, float]:
    """mAP50-95 and mAP50 of ``weights`` on ``split`` by ultralytics' own validator."""
    from ultralytics import YOLO

    metrics = YOLO(str(weights)).val(data=str(data_yaml), split=split, imgsz=PROTOCOL.data.imgsz, batch=16,
                                     device="cpu", workers=0, plots=False, verbose=False)
    return {"map50_95": float(metrics.box.map), "map50": float(metrics.box.map50)}


def resumable(save_dir: Path, digest: str, epochs: int) -> dict | None:
    """The progress of a stopped run of this configuration in ``save_dir`` (a session's processes end with it), to
    go on from its ``last.pt``; ``None`` when there is none, it is another configuration, or it had finished."""
    try:
        progress = json.loads((save_dir / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (progress.get("digest") != digest or not (save_dir / "weights" / "last.pt").is_file()
            or not 0 <= progress.get("epoch", -1) < epochs - 1):
        return None
    return progress


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arm", required=True, choices=sorted(ARMS))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=PROTOCOL.threads)
    parser.add_argument("--epochs", type=int, help="smoke runs only: another length (the digest says so)")
    parser.add_argument("--out-root", type=Path, default=RESULTS, help="where run folders go")
    parser.add_argument("--fraction", type=float, help="smoke runs only: train on this share of the train split")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ultralytics import YOLO

    arm = ARMS[args.arm]
    if args.epochs is not None:
        arm = dataclasses.replace(arm, train=dataclasses.replace(arm.train, epochs=args.epochs))
    git = git_state()
    workdir = args.workdir.resolve()
    data_yaml = ensure_data(workdir)
    if arm.start == "base-yaml":
        source = PROTOCOL.base_model
    elif arm.start == "small-yaml":
        source = str(small_yaml(PROTOCOL, workdir))
    else:
        source = str(run_dir("base", args.seed, args.out_root) / "weights.pt")
    name = f"{arm.name}-seed{args.seed}"
    save_dir = workdir / "train" / name
    digest = arm_digest(arm, args.seed)
    # A plain training (no pruning set on the model) stopped with its session goes on from its last epoch; the
    # pruning arms start over (their callback's state is not in ultralytics' checkpoint).
    progress = resumable(save_dir, digest, arm.train.epochs) if arm.setup is None else None
    model = YOLO(str(save_dir / "weights" / "last.pt") if progress else source)
    extra = {k: (str(run_dir(v[len("arm:"):], args.seed, args.out_root) / "weights.pt") if isinstance(v, str) and
                 v.startswith("arm:") else v) for k, v in arm.train.extra.items()}
    context = {"seed": args.seed, "workdir": workdir, "data": data_yaml, "out_root": args.out_root,
               "epochs": arm.train.epochs}
    if args.fraction is not None:
        extra["fraction"] = args.fraction
    before = progress or {"segments": [], "epoch": -1, "cpu_minutes": 0.0, "wall_minutes": 0.0}
    segments = [*before["segments"], {"from_epoch": before["epoch"] + 1, **git}]
    before_cpu, before_wall = before["cpu_minutes"], before["wall_minutes"]
    if arm.setup is not None:
        arm.setup(model, context)
    start_wall, start_cpu = time.time(), cpu_minutes()

    def save_progress(trainer) -> None:  # after each last.pt: what a stopped run goes on from
        atomic_write(save_dir / "progress.json", json.dumps({
            "digest": digest, "epoch": trainer.epoch, "segments": segments,
            "cpu_minutes": before_cpu + cpu_minutes() - start_cpu,
            "wall_minutes": before_wall + (time.time() - start_wall) / 60}, indent=1, default=str) + "\n")

    lock = DataLock(data_yaml.parent)
    model.add_callback("on_pretrain_routine_end", lock.release)  # the trainer has built its data loaders
    model.add_callback("on_model_save", save_progress)
    if arm.alone:  # the CLI (which removed a stale marker before launching this) keeps the other trainings stopped
        marker = measured_marker(workdir, arm.name, args.seed)  # until this arm's last measurement (its last prune)
        last_prune = max(context.get("schedule", [0]))

        def measured(trainer) -> None:
            if trainer.epoch >= last_prune:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()

        model.add_callback("on_train_epoch_end", measured)
    if progress:
        print(f"{name}: going on after epoch {progress['epoch'] + 1} of {arm.train.epochs} "
              f"({before_cpu:.1f} CPU-min before)", flush=True)
        settings = dict(resume=True)
    else:
        (save_dir / "progress.json").unlink(missing_ok=True)
        settings = dict(epochs=arm.train.epochs, imgsz=PROTOCOL.data.imgsz, batch=arm.train.batch,
                        close_mosaic=arm.train.close_mosaic, optimizer=arm.train.optimizer, seed=args.seed,
                        deterministic=True, project=str(workdir / "train"), name=name, exist_ok=True, plots=False,
                        amp=False, verbose=False, **({"trainer": context["trainer"]} if "trainer" in context else {}))
    lock.acquire()
    model.train(data=str(data_yaml), workers=0, device="cpu", **settings, **extra)
    lock.release()
    train_cpu = before_cpu + cpu_minutes() - start_cpu
    train_wall = before_wall + (time.time() - start_wall) / 60
    save_dir = Path(model.trainer.save_dir)
    best = save_dir / "weights" / "best.pt"
    record = {
        "arm": arm.name, "seed": args.seed, "summary": arm.summary,
        "digest": digest,
        # clean only when every part of the training ran at a clean revision
        "git": {**git, "clean": all(part["clean"] for part in segments)}, "segments": segments,
        "source": source, "train": {"epochs": arm.train.epochs, **arm.train.extra},
        "cost": {"epochs": arm.train.epochs, "cpu_minutes": round(train_cpu, 1), "wall_minutes": round(train_wall, 1),
                 "threads": args.threads},
        "val_history": val_history(save_dir / "results.csv"),
        "context": {k: v for k, v in context.items() if k in {"seed", "flops_keep", "latency_keep", "tp"}},
    }
    pruning = context.get("pruning")
    if pruning is not None:
        record["pruning"] = {"flops_ratio": pruning.flops_ratio, "history": pruning.history}
    with lock:
        record["val"] = evaluate(best, data_yaml, "val")
        record["test"] = evaluate(best, data_yaml, "test")
    out = run_dir(arm.name, args.seed, args.out_root)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "weights.pt", best.read_bytes())
    atomic_write(out / "run.json", json.dumps(record, indent=1, default=str) + "\n")
    print(f"{arm.name} seed {args.seed}: test mAP50-95 {record['test']['map50_95']:.4f}, "
          f"{train_cpu:.1f} CPU-min -> {out}")


if __name__ == "__main__":
    main()
