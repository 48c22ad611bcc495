"""Does pruning beat the smaller model? The benchmark of issue 35, in a regime where the answer means something.

A converged YOLOv8n (the *base*) on Fashion-MNIST scenes (:mod:`lightning_prune.data.fashion`), clearly better than
ultralytics' narrower sibling trained to its own plateau, is pruned to the sibling's measured latency by each
method — with and without distillation from the base — and compared with the sibling from scratch and the sibling
distilled from the base by ultralytics' own ``distill_model``: the user's strongest alternative.

Run from the repository root (see ``python -m benchmarks.prune_vs_small --help``)::

    YOLO_OFFLINE=1 python -m benchmarks.prune_vs_small train --arms base small --seeds 0 1 2
    YOLO_OFFLINE=1 python -m benchmarks.prune_vs_small report

Every finished arm is a folder ``benchmarks/results/prune_vs_small/<arm>/seed<k>/`` (``run.json``: configuration,
revision, cost, validation history, test metrics; ``weights.pt``: the final model), committed, so later sessions
reuse it instead of training it again; an arm whose configuration or revision recording does not match is run
again. Only arms run at a clean revision count in the report.

Modules, one concern each: :mod:`.config` (the protocol's numbers), :mod:`.arms` (what each arm trains),
:mod:`.runs` (run folders, reuse, child processes), :mod:`.train` (the child that trains one arm),
:mod:`.report` (regime check, latency, verdict, plots).
"""
