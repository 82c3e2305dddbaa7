"""Appending a measured table to a benchmark's results file, stamped with time and revision.

Each benchmark script keeps its history in one markdown file (`EXPERT-CALLS.md`...): a title
once, then one section per run, so a figure quoted in RESULTS.md can be traced to the run and
the revision that produced it.
"""
from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def append_table(path: Path, title: str, heading: str, columns: list[str], rows: list[str]) -> None:
    """Add a section `## <UTC time>, revision <rev>, <heading>` with a table of `columns` and
    `rows` (markdown table lines) to `path`, starting the file with `# title` if new."""
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    with path.open("a") as out:
        if out.tell() == 0:
            out.write(f"# {title}\n")
        out.write(f"\n## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, revision {revision}, {heading}\n\n"
                  f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n")
        out.write("\n".join(rows) + "\n")
