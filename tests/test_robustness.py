"""Robustness against bad files and shared folders (issue 38, items 2, 4, 6 and part of 9).

* data and caches live in a private per-user folder; a folder another user owns or may write to is refused;
* files are written atomically through an unpredictable temporary that never follows a planted symlink and is
  removed on any failure (a full disk included);
* the cost-table cache validates what it reads and measures again (with a warning naming the file) otherwise;
* ``load_pruned`` names the file on every load error and leaves the model exactly as it was;
* surgery keeps a second module sharing a pruned weight in sync, and keeps ``channels_last`` tensors so.

Real small models, no downloads.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from lightning_prune import DependencyGraph  # noqa: E402
from lightning_prune.checkpoint import CHECKPOINT_KEY, load_pruned  # noqa: E402
from lightning_prune.pruning.cost_table import CostTable, build_cost_table  # noqa: E402
from lightning_prune.utils import files  # noqa: E402
from lightning_prune.utils.files import InsecureDirectoryError, atomic_write, private_dir, user_cache_dir  # noqa: E402


def _mode(path: str | os.PathLike) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class Net(nn.Module):
    """conv-bn-relu x2 and a 1x1 head: two prunable groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 2, 1)
        self.example_input_array = torch.randn(1, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


# -- private folders -------------------------------------------------------------------------------------------------
def test_user_cache_dir_is_private_and_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = user_cache_dir("data", "set")
    assert folder == tmp_path / "xdg" / "lightning_prune" / "data" / "set"
    for level in (folder, folder.parent, folder.parent.parent):
        assert _mode(level) == 0o700
    assert user_cache_dir("data", "set") == folder  # again: accepted as it is
    with pytest.raises(ValueError, match="one plain path component"):
        user_cache_dir("../escape")


def test_a_folder_that_is_not_private_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(InsecureDirectoryError, match=f"refusing the folder {shared}: group or others may write") as err:
        private_dir(shared)
    assert "\n" not in str(err.value)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(theirs).st_uid + 1)
    with pytest.raises(InsecureDirectoryError, match=f"refusing the folder {theirs}: it belongs to user id"):
        private_dir(theirs)


def test_the_synthetic_data_root_is_in_the_private_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ultralytics")
    from lightning_prune.integrations.ultralytics import YOLODataModule
    from lightning_prune.integrations.ultralytics.data import _default_synthetic_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = _default_synthetic_root(64, 0, 2, 1, 1)
    assert str(root).startswith(str(tmp_path / "xdg" / "lightning_prune")) and _mode(root) == 0o700
    data = YOLODataModule(synthetic=True, imgsz=64, synthetic_num_train=2, synthetic_num_val=1, synthetic_num_test=1)
    assert data.data_yaml == root.resolve() / "data.yaml"
    # another local user planted the folder first (or made it writable to all): refused, one line naming it
    os.chmod(root, 0o777)
    with pytest.raises(InsecureDirectoryError, match=f"refusing the folder {root}"):
        data.prepare_data()
    with pytest.raises(InsecureDirectoryError, match=f"refusing the folder {root}"):
        YOLODataModule(synthetic=True, imgsz=64, synthetic_num_train=2, synthetic_num_val=1, synthetic_num_test=1)
    assert not (root / "data.yaml").exists()


def test_an_unusable_cache_home_falls_back_to_a_fresh_private_temp_folder(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="no per-user cache folder"):
        folder = user_cache_dir("data")
    assert folder.parent == files._fallback_root() and _mode(folder) == 0o700 and _mode(folder.parent) == 0o700


# -- atomic writes ---------------------------------------------------------------------------------------------------
def test_atomic_write_never_follows_a_planted_symlink_and_cleans_up(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "out.json"
    (tmp_path / ".out.json.tmp").symlink_to(victim)  # the old predictable name
    atomic_write(target, "{}")
    assert victim.read_text() == "precious" and target.read_text() == "{}"
    assert _mode(target) == 0o666 & ~_umask()

    def half_then_full_disk(file: Any) -> None:
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device") as err:
        atomic_write(target, half_then_full_disk)
    assert err.value.errno == errno.ENOSPC and "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == before and target.read_text() == "{}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def yolo() -> nn.Module:
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel("yolov8n.yaml", nc=3, verbose=False)


def test_save_yolo_temporary_is_unpredictable_and_a_full_disk_leaves_nothing(
        yolo: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_prune.integrations.ultralytics import save_yolo

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "runs"
    out.mkdir()
    (out / ".pruned.pt.tmp").symlink_to(victim)
    path = save_yolo(yolo, out / "pruned.pt", imgsz=64)
    assert victim.read_text() == "precious" and path.stat().st_size > 0
    good = path.read_bytes()
    listing = sorted(os.listdir(out))

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device") as err:
        save_yolo(yolo, path, imgsz=64)
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(out)) == listing and path.read_bytes() == good  # no temporary; the old file intact


def test_pruning_report_is_written_atomically(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from lightning_prune.integrations.ultralytics.trainer import UltralyticsPruning

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "pruning.json").symlink_to(victim)
    pruning = UltralyticsPruning(None, verbose=False)
    pruning.save_dir = tmp_path
    pruning._write_report()
    assert victim.read_text() == "precious"
    assert not (tmp_path / "pruning.json").is_symlink() and json.loads((tmp_path / "pruning.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["pruning.json", "victim.txt"]


# -- the cost-table cache ----------------------------------------------------------------------------------------------
@pytest.fixture()
def cached(tmp_path: Path) -> tuple[DependencyGraph, Path, CostTable]:
    graph = DependencyGraph(Net(), torch.randn(1, 3, 16, 16))
    table = build_cost_table(graph, "eager", cache_dir=tmp_path / "tables", repeats=1, points=4)
    return graph, tmp_path / "tables" / table.filename(), table


def test_cost_table_cache_is_private(cached: tuple[DependencyGraph, Path, CostTable]) -> None:
    _, path, _ = cached
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert os.listdir(path.parent) == [path.name]


def _corrupt(data: dict[str, Any], how: str) -> None:
    layer = data["layers"][sorted(data["layers"])[0]]
    if how == "truncated":
        layer["out_ms"] = layer["out_ms"][:-1]
    elif how == "nan":
        layer["out_ms"] = [math.nan] * len(layer["out_ms"])
    elif how == "negative":
        layer["full_ms"] = -1.0
    elif how == "version":
        data["version"] = 1
    elif how == "missing_layer":
        data["layers"].pop(sorted(data["layers"])[0])
    elif how == "other_model":
        layer["spec"]["out_channels"] += 1
    elif how == "widths":
        layer["out_widths"] = [w + 1 for w in layer["out_widths"]]
    elif how == "sizes":
        data["sizes"] = {name: size + 1 for name, size in data["sizes"].items()}


@pytest.mark.parametrize("how", ["truncated", "nan", "negative", "version", "missing_layer", "other_model", "widths",
                                 "sizes"])
def test_a_bad_cost_table_cache_is_measured_again_with_a_warning(cached: tuple[DependencyGraph, Path, CostTable],
                                                                 how: str) -> None:
    graph, path, table = cached
    data = json.loads(path.read_text())
    _corrupt(data, how)
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=f"{path}: .*measuring the cost table again"):
        rebuilt = build_cost_table(graph, "eager", cache_dir=path.parent, repeats=1, points=4)
    assert rebuilt.measured == len(table.layers) and rebuilt.reused == 0
    assert CostTable.load(path).to_dict()["layers"].keys() == table.to_dict()["layers"].keys()
    assert all(math.isfinite(v) for c in rebuilt.layers.values() for v in (c.full_ms, *c.out_ms, *c.in_ms))
    assert rebuilt.removed_ms({name: 1 for name in rebuilt.sizes}) >= 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_cost_table(graph, "eager", cache_dir=path.parent, repeats=1, points=4)  # the good file, quietly
    assert again.reused == len(table.layers) and again.measured == 0


def test_a_shared_cost_table_folder_is_refused(tmp_path: Path) -> None:
    graph = DependencyGraph(Net(), torch.randn(1, 3, 16, 16))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(InsecureDirectoryError, match=f"refusing the folder {shared}"):
        build_cost_table(graph, "eager", cache_dir=shared, repeats=1, points=4)


def test_cost_table_from_dict_refuses_bad_values(cached: tuple[DependencyGraph, Path, CostTable]) -> None:
    _, _, table = cached
    for how in ("truncated", "nan", "negative", "version"):
        data = table.to_dict()
        data = json.loads(json.dumps(data))
        _corrupt(data, how)
        with pytest.raises(ValueError, match="not a cost table"):
            CostTable.from_dict(data)


# -- load_pruned -------------------------------------------------------------------------------------------------------
def _checkpoint(model: Net, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"state_dict": model.state_dict(), CHECKPOINT_KEY: {"history": history}}


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "list", "directory", "missing"])
def test_load_pruned_names_a_bad_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(_checkpoint(Net(), []), path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "text":
        path.write_text("epoch: 3\n")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "directory":
        path.mkdir()
    model = Net()
    before = _state(model)
    error = {"directory": IsADirectoryError, "missing": FileNotFoundError}.get(kind, ValueError)
    with pytest.raises(error, match=f"{path}: ") as err:
        load_pruned(model, path)
    assert "\n" not in str(err.value)
    if error is ValueError:
        assert str(err.value).startswith(f"{path}: ") and "expected a checkpoint" in str(err.value)
    assert _same(model, before)


def test_load_pruned_of_an_older_checkpoint_leaves_a_further_pruned_model_unchanged(tmp_path: Path) -> None:
    source = Net()
    graph = DependencyGraph(source, source.example_input_array)
    first = {"plan": {"a.0": [0, 1]}}
    graph.prune(first["plan"])
    path = tmp_path / "older.ckpt"
    torch.save(_checkpoint(source, [first]), path)
    second = {"plan": {"a.0": [0, 1, 2], "b.0": [5]}}
    graph.prune(second["plan"])
    before = _state(source)
    widths = [(m.in_channels, m.out_channels) for m in source.modules() if isinstance(m, nn.Conv2d)]
    with pytest.raises(ValueError, match=f"^{path}: ") as err:
        load_pruned(source, path)
    assert "\n" not in str(err.value) and "unchanged" in str(err.value)
    assert _same(source, before)
    assert [(m.in_channels, m.out_channels) for m in source.modules() if isinstance(m, nn.Conv2d)] == widths
    # the same checkpoint loads into a fresh model
    fresh = load_pruned(Net(), path)
    assert fresh.a[0].out_channels == 6 and _same(fresh, torch.load(path, weights_only=True)["state_dict"])


def test_load_pruned_of_weights_that_do_not_fit_leaves_the_model_unchanged(tmp_path: Path) -> None:
    other = Net()
    other.head = nn.Conv2d(8, 3, 1)  # another head: the other weights would load, then the head fails
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict()}, path)
    model = Net()
    before = _state(model)
    with pytest.raises(ValueError, match=f"^{path}: its weights do not fit Net: .*size mismatch for head.weight"):
        load_pruned(model, path)
    assert _same(model, before)


# -- surgery -------------------------------------------------------------------------------------------------------
class Tied(nn.Module):
    """``c`` shares ``b``'s weight and bias (called after ``b``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.c.weight, self.c.bias = self.b.weight, self.b.bias
        self.d = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(self.c(self.b(self.a(x))))


def test_a_module_sharing_a_pruned_weight_gets_its_sizes_fixed() -> None:
    net = Tied()
    graph = DependencyGraph(net, torch.randn(1, 3, 16, 16))
    group = graph.prunable_groups[0].name
    graph.prune({group: [0, 1]})
    for name in "bc":
        conv = getattr(net, name)
        assert (conv.in_channels, conv.out_channels) == (6, 6) and conv.weight.shape[:2] == (6, 6)
    assert net.c.weight is net.b.weight
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 4, 16, 16)


def test_channels_last_survives_a_prune() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(),
                        nn.Conv2d(16, 4, 3)).to(memory_format=torch.channels_last)
    net[0].weight.grad = torch.randn_like(net[0].weight)  # channels_last too
    x = torch.randn(1, 3, 16, 16).to(memory_format=torch.channels_last)
    graph = DependencyGraph(net, x)
    graph.prune({"0": [0, 1], "3": [3]})
    for conv in (net[0], net[3], net[5]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last), conv
        assert not conv.weight.is_contiguous()
    assert net[0].weight.grad.is_contiguous(memory_format=torch.channels_last)
    assert net[0].weight.shape == (6, 3, 3, 3) and net[3].weight.shape == (15, 6, 3, 3)
