"""Render what TensorBoard shows for a pruning run into one PNG, from the run's event files.

    python docs/make_tensorboard_png.py LOG_DIR docs/tensorboard.png

LOG_DIR is a TensorBoardLogger version folder (the one holding ``events.out.tfevents.*``).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(events: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    if tag not in events.Tags()["scalars"]:
        return [], []
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def main(log_dir: str, out: str) -> None:
    events = EventAccumulator(log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    figure, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (cost, latency), (metric, sensitivity) = axes

    for tag, label in (("pruning/flops_ratio", "FLOPs"), ("pruning/params_ratio", "parameters")):
        steps, values = scalars(events, tag)
        cost.plot(steps, values, marker="o", label=label)
    cost.set_title("pruning/flops_ratio, pruning/params_ratio (vs unpruned)")
    cost.set_xlabel("global step")
    cost.set_ylim(0, 1.05)
    cost.legend()

    steps, values = scalars(events, "latency/eager_ms")
    latency.plot(steps, values, marker="o", color="tab:red")
    latency.set_title("latency/eager_ms (LatencyProfiler, batch 1)")
    latency.set_xlabel("global step")

    steps, values = scalars(events, "val/mAP50-95")
    metric.plot(steps, values, marker=".", label="val/mAP50-95")
    for tag, style in (("pruning/probe_metric_before", "^"), ("pruning/probe_metric_after", "v")):
        s, v = scalars(events, tag)
        metric.plot(s, v, style, markersize=9, label=tag)
    metric.set_title("validation mAP and the monitored metric around each prune")
    metric.set_xlabel("global step")
    metric.legend(fontsize=8)

    images = events.Tags()["images"]
    if "pruning/sensitivity" in images:
        encoded = events.Images("pruning/sensitivity")[0].encoded_image_string
        sensitivity.imshow(plt.imread(io.BytesIO(encoded), format="png"))
        sensitivity.set_title("pruning/sensitivity (step 1)")
    sensitivity.axis("off")

    figure.suptitle(f"TensorBoard of a pruning run ({Path(log_dir).name})")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
