"""The command line (``python -m benchmarks.accuracy``): options, the seeds and arms in order, the latency block and
the files written."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _harness import git_rev

from . import __doc__ as PACKAGE_DOC
from .compare import combine_seeds
from .config import ARMS, CODE_PATHS, DEFAULT_SEEDS, LATENCY_SIZE, MODEL_FREE_ARMS, RESULTS, Config, _ordered, log
from .latency import _fresh_yolov8n, measure_latency_all, speed_sweep
from .report import plots, render
from .reuse import _earlier_loaded, _results_file, load_merge_source, merge_runs, merged_latency_models
from .runs import arm_result, pretrained
from .train import child_main, make_data

PROG = "python -m benchmarks.accuracy"


def typed_command(argv: list[str] | None = None) -> str:
    """The command that ran this invocation, as typed from the repository root."""
    return " ".join([PROG, *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=PACKAGE_DOC.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny images and epochs: minutes, a smoke run")
    parser.add_argument("--model", default=None,
                        help="the model the pruning arms start from (default yolov8n.yaml; e.g. yolov7-tiny)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (default: all)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the .md/.json/.png go")
    parser.add_argument("--prefix", default=None,
                        help="file name prefix (default: accuracy, accuracy_quick; another --model: "
                             "accuracy_<model>[_quick], e.g. accuracy_yolov7-tiny)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="data set, pretrained weights (reused when the config matches) and arm models "
                             "(default: a folder in the system temp directory)")
    parser.add_argument("--timeout", type=float, default=1800, help="wall-time limit per child process, s (1800)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help=f"training seeds; mAP is averaged over them (default {' '.join(map(str, DEFAULT_SEEDS))}"
                             "; --quick: 0)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse arms (per seed) that already ran with the same configuration in --workdir")
    parser.add_argument("--reuse-json", type=Path, nargs="+", default=None, metavar="JSON",
                        help="with --reuse: earlier results JSONs whose per-seed arm results count as earlier runs "
                             "when their configuration is identical (seeds after the first only: the first seed's "
                             f"models are timed, and a results file holds none; {' and '.join(MODEL_FREE_ARMS)} also "
                             "from another --model's results); the first file that has the arm wins")
    parser.add_argument("--scratch-workdir", type=Path, default=None,
                        help="with --reuse and another --model: the YOLOv8n run's --workdir, from which "
                             f"{' and '.join(MODEL_FREE_ARMS)} are taken when they ran with the identical "
                             "configuration apart from model/sweep (default: the default YOLOv8n work directory)")
    parser.add_argument("--no-sweep", action="store_true",
                        help="skip the untrained speed sweep (of YOLOv8n; skipped anyway for another --model)")
    parser.add_argument("--merge", type=Path, metavar="OLD_JSON",
                        help="after this invocation's own arms, take every other arm of an earlier results JSON "
                             "(per seed of this run; own arms win), check the pretraining matches, time the merged "
                             "arms whose architecture does not depend on training and keep the earlier latency "
                             "(flagged) for the rest")
    parser.add_argument("--train-only", action="store_true",
                        help="run (or reuse) the arms of --seeds into --workdir and stop: no latency block, no "
                             "report (for seeds run in parallel, each timed later by one quiet --reuse invocation)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the .md and plots from a results JSON this script wrote (no training)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for earlier in args.reuse_json or []:
        try:
            _results_file(str(earlier))["runs"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            parser.error(f"--reuse-json {earlier}: not a readable results file ({type(err).__name__}: {err})")
    return args


def _model_stem(model: str) -> str:
    """``yolov8n.yaml`` -> ``yolov8n``, ``lightning_prune/models/yolov7-tiny.yaml`` -> ``yolov7-tiny``."""
    return Path(model).name.removesuffix(".yaml").removesuffix(".yml")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        cfg = Config(**json.loads(args.config_json))
        return child_main(args.child, cfg, args.workdir, args.workdir / f"result-{args.child}.json")

    if args.render:
        data = json.loads(args.render.read_text())
        prefix = args.prefix or args.render.stem
        out_dir = args.render.parent if args.out_dir == RESULTS and args.render.parent != RESULTS else args.out_dir
        written = plots(data, out_dir, prefix)
        (out_dir / f"{prefix}.md").write_text(render(data, prefix))
        log(f"wrote {out_dir / f'{prefix}.md'} and {len(written)} plots from {args.render}")
        return 0

    cfg = Config.quick() if args.quick else Config()
    if args.model:
        cfg.model = args.model
    if args.threads:
        cfg.threads = args.threads
    stem = _model_stem(cfg.model)
    if args.no_sweep or stem != "yolov8n":  # the sweep prunes untrained YOLOv8n copies, whatever --model is
        cfg.sweep = False
    tag = "" if stem == "yolov8n" else f"_{stem}"
    prefix = args.prefix or f"accuracy{tag}{'_quick' if args.quick else ''}"
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    workdir = args.workdir or tmp / f"lightning_prune_{prefix}"
    workdir = workdir.resolve()
    if tag and args.scratch_workdir is None:
        args.scratch_workdir = tmp / f"lightning_prune_accuracy{'_quick' if args.quick else ''}"
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    command = typed_command()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()

    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else list(DEFAULT_SEEDS))
    merge_old = load_merge_source(args.merge) if args.merge else None  # before anything can overwrite it
    make_data(cfg, workdir)
    runs: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        seed_cfg = dataclasses.replace(cfg, seed=seed)
        seed_dir = workdir / f"seed{seed}"
        seed_dir.mkdir(exist_ok=True)
        log(f"seed {seed}:")
        runs[seed] = {"pretrain": pretrained(seed_cfg, seed_dir, args.timeout), "arms": {}}
        for arm in _ordered(list(args.arms)):  # ARMS order: sibling-latency-scratch after what it matches
            runs[seed]["arms"][arm] = r = arm_result(arm, seed_cfg, seed_dir, args, need_model=seed == seeds[0])
            if r.get("ok"):
                log(f"  {arm}: mAP50-95 {r['map50_95']:.3f}, FLOPs {r['flops'] / r['flops_base']:.1%} of base, "
                    f"{r['fit_s']:.0f} s{' (reused)' if r.get('reused') else ''}")
            else:
                log(f"  {arm}: FAILED {r['error']}")
    if args.train_only:
        log(f"--train-only: arm results and models are in {workdir} (seed directories); no latency block, no report")
        return 0 if all(r.get("ok") for run in runs.values() for r in run["arms"].values()) else 1
    merge_record = None
    if merge_old is not None:
        merge_record = merge_runs(runs, list(args.arms), merge_old, str(args.merge), asdict(cfg))
        merge_record["latency_earlier_loaded"] = _earlier_loaded(merge_old.get("latency", {}))
        log(f"merged from {args.merge}: {', '.join(merge_record['arms']) or 'no arm'}")
    arms = combine_seeds(runs)

    # speed does not depend on the weights: the first seed's models are timed
    first_dir = workdir / f"seed{seeds[0]}"
    models = {arm: torch.load(first_dir / f"arm-{arm}.pt", weights_only=False)
              for arm, r in runs[seeds[0]]["arms"].items() if r.get("ok") and not r.get("merged_from")}
    if merge_record is not None:  # merged arms: rebuilt architectures join this run's one interleaved measurement
        models.update(merged_latency_models(arms, cfg))
    sweep_flops: dict[str, int] = {}
    if cfg.sweep:
        from lightning_prune import count_flops

        log("speed sweep: pruning untrained YOLOv8n copies ...")
        sweep = {"sweep unpruned": _fresh_yolov8n(), **speed_sweep(cfg)}
        x640 = torch.zeros(1, 3, LATENCY_SIZE, LATENCY_SIZE)
        sweep_flops = {name: count_flops(model, x640) for name, model in sweep.items()}
        models.update(sweep)
    latency = measure_latency_all(models, cfg) if models else {}

    data = {"command": command, "date": started, "git": git_rev(CODE_PATHS), "config": asdict(cfg), "seeds": seeds,
            "runs": {str(seed): run for seed, run in runs.items()}, "arms": arms, "latency": latency,
            "sweep_flops": sweep_flops, "total_s": time.monotonic() - t0}
    if merge_old is not None:
        data["merge"] = merge_record
        data["latency_earlier"] = merge_old.get("latency", {})  # the merged file's own measurement, as it was
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{prefix}.json").write_text(json.dumps(data, indent=1, default=float))
    written = plots(data, args.out_dir, prefix)
    (args.out_dir / f"{prefix}.md").write_text(render(data, prefix))
    log(f"wrote {args.out_dir / f'{prefix}.md'} and {len(written)} plots")
    print(render(data, prefix))
    return 0
