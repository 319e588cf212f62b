"""A Hydra callback that tabulates a multirun: one row per job with its overrides, its status and its metrics."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ..core.io import write_text_atomic

# the result files of each command whose plain numbers go into the table (train.py, sample.py, likelihood.py)
RESULT_FILES = ("final_metrics.json", "metrics.json", "sample.json", "likelihood.json")


def _job_status(job: Path) -> dict[str, Any]:
    """``status`` (``ok``, ``failed (config)``, ``failed (bug)`` or ``no record``) and ``error`` (the one line)."""
    from .entry import JOB_RECORD

    try:
        record = json.loads((job / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return {"status": "no record (interrupted?)", "error": ""}
    status = str(record.get("status", "unknown"))
    return {"status": status if status == "ok" else f"{status} ({record.get('kind', '')})",
            "error": "" if status == "ok" else str(record.get("error", ""))}


def collect_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Rows ``{job, <override key>: value, status, [error], <metric>: value}`` for every job folder in ``sweep_dir``."""
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        row: dict[str, Any] = {"job": job.name}
        for item in OmegaConf.load(overrides_file):
            key, _, value = str(item).partition("=")
            row[key] = value
        row.update(_job_status(job))
        for name in RESULT_FILES:  # the first result file the job wrote
            try:
                metrics = json.loads((job / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(metrics, dict):
                row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in row})
            break
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


class SweepResult(NamedTuple):
    """What the last sweep of this process left: its job count, the failed jobs' rows and the summary file."""

    jobs: int
    failed: list[dict[str, Any]]
    summary: str


_LAST: list[SweepResult] = []


def last_sweep() -> SweepResult | None:
    """The result of the last sweep that ended in this process (``None`` if none did)."""
    return _LAST[-1] if _LAST else None


class SweepSummary(Callback):
    """At the end of a multirun, write ``summary.csv`` / ``summary.md`` in the sweep folder, and keep the failed
    jobs for the entry point's exit status (it runs in the launching process for every launcher)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            rows = collect_sweep(sweep_dir)
            if rows:
                _, md = write_summary(sweep_dir, rows)
                print(f"sweep summary: {md}")
                _LAST.append(SweepResult(len(rows), [r for r in rows if r.get("status") != "ok"], str(md)))
                for row in rows:
                    if row.get("status") != "ok":
                        print(f"sweep job {row['job']}: {row['status']}: {row.get('error', '')}")
