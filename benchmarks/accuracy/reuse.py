"""Earlier results instead of training again: ``--reuse`` (the work directory), ``--reuse-json`` (earlier results
files), ``--scratch-workdir`` (the model-free arms of another model's run) and ``--merge`` (the arms of an earlier
results JSON, with the pretraining check and the merged arms' latency source)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _harness import one_line
from torch import nn

from .config import LATENCY_SIZE, MODEL_FREE_ARMS, SCRATCH_ARMS, SCRATCH_REUSE_IGNORES, Config, _ordered, log
from .models import rebuild_architecture


@functools.lru_cache(maxsize=4)
def _results_file(path: str) -> dict[str, Any]:
    """An earlier results JSON, read once per invocation (every arm of every seed looks into it)."""
    return json.loads(Path(path).read_text())


def _earlier_result(arm: str, cfg: Config, files: list[Path]) -> dict[str, Any] | None:
    """``--reuse-json``: this seed's ``arm`` from the first earlier results file where it finished with the identical
    configuration — for the model-free arms (``yolo11n``/``yolo26n-scratch``) apart from ``model``/``sweep``, so a
    YOLOv7-tiny run takes them from the YOLOv8n results."""
    ignored = SCRATCH_REUSE_IGNORES if arm in MODEL_FREE_ARMS else ()
    for earlier in files:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            run = _results_file(str(earlier))["runs"][str(cfg.seed)]
            old = run["arms"][arm]
            if old.get("ok") and _same_except(old.get("config"), asdict(cfg), ignored):
                log(f"  arm {arm}: reused from {earlier} (identical configuration"
                    f"{' apart from ' + '/'.join(ignored) if ignored else ''}, ran at {old.get('git')})")
                taken = {**old, "reused": True, "reused_from": str(earlier), "config": asdict(cfg)}
                if arm not in SCRATCH_ARMS:  # the pretrained weights it started from (paired lines compare them)
                    taken["started_from_map50_95"] = run.get("pretrain", {}).get("map50_95")
                if old.get("config") != asdict(cfg):
                    taken["ran_with_config"] = old["config"]
                return taken
    return None


def _same_except(a: dict[str, Any] | None, b: dict[str, Any], ignored: tuple[str, ...]) -> bool:
    if not isinstance(a, dict):
        return False
    return ({k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored})


def _scratch_from_elsewhere(arm: str, cfg: Config, workdir: Path, other: Path | None) -> dict[str, Any] | None:
    """``yolo11n-scratch``/``yolo26n-scratch`` do not read ``cfg.model``: take the result and model of the same seed
    from another model's work directory (``--scratch-workdir``) when every other config key is identical, copying
    both here (the latency block loads the models from this work directory)."""
    if arm not in MODEL_FREE_ARMS or other is None:
        return None
    source = other.resolve() / workdir.name
    if source == workdir.resolve():
        return None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((source / f"result-{arm}.json").read_text())
        model_file = source / f"arm-{arm}.pt"
        if old.get("ok") and _same_except(old.get("config"), asdict(cfg), SCRATCH_REUSE_IGNORES) \
                and model_file.is_file():
            import shutil

            shutil.copyfile(model_file, workdir / f"arm-{arm}.pt")
            taken = {**old, "config": asdict(cfg), "ran_with_config": old["config"], "reused_from": str(source)}
            (workdir / f"result-{arm}.json").write_text(json.dumps(taken))
            log(f"  arm {arm}: reused from {source} (identical configuration apart from "
                f"{'/'.join(SCRATCH_REUSE_IGNORES)})")
            return {**taken, "reused": True}
    log(f"  arm {arm}: nothing to reuse in {source} (missing, failed or another configuration): running it")
    return None


PRETRAIN_TOLERANCE = 1e-6  # pretrained mAP50-95 equal within this: the same (deterministic) pretraining
REBUILDABLE_ARMS = ("unpruned", "modelpruning", "sibling-scratch", "sibling-latency-scratch", "yolo11n-scratch",
                    "yolo26n-scratch")
LATENCY_REBUILT = "this run (architecture rebuilt from its YAML, random init)"
LATENCY_EARLIER = "earlier run"
MERGE_CONFIG_IGNORES = ("seed", "sweep")  # keys that may differ between the merged run and this one


def load_merge_source(path: Path) -> dict[str, Any]:
    """The earlier results JSON of ``--merge`` (read before anything runs: the output may overwrite it)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data.get("runs"), dict) or not isinstance(data.get("config"), dict):
        raise SystemExit(f"--merge {path}: not a results JSON of this script (no 'runs'/'config')")
    return data


def _earlier_loaded(old_latency: dict[str, Any]) -> bool:
    """Whether the earlier latency block ran with more runnable work than cores (a load average above the cores)."""
    loads = [v[0] for v in (old_latency.get("loadavg_before"), old_latency.get("loadavg_after")) if v]
    return bool(loads) and max(loads) > (os.cpu_count() or 1)


def merge_runs(runs: dict[int, dict[str, Any]], own_arms: list[str], old: dict[str, Any], source: str,
               cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """Take every arm of ``old`` that this invocation did not run (``own_arms`` win, even failed), per seed of this
    run, into ``runs`` (in place), marked ``merged_from``, each keeping its own ``git`` revision and ``config``.

    Returns the merge record: the source, its command/date/revision, per arm the seeds and revisions merged, the
    pretraining check per seed (this run's pretrained mAP50-95 against the merged file's: equal within
    ``PRETRAIN_TOLERANCE`` means the same pretrained weights, so arms of both runs pair by seed), the earlier run's
    seeds this run has not, and the configuration keys that differ (``MERGE_CONFIG_IGNORES`` aside)."""
    old_runs = old.get("runs", {})
    record: dict[str, Any] = {"source": source, "command": old.get("command"), "date": old.get("date"),
                              "git": old.get("git"), "own_arms": list(own_arms), "arms": {}, "pretrain_match": {},
                              "seeds_not_merged": [s for s in old.get("seeds", []) if s not in runs],
                              "config_differs": {}}
    old_cfg = old.get("config", {})
    for key in sorted(set(old_cfg) | set(cfg_dict)):
        if key not in MERGE_CONFIG_IGNORES and old_cfg.get(key) != cfg_dict.get(key):
            record["config_differs"][key] = {"this": cfg_dict.get(key), "merged": old_cfg.get(key)}
    for seed, run in runs.items():
        old_run = old_runs.get(str(seed))
        if not isinstance(old_run, dict):
            continue
        mine = run.get("pretrain", {}).get("map50_95")
        theirs = old_run.get("pretrain", {}).get("map50_95")
        match = mine is not None and theirs is not None and abs(mine - theirs) <= PRETRAIN_TOLERANCE
        record["pretrain_match"][str(seed)] = {"this": mine, "merged": theirs, "match": match}
        for arm, result in old_run.get("arms", {}).items():
            if arm in own_arms:
                continue
            run["arms"][arm] = {**result, "merged_from": source}
            entry = record["arms"].setdefault(arm, {"seeds": [], "git": []})
            entry["seeds"].append(seed)
            rev = result.get("git", old.get("git", "unknown"))
            if rev not in entry["git"]:
                entry["git"].append(rev)
        run["arms"] = {arm: run["arms"][arm] for arm in _ordered(list(run["arms"]))}
    if record["config_differs"]:
        log(f"--merge: the merged run's configuration differs: {record['config_differs']}")
    for seed, check in record["pretrain_match"].items():
        if not check["match"]:
            log(f"--merge: seed {seed} pretrained mAP50-95 {check['this']} here vs {check['merged']} in {source}: "
                "different pretrained weights, paired lines with merged arms left out for this seed")
    return record


def merged_latency_models(arms: dict[str, dict[str, Any]], cfg: Config) -> dict[str, nn.Module]:
    """The models to time for the merged arms, each arm's ``latency_source`` set (in place): rebuilt architectures
    whose FLOPs and parameters at 640 px equal the merged result's are timed in this run; the rest (architecture
    from training, a failed rebuild or a mismatch) keep the earlier run's numbers (``LATENCY_EARLIER``)."""
    from lightning_prune import count_flops, count_params

    x640 = torch.zeros(1, 3, LATENCY_SIZE, LATENCY_SIZE)
    models = {}
    for arm, r in arms.items():
        if not r.get("merged_from") or not r.get("ok"):
            continue
        r["latency_source"] = LATENCY_EARLIER
        if arm not in REBUILDABLE_ARMS:
            continue
        try:
            model = rebuild_architecture(arm, r, cfg)
            flops, params = count_flops(model, x640), count_params(model)
        except Exception as err:  # noqa: BLE001 - the earlier numbers stay, with the cause
            r["rebuild_error"] = one_line(err)
            log(f"  {arm}: could not rebuild its architecture ({r['rebuild_error']}): earlier latency kept")
            continue
        if flops != r.get("flops_640") or params != r.get("params"):
            r["rebuild_error"] = (f"rebuilt {flops} FLOPs / {params} params, merged result {r.get('flops_640')} / "
                                  f"{r.get('params')}")
            log(f"  {arm}: rebuilt architecture differs ({r['rebuild_error']}): earlier latency kept")
            continue
        r["latency_source"] = LATENCY_REBUILT
        models[arm] = model
    return models
