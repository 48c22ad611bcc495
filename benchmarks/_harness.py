"""The child-process harness the per-(model, tool) benchmarks share (``graph_build.py``, ``prunability.py``).

A parent runs every (model, tool) pair in its own child process under a wall-time and a memory limit
(:func:`run_child`), so a hang or a runaway allocation becomes that pair's recorded failure instead of stopping the
run. The child writes what it measured to a JSON file after every phase (:class:`Recorder`), so a killed child still
leaves the phase it died in. Peak memory is measured as peak RSS (:class:`PeakRSS`): torch's tensor allocations are
invisible to ``tracemalloc``.

Also here: the model zoo (:data:`ZOO`, :func:`build_model`), other processes' CPU use while a child ran (the machines
these run on are shared), and the bits of a results header (command line, git revision). ``cpu_name`` and
``dist_version`` come from ``_common`` (shared with the other scripts) and are re-exported.

Run as ``python benchmarks/<script>.py``: this folder is then on the import path.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from _common import cpu_name, dist_version

__all__ = [
    "REPO",
    "MB",
    "ZOO",
    "build_model",
    "default_side",
    "PeakRSS",
    "peak_rss",
    "Recorder",
    "one_line",
    "alarm",
    "limit_memory",
    "busy_cpu_s",
    "own_cpu_s",
    "tree_rss",
    "wait_idle",
    "stderr_cause",
    "run_child",
    "git_rev",
    "command_line",
    "mb",
    "cpu_name",
    "dist_version",
]

REPO = Path(__file__).resolve().parents[1]
MB = 2**20

# name -> family; families are built in ``build_model``. No weights are downloaded: torchvision models are built with
# ``weights=None``, ultralytics ones from their YAML, YOLOv7-tiny from ``lightning_prune.models``.
ZOO: dict[str, str] = {
    "resnet18": "torchvision",
    "resnet50": "torchvision",
    "mobilenet_v2": "torchvision",
    "densenet121": "torchvision",
    "efficientnet_b0": "torchvision",
    "convnext_tiny": "torchvision",
    "yolov5nu": "ultralytics",
    "yolov8n": "ultralytics",
    "yolo11n": "ultralytics",
    "yolov8n-seg": "ultralytics",
    "yolov8n-pose": "ultralytics",
    "yolo11n-seg": "ultralytics",
    "yolo11n-pose": "ultralytics",
    "yolo11n-obb": "ultralytics",
    "yolov10n": "ultralytics",
    "yolov7-tiny": "lightning_prune yaml",
}


def build_model(name: str):  # noqa: ANN201
    """A zoo model with random weights (train mode, as its constructor leaves it)."""
    family = ZOO[name]
    if family == "torchvision":
        import torchvision

        return getattr(torchvision.models, name)(weights=None)
    if family == "ultralytics":
        from ultralytics import YOLO

        return YOLO(f"{name}.yaml").model
    from ultralytics.nn.tasks import DetectionModel

    import lightning_prune.models

    return DetectionModel(str(lightning_prune.models.model_yaml(name)), nc=80, verbose=False)


def default_side(name: str) -> int:
    """The input side a zoo model is usually run at: 224 (torchvision), 640 (the YOLOs)."""
    return 224 if ZOO[name] == "torchvision" else 640


# ---------------------------------------------------------------------------------------------------------------------
# child side: memory, results file, time limits
# ---------------------------------------------------------------------------------------------------------------------
def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _rss() -> int:
    return _status_bytes("VmRSS:")


def _hwm() -> int:
    return _status_bytes("VmHWM:")


def peak_rss() -> int:
    """This process's peak RSS in bytes (``VmHWM``: since it started, or since :class:`PeakRSS` last reset it)."""
    return _hwm()


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak RSS above the RSS at entry, in bytes (``self.peak``), while the ``with`` block runs; ``self.base`` is the
    RSS at entry (after ``gc.collect()`` and ``malloc_trim(0)``, so memory freed earlier is not reused for free).

    On Linux the kernel's high-water mark ``VmHWM`` is reset on entry (``5`` written to ``/proc/self/clear_refs``)
    and read on exit; where that is not allowed a thread samples RSS every millisecond (psutil), which can miss very
    short spikes. ``PeakRSS.method`` says which one ran.
    """

    method = "VmHWM reset via /proc/self/clear_refs"

    def __enter__(self) -> PeakRSS:
        _trim()
        self.base = _rss()
        self.peak = 0
        self._sampler: threading.Thread | None = None
        if not _reset_hwm():
            import psutil

            PeakRSS.method = "psutil RSS sampling every 1 ms"
            proc = psutil.Process()
            self._stop = threading.Event()
            self._max = self.base

            def sample() -> None:
                while not self._stop.is_set():
                    self._max = max(self._max, proc.memory_info().rss)
                    time.sleep(0.001)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
        try:
            top = _hwm() if self._sampler is None else max(self._max, _rss())
        except (OSError, MemoryError, RuntimeError):
            if exc_type is None:
                raise
            return  # the block failed already (out of memory, say): let its error out, not this one
        self.peak = max(0, top - self.base)


class Recorder:
    """Writes the worker's result dict to a JSON file after every change, so a killed worker leaves what it had."""

    def __init__(self, path: str, **fields: object) -> None:
        self.path = path
        self.data: dict = dict(fields)
        self.flush()

    def set(self, **fields: object) -> None:
        self.data.update(fields)
        self.flush()

    def flush(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (Python-level hangs only)."""

    def handler(signum: int, frame: object) -> None:
        raise TimeoutError(f"timed out after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def limit_memory(mem_gb: float) -> None:
    """Cap this process's address space at ``mem_gb`` GB (``RLIMIT_AS``; 0 or less: no cap)."""
    if mem_gb > 0:
        limit = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


# ---------------------------------------------------------------------------------------------------------------------
# parent side: running a child under limits, other processes' load
# ---------------------------------------------------------------------------------------------------------------------
def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes (0 when it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def busy_cpu_s() -> float:
    """CPU seconds used system-wide since boot (all cores, everything but idle and iowait)."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def own_cpu_s(who: int) -> float:
    """CPU seconds of this process (``resource.RUSAGE_SELF``) or of its waited-for children (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def wait_idle(max_wait: float, threshold: float = 0.5) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores over 1 s; return that load."""
    deadline = time.monotonic() + max_wait
    while True:
        busy, own, start = busy_cpu_s(), own_cpu_s(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(1.0)
        load = (busy_cpu_s() - busy - (own_cpu_s(resource.RUSAGE_SELF) - own)) / (time.monotonic() - start)
        if load < threshold or time.monotonic() >= deadline:
            return max(0.0, load)


def stderr_cause(log: Path) -> str:
    """The last line of a child's log that names an error (else its last line), for a child that died silently."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or "Killed" in line:
            return line[:200]
    return lines[-1][:200] if lines else ""


def run_child(cmd: Sequence[str], result_file: Path, log: Path, timeout: float, mem_gb: float, threads: int,
              start_fields: dict | None = None) -> tuple[dict, str, int]:
    """Run ``cmd`` (a worker writing its results to ``result_file`` with a :class:`Recorder`) as a child process,
    killing its whole process group after ``timeout`` s or when its RSS (with its children's) exceeds ``mem_gb`` GB.

    Returns ``(data, killed, returncode)``: the child's results with ``wall_s`` and ``other_load`` (cores that
    processes other than this benchmark used meanwhile) added, and, when it has no ``ok: true``, an ``error``: its
    own one-line error, or why it was killed, or how it died (with the last error line of ``log``), each followed by
    the phase it was in. ``killed`` is the kill reason (empty when it ended by itself). ``start_fields`` are the
    results used when the child left no file at all.
    """
    env = dict(os.environ, YOLO_OFFLINE="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    limit_bytes = mem_gb * 2**30
    killed = ""
    busy0, self0, kids0 = busy_cpu_s(), own_cpu_s(resource.RUSAGE_SELF), own_cpu_s(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    with open(log, "w") as logf:
        proc = subprocess.Popen(list(cmd), cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        while proc.poll() is None:
            time.sleep(0.1)
            elapsed = time.monotonic() - start
            if elapsed > timeout:
                killed = f"timeout: killed after {timeout:g} s"
            elif mem_gb > 0 and tree_rss(proc.pid) > limit_bytes:
                killed = f"RSS above {mem_gb:g} GB: killed after {elapsed:.0f} s"
            if killed:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
    wall = time.monotonic() - start
    own = own_cpu_s(resource.RUSAGE_SELF) - self0 + own_cpu_s(resource.RUSAGE_CHILDREN) - kids0
    try:
        data = json.loads(result_file.read_text())
    except (OSError, ValueError):
        data = {**(start_fields or {}), "phase": "start", "ok": False}
    data["wall_s"] = wall
    data["other_load"] = max(0.0, (busy_cpu_s() - busy0 - own) / wall) if wall > 0 else 0.0
    if not data.get("ok"):
        phase = data.get("phase", "?")
        if killed:
            data["error"] = f"{killed} (in {phase})"
        elif data.get("error"):
            data["error"] = f"{data['error']} (in {phase})"
        else:
            cause = stderr_cause(log)
            code = proc.returncode
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            data["error"] = f"worker died with {how} (in {phase})" + (f": {cause}" if cause else "")
    return data, killed, proc.returncode


# ---------------------------------------------------------------------------------------------------------------------
# results header
# ---------------------------------------------------------------------------------------------------------------------
def git_rev(paths: Sequence[str] = ()) -> str:
    """Short revision of the repository, noting uncommitted changes (only those under ``paths`` when given: a
    benchmark that writes its results into the tree should not call itself dirty for that)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"{rev}{' (working tree has uncommitted changes)' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as typed from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(argv[0], REPO), *argv[1:]])


def mb(value: float | None) -> str:
    """Bytes as whole MB (2**20), or ``—``."""
    return "—" if value is None else f"{value / MB:.0f}"
