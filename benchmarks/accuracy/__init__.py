"""Accuracy vs latency: YOLOv8n (or ``--model``) on the synthetic shapes set, pruned to −50 % FLOPs by each tool,
against the user's real alternative — a smaller model trained from scratch — with the same total epoch budget.

Run from the repository root::

    YOLO_OFFLINE=1 python -m benchmarks.accuracy            # < 1 h on 2 CPU cores (2 seeds) -> benchmarks/results/
    YOLO_OFFLINE=1 python -m benchmarks.accuracy --quick    # a few minutes (tiny images and epochs: a smoke run)
    YOLO_OFFLINE=1 python -m benchmarks.accuracy --arms unpruned ours-uniform --out-dir /tmp/acc
    YOLO_OFFLINE=1 python -m benchmarks.accuracy --model yolov7-tiny --reuse   # -> accuracy_yolov7-tiny.*

Protocol (every arm alike):

1. **Pretrain** one YOLOv8n (ultralytics YAML, random init) on the synthetic set for ``pretrain_epochs``;
   every arm starts from these weights (cached in ``--workdir``, reused when the configuration matches).
2. **Prune + fine-tune** for ``finetune_epochs`` with the same optimiser (AdamW, cosine decay from ``finetune_lr``),
   data order, augmentation and validation; the pruning arms prune at the start of the epochs in ``schedule``
   (budget spread over the steps) towards −``target`` of the FLOPs counted at the training input:

   * ``unpruned``: no pruning — the reference for what the fine-tuning budget alone gives;
   * ``ours-sensitivity``: ``IterativePruningCallback(strategy="sensitivity")`` — the paper's method;
   * ``ours-uniform``: ``strategy="uniform"``, L1 criterion (the same fraction of every group);
   * ``ours-global``: ``strategy="global"``, L1 criterion (one threshold on per-group-normalised L1);
   * ``tp-magnitude``: Torch-Pruning's ``MagnitudePruner`` (L1), per-layer ratio found on a copy so that the final
     FLOPs match ours, ``iterative_steps`` = the same schedule, Detect head ignored (its example's setting) — on the
     model it can handle: ultralytics' C2f blocks rewritten so their split is two convs (see ``_peers.py``);
   * ``modelpruning``: Lightning's ``ModelPruning`` (``ln_structured``, L1 over filters, per layer) on the same
     schedule, at the per-layer channel fraction ``ours-uniform`` removes; it masks, so FLOPs and latency stay.
   * ``ours-sensitivity-r8``: the paper's method with ``round_to=8`` (every group keeps a multiple of 8 channels,
     which ``latency.py`` found turns more of the FLOPs saving into speed) — our recommended setting;
   * ``ours-sensitivity-latency``: the paper's method scored by *measured* latency instead of FLOPs
     (``latency=LatencyConfig(cost="latency", backend="onnxruntime")``: ``Δlatency × metric^k`` from a per-group
     latency table, removals at the widths where ONNX Runtime is fast), the same FLOPs target and schedule; the
     graph is traced and the table measured at the deployment input ``example_input=[1, 3, 640, 640]`` (FLOPs
     ratios are the same as at the training size), cached in ``<workdir>/cost_tables`` so the seeds share the
     unpruned architecture's table;
   * ``ours-latency-target``: a −``target`` *latency* target instead of FLOPs (``target_metric="latency"``,
     ``strategy="global"``, latency cost, ``limits=Limits(max_rate=0.5, max_total_rate=0.75)``, ONNX Runtime, the
     measured latency of the deployed form at the deployment input, corrections on the last step until it is met),
     the same schedule;
   * ``ours-sensitivity-latency-target``: the same −``target`` latency target with the paper's method
     (``strategy="sensitivity"``: probes read ``val``, ``Δlatency × metric^k`` from the ONNX Runtime table),
     ``limits=Limits(max_total_rate=0.75)``;
   * ``ours-uniform-70``: FLOPs-targeted uniform L1 pruned to −70 % FLOPs — where ``latency_aware.md`` finds FLOPs-
     targeted pruning has to go to reach the latency a −50 % latency target reaches (0.28–0.30× FLOPs on ONNX
     Runtime): the question of issue 14 item 6, whether the FLOPs the latency target keeps buy accuracy after
     fine-tuning at the same measured speed;
   * ``sibling-scratch``: ultralytics' narrower sibling (the same YAML at the ``width_multiple`` whose FLOPs are
     closest to the pruned models'), ``yolo11n-scratch``, ``yolo26n-scratch``: trained from scratch for pretraining
     + fine-tuning epochs — what a user would do instead of pruning;
   * ``sibling-latency-scratch``: the narrower sibling at the *measured latency* of the first seed's
     ``ours-sensitivity`` model (the question a user asks: at the latency my device allows, what accuracy?): every
     distinct channel configuration with 0.5–1.5× that model's FLOPs is timed interleaved with it (640 px, batch 1,
     BatchNorm fused, eager and ONNX Runtime; the three nearest again, longer) and the width whose geometric-mean
     latency ratio is nearest 1 is trained like ``sibling-scratch``, by every seed (one architecture, as the table
     times the first seed's models); it runs after ``ours-sensitivity`` (arms run in this list's order), and where
     the match lands on ``sibling-scratch``'s very architecture, that run is taken instead of a duplicate.

   ``--model yolov7-tiny`` (the paper's model, ``lightning_prune/models/yolov7-tiny.yaml``) runs every arm from
   YOLOv7-tiny: its sibling is that YAML at a smaller ``width_multiple``; ``tp-magnitude`` has no CSP block to
   rewrite there (an arm that fails records its one-line cause). Its files get their own prefix
   (``accuracy_yolov7-tiny``), never the YOLOv8n ``accuracy.*``; the speed sweep (of YOLOv8n) is skipped. The two
   arms that do not depend on the start model, ``yolo11n-scratch`` and ``yolo26n-scratch``, are taken with
   ``--reuse`` from ``--scratch-workdir`` (the YOLOv8n run's work directory) when they ran there with the identical
   configuration (apart from ``model`` and ``sweep``); otherwise they run again.

3. **Measure** every arm's final model: mAP50-95 / mAP50 on the held-out **test** split (torchmetrics, as
   ``YOLOModule`` logs it; the sensitivity probes read ``val``, nothing selects on ``test``), FLOPs
   (``torch.utils.flop_counter``) and parameters, and latency at 640 × 640, batch 1,
   eager PyTorch and ONNX Runtime (BatchNorm folded with ultralytics' ``fuse()`` first, as its export does), all arms
   interleaved in one ``compare_latency`` run. A speed sweep (ours-uniform and Torch-Pruning at −25/−50/−75 % FLOPs on
   an untrained YOLOv8n) adds points to the speedup plot.

Each arm runs in its own child process under a wall-time limit, so one failure is recorded and the rest still run.
Every seed (``--seeds``, default 0, 1 and 2; ``--quick``: 0) repeats steps 1 and 2 with its own initialisation, data
order and augmentation (the data set is the same); mAP is reported as the mean with the per-seed values, since on a
data set this small seeds differ by a few points. ``--reuse`` takes arms that already ran with the same configuration
from ``--workdir``. The verdict never counts a gap inside the seed spread (max − min) as a win, nor a latency
within 3 %; it says where a peer or a smaller model wins, and under each comparison gives the paired per-seed
differences (every arm of a seed starts from the same pretrained weights). Writes ``accuracy.md`` (tables),
``accuracy.json`` (raw) and three PNG plots into ``--out-dir``;
``--render accuracy.json`` rewrites the tables and plots from a JSON without training.

``--train-only`` runs the arms of ``--seeds`` into ``--workdir`` and stops before the latency block, so seeds (or
models) can train in parallel — each with ``--threads 1`` — and one final ``--reuse`` invocation on a quiet machine
times the first seed's models and writes the report; ``--reuse-json`` takes several earlier results files (the
first that has an arm wins; ``yolo11n``/``yolo26n-scratch`` also from another ``--model``'s file).

``--merge OLD.json`` completes a run of a few arms with an earlier run's results, e.g. one new arm trained per seed
(in parallel, each with its own ``--out-dir``) and then merged in one final ``--reuse`` invocation::

    python -m benchmarks.accuracy --arms ours-sensitivity-latency --threads 1 --no-sweep --workdir W --seeds 0 \
        --out-dir /tmp/acc_seed0                          # likewise --seeds 1, --seeds 2
    python -m benchmarks.accuracy --arms ours-sensitivity-latency --threads 1 --no-sweep --workdir W --seeds 0 1 2 \
        --reuse --merge benchmarks/results/accuracy.json --out-dir benchmarks/results --prefix accuracy

Every arm of OLD.json this invocation did not run joins ``runs`` and the table per seed of this run, marked
``merged_from`` and keeping its own revision and configuration (this invocation's arms win). Per seed, this run's
pretrained mAP50-95 is compared with OLD's (equal within 1e-6: the same deterministic pretraining, so the paired
per-seed lines stay valid; otherwise the pairs of a merged arm with an arm of this run leave that seed out). The
merged arms whose architecture does not depend on training (``unpruned``, ``modelpruning`` — masks only —,
``sibling-scratch`` at its recorded ``width_multiple``, ``yolo11n``/``yolo26n-scratch``) are rebuilt from their YAML
(random init; FLOPs and params checked against OLD's) and timed in this run's one interleaved measurement; the
others (``ours-*``, ``tp-magnitude``) keep OLD's latency (``latency_source``), marked † in the table, with speedups
relative to OLD's unpruned model, and the verdict compares them with this run's models by those speedups only.

Modules, one concern each: :mod:`.config` (arms, the configuration, constants), :mod:`.arms` (what each pruning arm
does while fine-tuning), :mod:`.models` (ultralytics' narrower siblings, the merged arms' rebuilt architectures),
:mod:`.train` (the child process that trains one stage), :mod:`.runs` (child processes, cached pretraining, an arm
run or reused), :mod:`.reuse` (``--reuse``, ``--reuse-json``, ``--scratch-workdir``, ``--merge``), :mod:`.latency`
(the interleaved measurement, the speed sweep), :mod:`.compare` (seeds combined, tie rules, paired differences, the
answer and the verdict), :mod:`.report` (the Markdown and the plots), :mod:`.cli` (the command line).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# benchmarks/'s shared modules (_common, _harness, _peers) are imported by name, as by the scripts beside them
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_OFFLINE", "1")  # never download anything (before torch and ultralytics are imported)

from .arms import (
    _arm_callbacks,
    _cost_table_dir,
    _cost_table_facts,
    _onnx_latency_callback,
    _uniform_fraction,
    _uniform_plan,
)
from .cli import _model_stem, main, parse_args
from .compare import (
    ANSWER_ARMS,
    ANSWER_RIVALS,
    _comparable,
    _earlier_words,
    _faster,
    _is_earlier,
    _latency,
    _measured,
    _outcome,
    _paired_line,
    _reference,
    _speed_words,
    _spread,
    _start,
    _sweep_verdict,
    _unpaired_seeds,
    answer,
    combine_seeds,
    compare_map,
    paired_differences,
    verdict,
)
from .config import (
    ARM_LABELS,
    ARMS,
    CODE_PATHS,
    DEFAULT_SEEDS,
    LATENCY_MATCH_ARM,
    LATENCY_SIZE,
    LATENCY_TARGET_MAX_TOTAL,
    MATCHED_FLOPS_TARGET,
    MODEL_FREE_ARMS,
    RESULTS,
    SCRATCH_ARMS,
    SCRATCH_REUSE_IGNORES,
    SWEEP_TARGETS,
    Config,
    _ordered,
    log,
)
from .latency import _fresh_yolov8n, _fused, measure_latency_all, speed_sweep
from .models import (
    _base_width,
    _config_of,
    _shape_signature,
    _shapes,
    _yaml_at_width,
    identical_sibling_run,
    rebuild_architecture,
    shared_latency_match,
    sibling_at_latency,
    sibling_model,
)
from .report import _fmt_speed, _loads, _merge_lines, _reused_line, _revisions_line, _seeds, plots, render
from .reuse import (
    LATENCY_EARLIER,
    LATENCY_REBUILT,
    MERGE_CONFIG_IGNORES,
    PRETRAIN_TOLERANCE,
    REBUILDABLE_ARMS,
    _earlier_loaded,
    _earlier_result,
    _results_file,
    _same_except,
    _scratch_from_elsewhere,
    load_merge_source,
    merge_runs,
    merged_latency_models,
)
from .runs import arm_result, pretrained, run_child
from .train import (
    _data_root,
    _datamodule,
    _trainer,
    _validate,
    child_main,
    make_data,
    run_arm,
    run_pretrain,
    run_scratch,
)

# the names of the single module this package was (benchmarks/accuracy.py), as they were
__all__ = ["RESULTS", "ARMS", "SCRATCH_ARMS", "LATENCY_MATCH_ARM", "MODEL_FREE_ARMS", "SCRATCH_REUSE_IGNORES",
           "ARM_LABELS", "LATENCY_SIZE", "LATENCY_TARGET_MAX_TOTAL", "MATCHED_FLOPS_TARGET", "DEFAULT_SEEDS",
           "CODE_PATHS", "SWEEP_TARGETS", "Config", "log", "_ordered", "_uniform_plan", "_uniform_fraction",
           "_cost_table_dir", "_onnx_latency_callback", "_arm_callbacks", "_cost_table_facts", "_fresh_yolov8n",
           "_fused", "speed_sweep", "measure_latency_all", "_yaml_at_width", "_base_width", "sibling_model",
           "sibling_at_latency", "_shape_signature", "shared_latency_match", "_shapes", "identical_sibling_run",
           "_config_of", "rebuild_architecture", "_data_root", "make_data", "_datamodule", "_trainer", "_validate",
           "run_pretrain", "run_scratch", "run_arm", "child_main", "_results_file", "_earlier_result", "_same_except",
           "_scratch_from_elsewhere", "PRETRAIN_TOLERANCE", "REBUILDABLE_ARMS", "LATENCY_REBUILT", "LATENCY_EARLIER",
           "MERGE_CONFIG_IGNORES", "load_merge_source", "_earlier_loaded", "merge_runs", "merged_latency_models",
           "run_child", "pretrained", "arm_result", "combine_seeds", "_is_earlier", "_measured", "_latency",
           "_reference", "_earlier_words", "_spread", "compare_map", "_comparable", "_faster", "ANSWER_ARMS",
           "ANSWER_RIVALS", "_outcome", "answer", "verdict", "_speed_words", "_start", "_unpaired_seeds",
           "paired_differences", "_paired_line", "_sweep_verdict", "render", "_reused_line", "_merge_lines",
           "_revisions_line", "_seeds", "_fmt_speed", "_loads", "plots", "parse_args", "_model_stem", "main"]
