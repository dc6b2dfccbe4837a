"""Collect fresh `vilg demo` runs (one per seed) into one results file (issue #30).

Each run directory holds the demo's eval.json (every eval figure, stage timings); beside it,
RUN.time is `/usr/bin/time -v` of the demo command and RUN.start / RUN.end the UTC time and
/proc/loadavg when it started and ended. Runs one after another:

    for s in 0 1 2; do
      { date -u +%FT%TZ; cat /proc/loadavg; } > runs/s$s.start
      /usr/bin/time -v -o runs/s$s.time vilg --threads 1 demo --seed $s --out runs/s$s
      { date -u +%FT%TZ; cat /proc/loadavg; } > runs/s$s.end
    done
    python bench/demo_seeds.py runs/s0 runs/s1 runs/s2 --commit COMMIT
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
from pathlib import Path

FIGURES = (
    ("text2image", "canonical"),
    ("text2image_shuffled", "shuffled"),
    ("text2image_paraphrased", "paraphrased"),
)


def _time_v(path: Path) -> dict:
    """user / sys / wall seconds and peak memory from `/usr/bin/time -v`."""
    if not path.exists():
        return {}
    text = path.read_text()

    def grab(label):
        m = re.search(rf"{re.escape(label)}: (.+)", text)
        return m.group(1).strip() if m else None

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    secs = None
    if wall:
        parts = [float(p) for p in wall.split(":")]
        secs = sum(p * 60**k for k, p in enumerate(reversed(parts)))
    user, sys_ = float(grab("User time (seconds)")), float(grab("System time (seconds)"))
    return {
        "wall_s": secs,
        "user_s": user,
        "sys_s": sys_,
        "cpu_s": round(user + sys_, 1),
        "cpu_percent": grab("Percent of CPU this job got"),
        "max_rss_kb": int(grab("Maximum resident set size (kbytes)")),
        "exit_status": int(grab("Exit status")),
    }


def _stamp(path: Path) -> dict:
    if not path.exists():
        return {}
    lines = path.read_text().split("\n")
    return {"utc": lines[0], "loadavg": lines[1].split()[:3]}


def figures(ev: dict) -> dict:
    """The issue's figures per language: text->image (before / after reranking) for the three
    prompt kinds, exact captions, VQA; and their minimum."""
    out: dict = {}
    for lang in ("en", "zh"):
        m = ev[lang]
        f = {}
        for key, kind in FIGURES:
            f[f"t2i_{kind}_before"] = m[key]["before_rerank"]["fully_correct"]
            f[f"t2i_{kind}_after"] = m[key]["after_rerank"]["fully_correct"]
        f["caption_exact"] = m["caption"]["exact"]
        f["vqa"] = m["vqa"]["accuracy"]
        out[lang] = f
    out["min"] = min(v for lang in ("en", "zh") for v in out[lang].values())
    out["paraphrase_and_shuffle_within_3_points"] = all(
        abs(out[lang][f"t2i_{k}_after"] - out[lang]["t2i_canonical_after"]) <= 0.03
        for lang in ("en", "zh")
        for k in ("shuffled", "paraphrased")
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--commit", required=True, help="the commit each run was trained from")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    rows = []
    for r in map(Path, a.runs):
        row = {
            "run": r.name,
            "start": _stamp(r.with_suffix(".start")),
            "end": _stamp(r.with_suffix(".end")),
            "time_v": _time_v(r.with_suffix(".time")),
        }
        ev_path = r / "eval.json"
        if ev_path.exists():
            ev = json.loads(ev_path.read_text())
            preset = json.loads((r / "preset.json").read_text())
            row.update(
                seed=ev["seed"],
                figures=figures(ev),
                timings_s=ev.get("timings_s"),
                generator_steps=preset["generator"]["train"]["steps"],
                eval=ev,
            )
        else:
            row["error"] = "no eval.json: the run did not finish"
        rows.append(row)
    doc = {
        "benchmark": "demo-seeds (issue #30: prompts in any order and wording)",
        "date": dt.date.today().isoformat(),
        "commit": a.commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus "
        "shared with other jobs",
        "threads": "vilg --threads 1 (OMP_NUM_THREADS=1)",
        "command": "vilg --threads 1 demo --seed SEED --out RUN, one run after another",
        "note": a.note,
        "runs": rows,
    }
    Path(a.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    for row in rows:
        print(row["run"], json.dumps(row.get("figures", row.get("error")), ensure_ascii=False))


if __name__ == "__main__":
    main()
