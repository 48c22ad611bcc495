"""MkDocs hook (named in ``mkdocs.yml``): publishes the benchmark results with the site.

The results live in ``benchmarks/results/`` next to the scripts that write them, not under ``docs/``. This hook adds
their Markdown reports and plots (subfolders included) to the site as ``benchmarks/results/<path>`` (so the reports'
own image links work, and ``mkdocs build --strict`` checks every link to them), and ``benchmarks/README.md`` as
``benchmarks/running.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).resolve().parent
    results = root / "benchmarks" / "results"
    for path in sorted(results.rglob("*")):
        if path.suffix in {".md", ".png"} and path.is_file():
            name = path.relative_to(results).as_posix()
            files.append(File.generated(config, f"benchmarks/results/{name}", abs_src_path=str(path)))
    files.append(File.generated(config, "benchmarks/running.md", abs_src_path=str(root / "benchmarks" / "README.md")))
    return files
