"""The prune-vs-small benchmark's bookkeeping (issue 35): the plateau and regime checks, the verdict rule, the
report's table, and that the committed finished runs stay reusable (their digests still match the protocol)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

from benchmarks.prune_vs_small import report as rep  # noqa: E402
from benchmarks.prune_vs_small.arms import ARMS, arm_digest  # noqa: E402
from benchmarks.prune_vs_small.config import PROTOCOL, RESULTS  # noqa: E402
from benchmarks.prune_vs_small.runs import Record  # noqa: E402


def _run(test: float, history: list[float], cpu: float = 10.0) -> dict:
    return {"test": {"map50_95": test}, "val_history": history, "cost": {"cpu_minutes": cpu},
            "git": {"revision": "0" * 40, "clean": True}}


FLAT = [0.1] * 5 + [0.5] * 20
RISING = [0.01 * i for i in range(25)]


def test_plateau_reads_the_last_window_against_the_best_before() -> None:
    assert rep.plateau(FLAT)["passed"]
    assert rep.plateau(RISING)["gain"] == pytest.approx(0.10)
    assert not rep.plateau(RISING)["passed"]
    assert not rep.plateau([0.5] * PROTOCOL.plateau_window)["passed"]  # too short to tell


def test_regime_needs_the_gap_separated_spreads_plateaus_and_three_seeds() -> None:
    runs = {"base": {s: _run(0.65 + 0.01 * s, FLAT) for s in range(3)},
            "small": {s: _run(0.50 + 0.01 * s, FLAT) for s in range(3)}}
    assert rep.regime(runs)["passed"]
    assert not rep.regime({"base": runs["base"], "small": {0: runs["small"][0]}})["passed"]  # one seed
    close = {"base": runs["base"], "small": {s: _run(0.64 + 0.01 * s, FLAT) for s in range(3)}}
    assert not rep.regime(close)["passed"]  # 1 point, spreads overlap
    rising = {"base": runs["base"], "small": {**runs["small"], 2: _run(0.52, RISING)}}
    assert not rep.regime(rising)["passed"]


def test_compare_counts_a_win_only_outside_the_spreads_at_equal_latency() -> None:
    costs = {arm: {s: {"onnxruntime_ms": 5.0, "eager_ms": 8.0} for s in range(3)} for arm in ("a", "b", "slow")}
    costs["slow"] = {s: {"onnxruntime_ms": 6.0, "eager_ms": 9.0} for s in range(3)}
    runs = {"a": {s: _run(0.60 + 0.005 * s, FLAT) for s in range(3)},
            "b": {s: _run(0.55 + 0.005 * s, FLAT) for s in range(3)},
            "slow": {s: _run(0.70 + 0.005 * s, FLAT) for s in range(3)}}
    win = rep.compare(runs, costs, "a", "b")
    assert win["verdict"] == "a wins" and win["paired"] == pytest.approx({0: 0.05, 1: 0.05, 2: 0.05})
    assert rep.compare(runs, costs, "b", "a")["verdict"] == "a wins"
    assert "slower" in rep.compare(runs, costs, "slow", "b")["verdict"]
    tie = {"a": runs["a"], "b": {s: _run(0.60 + 0.02 * s, FLAT) for s in range(3)}}
    assert rep.compare(tie, costs, "a", "b")["verdict"].startswith("tie")
    one = {"a": runs["a"], "b": {0: runs["b"][0]}}
    assert rep.compare(one, costs, "a", "b")["verdict"] == "provisional, 1 seed(s) of 3: a wins"


def test_render_states_the_regime_and_the_costs() -> None:
    row = {"arm": "ours-sens-distill", "map": {"mean": 0.6, "min": 0.59, "max": 0.61, "n": 3},
           "per_seed": {0: 0.6}, "onnxruntime_ms": 5.0, "eager_ms": 8.0, "flops": 1e9, "params": 1e6, "epochs": 25,
           "epochs_total": 125, "cpu_minutes_after_base": 30.0, "cpu_minutes_total": 94.0, "revisions": ["abc1234"],
           "last_gain": 0.012}
    payload = {"command": "python -m benchmarks.prune_vs_small report", "date": "2026-12-05",
               "git": {"revision": "abc1234" + "0" * 33, "clean": True},
               "regime": {"plateau": {"base seed 0": {"gain": 0.001, "passed": True}}, "passed": False},
               "rows": [row], "comparisons": [], "plots": []}
    text = rep.render(payload)
    assert "NOT passed" in text and "| 25 | 125 | 30 | 94 | +1.20 |" in text
    assert "## Protocol" in text and "multiples of 8" in text


def test_a_revised_base_changes_the_digests_of_the_arms_that_start_from_it() -> None:
    import dataclasses

    from benchmarks.prune_vs_small import arms

    before = {name: arm_digest(arm, 0) for name, arm in ARMS.items()}
    original = arms.ARMS["base"]
    try:
        arms.ARMS["base"] = dataclasses.replace(original, train=dataclasses.replace(original.train, epochs=7))
        after = {name: arm_digest(arm, 0) for name, arm in arms.ARMS.items()}
    finally:
        arms.ARMS["base"] = original
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"base"} | {name for name, arm in ARMS.items() if "base" in arm.needs}
    assert "small" not in changed
    original = arms.ARMS["small"]
    try:  # the pruning arms only take their target from the small model's architecture
        arms.ARMS["small"] = dataclasses.replace(original, train=dataclasses.replace(original.train, epochs=7))
        after = {name: arm_digest(arm, 0) for name, arm in arms.ARMS.items()}
    finally:
        arms.ARMS["small"] = original
    assert {name for name in before if before[name] != after[name]} == {"small"}


@pytest.mark.parametrize("arm", ["base", "small"])
def test_committed_runs_stay_reusable(arm: str) -> None:
    """A change to the protocol that would silently orphan the committed hours of training fails here first."""
    folders = sorted((RESULTS / arm).glob("seed*"))
    if not folders:
        pytest.skip(f"no committed {arm} runs")
    for folder in folders:
        record = Record.load(folder)
        assert record is not None, folder
        seed = int(folder.name[4:])
        data = json.loads((folder / "run.json").read_text())
        expected = arm_digest(ARMS[arm], seed)
        if data["train"]["epochs"] != ARMS[arm].train.epochs:
            continue  # a superseded length (benchmarks.prune_vs_small.config.Lengths), replaced when its run lands
        assert data["digest"] == expected, f"{folder}: the protocol changed under a committed run"


def test_report_command_is_wired(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rep, "collect", lambda root=RESULTS: {})
    assert rep.report(argparse.Namespace(out_dir=tmp_path)) == 0
    assert "Regime check" in (tmp_path / "report.md").read_text()


def test_train_runs_jobs_in_parallel_after_their_needs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``train --jobs 2``: base and small of a seed run side by side, a pruning arm only after its base finished
    (not the small model: the targets come from its architecture), and an arm whose need failed is skipped (the
    exit code says so)."""
    import threading
    import time

    from benchmarks.prune_vs_small import __main__ as cli
    from benchmarks.prune_vs_small import runs

    monkeypatch.setattr(cli, "run_dir", lambda arm, seed, root=tmp_path: runs.run_dir(arm, seed, tmp_path))
    active, peak, order, lock = set(), [0], [], threading.Lock()

    def fake_launch(arm: str, seed: int, workdir: Path, threads: int, log: Path, started=None) -> int:
        with lock:
            active.add((arm, seed))
            peak[0] = max(peak[0], len(active))
            order.append(("start", arm, seed))
        time.sleep(0.2)
        ok = not (arm == "base" and seed == 1)
        if ok:
            folder = runs.run_dir(arm, seed, tmp_path)
            folder.mkdir(parents=True)
            (folder / "weights.pt").write_bytes(b"w")
            digest = arm_digest(ARMS[arm], seed)
            record = {"digest": digest, "git": {"clean": True, "revision": "f" * 40}, "test": {}}
            (folder / "run.json").write_text(json.dumps(record))
        with lock:
            active.discard((arm, seed))
            order.append(("end", arm, seed))
        return 0 if ok else 3

    monkeypatch.setattr(cli, "launch", fake_launch)
    rc = cli.main(["train", "--arms", "base", "small", "ours-sens", "--seeds", "0", "1", "--jobs", "2",
                   "--workdir", str(tmp_path / "w")])
    assert rc == 1  # base seed 1 failed, so ours-sens seed 1 was skipped
    assert peak[0] == 2
    starts = [(a, s) for kind, a, s in order if kind == "start"]
    assert ("ours-sens", 1) not in starts
    first_prune = order.index(("start", "ours-sens", 0))
    assert order.index(("end", "base", 0)) < first_prune
    assert cli.main(["train", "--arms", "base", "--seeds", "0", "--workdir", str(tmp_path / "w")]) == 0  # reused


def test_a_pruning_arms_last_gain_reads_only_its_final_architecture() -> None:
    history = [0.6] * 8 + [0.2 + 0.02 * i for i in range(17)]  # a high before the last prune (epoch 8), then rising
    assert rep.plateau(history)["gain"] < 0  # against the pre-prune best it looks finished
    assert rep.since_last_prune("ours-sens", history) == history[8:]
    assert rep._last_gain("ours-sens", {0: {"val_history": history}}) == pytest.approx(0.20)
    assert rep.since_last_prune("small", history) == history


def test_the_targets_are_measured_once_for_every_arm_and_seed(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    import dataclasses

    from benchmarks.prune_vs_small import arms

    calls = []

    def fake(protocol: object) -> dict[str, float]:
        calls.append(protocol)
        return {"flops_keep": 0.34, "latency_keep": 0.40 + 0.01 * len(calls)}

    monkeypatch.setattr(arms, "measure_targets", fake)
    first = arms.targets(PROTOCOL, tmp_path)
    assert arms.targets(PROTOCOL, tmp_path) == first == {"flops_keep": 0.34, "latency_keep": pytest.approx(0.41)}
    assert len(calls) == 1
    stored = json.loads((tmp_path / "targets.json").read_text())
    assert stored["key"]["small_width"] == PROTOCOL.small_width and "load_average" in stored
    other = dataclasses.replace(PROTOCOL, small_width=0.0625)  # another small model is measured again
    assert arms.targets(other, tmp_path)["latency_keep"] == pytest.approx(0.42)
    assert len(calls) == 2


def test_measured_targets_follow_the_architectures() -> None:
    from benchmarks.prune_vs_small.arms import measure_targets

    quick = __import__("dataclasses").replace(PROTOCOL, deploy_imgsz=64)
    got = measure_targets(quick)
    assert 0.2 < got["flops_keep"] < 0.5 and 0.0 < got["latency_keep"] < 1.5


def test_status_tells_reusable_superseded_and_missing_runs(tmp_path: Path) -> None:
    for arm, seed, digest in (("base", 0, arm_digest(ARMS["base"], 0)), ("small", 0, "old")):
        folder = tmp_path / arm / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "weights.pt").write_bytes(b"w")
        record = {**_run(0.6, FLAT, cpu=42.0), "digest": digest, "cost": {"epochs": 150, "cpu_minutes": 42.0}}
        (folder / "run.json").write_text(json.dumps(record))
    text = rep.status(tmp_path, seeds=(0,))
    assert "| base | 0 | reusable | 150 | 0.600 | +0.00 | 42 | 0000000 |" in text
    assert "| small | 0 | superseded (another configuration) | 150 | 0.600 |" in text
    assert "| tp | 0 | missing |" in text and "base seed 0 +0.00" in text


def test_an_arm_that_measures_latency_runs_alone_until_its_last_measurement(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    """While the latency arm measures (before its marker) nothing starts and the run beside it is stopped; after
    its marker that run continues and others start beside it; two latency arms never measure at once; nothing is
    left stopped."""
    import functools
    import signal
    import threading
    import time

    from benchmarks.prune_vs_small import __main__ as cli
    from benchmarks.prune_vs_small import runs

    assert ARMS["ours-latency-distill"].alone and not ARMS["ours-sens-distill"].alone
    monkeypatch.setattr(cli, "finished", lambda name, seed: name == "base" or None)
    monkeypatch.setattr(cli, "POLL_S", 0.02)
    workdir = tmp_path / "w"
    events, lock, keys, go = [], threading.Lock(), {}, {}

    def fake_signal(pid: int, sig: int) -> None:  # a fake child works only while not stopped
        with lock:
            events.append(("signal", keys[pid], sig))
            (go[pid].clear if sig == signal.SIGSTOP else go[pid].set)()

    def work(pid: int, seconds: float, then: tuple[str, tuple[str, int], int]) -> None:
        for _ in range(int(seconds / 0.01)):
            go[pid].wait()
            time.sleep(0.01)
        while True:  # what it does next happens only while it runs, as with a real stop
            go[pid].wait()
            with lock:
                if go[pid].is_set():
                    events.append(then)
                    return

    def fake_launch(arm: str, seed: int, workdir: Path, threads: int, log: Path, started=None) -> int:
        with lock:
            pid = 1000 + len(keys)
            keys[pid], go[pid] = (arm, seed), threading.Event()
            go[pid].set()
            events.append(("start", (arm, seed), 0))
        started(pid)
        if arm == "ours-latency-distill":
            runs.measured_marker(workdir, arm, seed).parent.mkdir(parents=True, exist_ok=True)
            work(pid, 0.3, ("measured", (arm, seed), 0))  # its pruning steps, measuring
            runs.measured_marker(workdir, arm, seed).touch()
        work(pid, 0.3, ("end", (arm, seed), 0))
        return 0

    monkeypatch.setattr(cli, "launch", fake_launch)
    monkeypatch.setattr(cli, "Quiet", functools.partial(runs.Quiet, signal_group=fake_signal))
    rc = cli.main(["train", "--arms", "ours-sens-distill", "ours-latency-distill", "tp", "--seeds", "0", "1",
                   "--jobs", "2", "--workdir", str(workdir)])
    assert rc == 0
    measuring, stopped, stops = None, set(), 0
    for kind, key, sig in events:
        if kind == "start":
            assert measuring is None, f"{key} started while {measuring} measured"
            if key[0] == "ours-latency-distill":
                measuring = key
        elif kind == "measured":
            assert measuring == key
            measuring = None
        elif kind == "end":
            assert key not in stopped, f"{key} ended while stopped"
        elif sig == signal.SIGSTOP:
            assert measuring is not None and key != measuring
            stopped.add(key)
            stops += 1
        else:
            assert measuring is None and key in stopped
            stopped.discard(key)
    assert len([e for e in events if e[0] == "start"]) == 6 and not stopped
    assert stops >= 1  # ours-sens-distill seed 0 ran beside the first latency arm and was stopped while it measured
    beside = [i for i, (kind, key, _) in enumerate(events) if kind == "start" and key[0] == "tp"]
    first_measured = next(i for i, e in enumerate(events) if e[0] == "measured")
    first_latency_end = next(i for i, e in enumerate(events) if e[0] == "end" and e[1][0] == "ours-latency-distill")
    assert beside[0] < first_latency_end and beside[0] > first_measured  # tp started beside it once it had measured


def test_a_stop_request_starts_nothing_more_and_waits_for_the_running_runs(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    """What SIGTERM/SIGINT do, without sending one to the test process: the request set while the first run trains
    (its handler called as the signal would) leaves the other runs unstarted, the first finishes, exit 1."""
    import signal
    import time

    from benchmarks.prune_vs_small import __main__ as cli

    monkeypatch.setattr(cli, "finished", lambda name, seed: name == "base" or None)
    requests, started, ended, stop_request = [], [], [], cli._StopRequest

    class Recorded(stop_request):
        def __enter__(self) -> stop_request:
            requests.append(self)
            return self  # no process-wide handlers in a test

    def fake_launch(arm: str, seed: int, workdir: Path, threads: int, log: Path, **_: object) -> int:
        started.append((arm, seed))
        requests[0].requested = True
        time.sleep(0.2)
        ended.append((arm, seed))
        return 0

    monkeypatch.setattr(cli, "launch", fake_launch)
    monkeypatch.setattr(cli, "_StopRequest", Recorded)
    rc = cli.main(["train", "--arms", "ours-sens", "tp", "--seeds", "0", "1", "--jobs", "1",
                   "--workdir", str(tmp_path / "w")])
    assert rc == 1  # three runs never started
    assert started == ended == [("ours-sens", 0)]

    before = signal.getsignal(signal.SIGTERM)
    with stop_request() as stop:  # the handler itself, called as the signal would call it
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGTERM, None)
        assert stop.requested and signal.getsignal(signal.SIGTERM) == before  # a second signal is not caught
    assert signal.getsignal(signal.SIGTERM) == before


def test_quiet_continues_what_it_stopped_when_the_command_ends(tmp_path: Path) -> None:
    import signal

    from benchmarks.prune_vs_small.runs import Quiet

    sent = []
    quiet = Quiet(tmp_path, alone=lambda name: ARMS[name].alone, signal_group=lambda pid, sig: sent.append((pid, sig)))
    quiet.started((0, "ours-latency-distill"))(11)
    quiet.started((0, "small-distill"))(12)
    running = [(0, "ours-latency-distill"), (0, "small-distill")]
    assert quiet.update(running)
    assert sent == [(12, signal.SIGSTOP)]
    quiet.release()
    assert sent[-1] == (12, signal.SIGCONT) and not quiet.stopped


def test_a_stopped_plain_training_goes_on_only_with_its_own_configuration(tmp_path: Path) -> None:
    from benchmarks.prune_vs_small.train import resumable

    (tmp_path / "weights").mkdir()
    assert resumable(tmp_path, "abc", 10) is None  # nothing saved yet
    progress = {"digest": "abc", "epoch": 4, "segments": [], "cpu_minutes": 3.0, "wall_minutes": 3.1}
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    assert resumable(tmp_path, "abc", 10) is None  # no last.pt beside it
    (tmp_path / "weights" / "last.pt").write_bytes(b"x")
    assert resumable(tmp_path, "abc", 10) == progress
    assert resumable(tmp_path, "other", 10) is None  # another configuration starts over
    (tmp_path / "progress.json").write_text(json.dumps({**progress, "epoch": 9}))
    assert resumable(tmp_path, "abc", 10) is None  # finished: nothing to go on with
    (tmp_path / "progress.json").write_text("{broken")
    assert resumable(tmp_path, "abc", 10) is None
