"""PruningSession: what the Lightning callback and ultralytics' front-end do alike around the pruner, without either."""

from __future__ import annotations

import pytest
import torch
from toy_modules import IMAGE_SIZE, ToyNet

from lightning_prune.pruning import PruningConfig
from lightning_prune.pruning.session import PruningSession, front_end_settings
from lightning_prune.utils.model import shapes_fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLE = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)


def make_session(**settings: object) -> PruningSession:
    config = PruningConfig(**{"schedule": [1, 3], "target": 0.4, "strategy": "uniform", **settings})
    return PruningSession(config, monitor="val/acc")


def test_a_run_from_start_to_release() -> None:
    torch.manual_seed(0)
    session, net = make_session(), ToyNet(16)
    assert session.pending(0) == [1, 3] and not session.due(1)  # no pruner yet
    logged: list[str] = []
    session.start(net, EXAMPLE, 0, show_progress=False, log=logged.append)
    assert session.pruner is not None and session.example is EXAMPLE and logged
    assert not session.due(0) and session.due(1)
    result = session.step(1)
    assert session.results == [result] and session.history == session.pruner.history
    assert session.pending(2) == [3] and session.summary(result) == result.summary("val/acc")
    session.release()
    assert session.pruner is None and session.pending() == [3] and len(session.history) == len(result.plans)
    assert session.baseline["flops"] > 0
    session.reset()
    assert session.history == [] and session.baseline == {} and session.results == []


def test_state_round_trip_and_resume_onto_a_new_pruner() -> None:
    torch.manual_seed(0)
    session, net = make_session(), ToyNet(16)
    session.start(net, EXAMPLE, 0, show_progress=False)
    session.step(1)
    state = session.state_dict()
    assert state["example_input_shape"] == list(EXAMPLE.shape) and state["settings"]["schedule"] == [1, 3]
    again = make_session()
    again.load_state_dict(state)
    assert again.pending(0) == [3] and again.saved_settings == state["settings"]
    again.begin("Front", pytest.fail)  # same settings: no warning
    again.start(net, EXAMPLE, 2, show_progress=False)  # the model already has the recorded architecture
    assert again.history == session.history and again.baseline == session.baseline


def test_changed_settings_are_named_once() -> None:
    session = make_session()
    session.load_state_dict({"history": [{"epoch": 1, "step": 1, "plan": {}}], "baseline": {"flops": 1.0},
                             "settings": {**make_session().settings(), "target": 0.3}})
    warnings: list[str] = []
    session.begin("Front", warnings.append)
    assert warnings == ["Front resumed with changed settings (target 0.3 -> 0.4): the 1 pruning step already taken "
                        "and the original model's baseline are kept, and the scheduled epochs left prune toward "
                        "the new settings"]
    latency = make_session(target_metric="latency")
    latency.load_state_dict({"history": [{"epoch": 1, "step": 1, "plan": {}}], "baseline": {"flops": 1.0}})
    with pytest.raises(ValueError, match="cannot resume with target_metric='latency'"):
        latency.begin("Front", warnings.append)


def test_check_monitor() -> None:
    session = make_session()
    assert session.check_monitor({"val/acc": 1.0}, "never logged", "logs")
    assert not session.check_monitor({"val/loss": 1.0}, "never logged", "logs")  # uniform does not need it
    with pytest.raises(ValueError, match=r"^monitor 'val/acc' is never logged \(it logs: val/loss\)$"):
        session.check_monitor({"val/loss": 1.0}, "never logged", "logs", required=True)
    sensitivity = PruningSession(PruningConfig(strategy="sensitivity"), monitor="val/acc")
    with pytest.raises(ValueError, match=r"\(it produces: nothing\)"):
        sensitivity.check_monitor({}, "not produced", "produces")


def test_no_config_prunes_nothing() -> None:
    session = PruningSession(None)
    assert session.pending(0) == [] and not session.due(0)
    assert session.pruner_state() == {"history": [], "baseline": {}}


def test_front_end_settings_and_shapes_fit() -> None:
    assert front_end_settings({"self": None, "target": 0.3, "monitor": "m", "limits": None}) == {
        "target": 0.3, "limits": None}
    small, wide = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 8, 1)
    assert shapes_fit(small, {"weight": small.weight, "other": 1}) and not shapes_fit(wide, small.state_dict())
    assert not shapes_fit(small, {"weight": small.weight}, same_keys=True)
    assert shapes_fit(small, small.state_dict(), same_keys=True)
