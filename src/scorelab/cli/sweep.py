"""A Hydra callback that tabulates a multirun: one row per job with its overrides and final metrics."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..io import write_text_atomic


def collect_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Rows ``{job, <override key>: value, <metric>: value}`` for every job folder in ``sweep_dir``."""
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        row: dict[str, Any] = {"job": job.name}
        for item in OmegaConf.load(overrides_file):
            key, _, value = str(item).partition("=")
            row[key] = value
        metrics_file = job / "final_metrics.json"
        if metrics_file.is_file():
            metrics = json.loads(metrics_file.read_text())
            row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        else:
            row["status"] = "no final_metrics.json (failed or interrupted)"
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir``, each atomically (a failed write keeps the old)."""
    sweep_dir = Path(sweep_dir)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, table.getvalue())

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


class SweepSummary(Callback):
    """At the end of a multirun, write ``summary.csv`` / ``summary.md`` in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = collect_sweep(sweep_dir)
            if rows:
                _, md = write_summary(sweep_dir, rows)
                print(f"sweep summary: {md}")
