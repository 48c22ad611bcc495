"""The public API in tiers: the top level exports what users type (the front-ends loaded on first use), each
subpackage its public names, and every path that moved still answers for one release with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import lightning_prune

TOP_LEVEL = ("IterativePruningCallback", "LatencyProfiler", "add_pruning", "IterativePruner", "PruningConfig",
             "DependencyGraph", "load_pruned", "count_flops", "Distiller", "DistillationConfig")

#: (old module, name, new module) for every module that moved
MOVED = [
    ("lightning_prune.importance", "lowest_channels", "lightning_prune.pruning.importance"),
    ("lightning_prune.importance", "CRITERIA", "lightning_prune.pruning.importance"),
    ("lightning_prune.sensitivity", "analyze_sensitivity", "lightning_prune.pruning.sensitivity"),
    ("lightning_prune.sensitivity", "removal_count", "lightning_prune.pruning.counts"),
    ("lightning_prune.selection", "score_probes", "lightning_prune.pruning.scoring"),
    ("lightning_prune.selection", "knapsack_counts", "lightning_prune.pruning.allocation"),
    ("lightning_prune.selection", "plan_from_counts", "lightning_prune.pruning.counts"),
    ("lightning_prune.surgery", "Surgery", "lightning_prune.graph.surgery"),
    ("lightning_prune.graph.tracer", "trace_channels", "lightning_prune.graph.trace"),
    ("lightning_prune.profiling.cost_table", "build_cost_table", "lightning_prune.pruning.cost_table"),
    ("lightning_prune.profiling.cost_table", "sample_widths", "lightning_prune.profiling.curves"),
    # names the subpackages no longer export
    ("lightning_prune.profiling", "CostTable", "lightning_prune.pruning.cost_table"),
    ("lightning_prune.profiling", "batched_input", "lightning_prune.profiling.timing"),
    ("lightning_prune.pruning", "compose_plans", "lightning_prune.pruning.result"),
    ("lightning_prune.pruning", "fastest_plan", "lightning_prune.pruning.measured_choice"),
]


def test_the_top_level_exports_what_users_type() -> None:
    assert set(TOP_LEVEL) <= set(lightning_prune.__all__)
    for name in lightning_prune.__all__:
        assert getattr(lightning_prune, name) is not None, name
    assert lightning_prune.IterativePruningCallback.__module__ == "lightning_prune.callbacks.iterative_pruning"
    assert lightning_prune.add_pruning.__module__ == "lightning_prune.integrations.ultralytics.trainer"
    assert set(TOP_LEVEL) <= set(dir(lightning_prune))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        lightning_prune.nothing  # noqa: B018


def test_the_core_imports_without_ultralytics_and_loads_lightning_on_first_use() -> None:
    code = (
        "import sys\n"
        "sys.modules['ultralytics'] = None\n"  # as if the [yolo] extra were not installed
        "import lightning_prune as lp\n"
        "assert 'lightning.pytorch' not in sys.modules, 'lightning loaded at import'\n"
        "lp.IterativePruner, lp.PruningConfig, lp.DependencyGraph, lp.load_pruned, lp.count_flops\n"
        "import lightning_prune.pruning, lightning_prune.profiling, lightning_prune.graph, lightning_prune.checkpoint\n"
        "assert 'lightning.pytorch' not in sys.modules, 'the core loaded lightning'\n"
        "lp.IterativePruningCallback\n"
        "assert 'lightning.pytorch' in sys.modules\n"
        "add_pruning = lp.add_pruning\n"
        "try:\n"
        "    add_pruning(object())\n"
        "except ImportError as err:\n"
        "    assert 'lightning-prune[yolo]' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('add_pruning ran without ultralytics')\n"
    )
    done = subprocess.run([sys.executable, "-W", "error::DeprecationWarning:__main__", "-c", code],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("package", ["lightning_prune", "lightning_prune.pruning", "lightning_prune.profiling",
                                     "lightning_prune.graph", "lightning_prune.callbacks", "lightning_prune.utils"])
def test_every_public_name_resolves_without_a_warning(package: str) -> None:
    module = importlib.import_module(package)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in module.__all__:
            assert getattr(module, name) is not None, name


@pytest.mark.parametrize(("old", "name", "new"), MOVED)
def test_a_moved_name_still_answers_at_its_old_path_with_a_warning(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} is deprecated.*import it from {new}$"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_at_an_old_path_warns_at_the_importing_line() -> None:
    with pytest.warns(DeprecationWarning) as caught:
        from lightning_prune.selection import uniform_counts  # noqa: F401
    assert caught[0].filename == __file__


def test_an_old_module_knows_only_its_own_names() -> None:
    import lightning_prune.selection as selection

    with pytest.raises(AttributeError, match="has no attribute 'np'"):
        selection.np  # noqa: B018
