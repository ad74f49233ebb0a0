#!/usr/bin/env python3
"""What a day of change of a PostgreSQL data directory adds to each tool's repository.

  bench/pg-increment.py --embassy-bin target/debug/embassy [--corpus-dir bench/out/corpus-full]
                        [--work /work/pgcorpus/inc] [--tools embassy,restic,borg]

For the corpus's db/ directory (a stopped PostgreSQL 15 cluster, day 0 and day 1 from
make-dataset.sh / mutate-dataset.sh), and again for db/ without pg_wal: each tool backs up day 0,
the working copy is changed in place into day 1 (only differing 8 KiB pages rewritten, as
bench/bench.py does), each tool backs up again; the increment is the growth of the repository
on disk. Run as root. Prints a table and writes results.json into the work dir.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402


def copy_variant(src: Path, dst: Path, without_wal: bool) -> None:
    if dst.exists():
        return
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    if without_wal:
        wal = dst / "pg_wal"
        for e in wal.iterdir():
            if e.is_file():
                e.unlink()


def run(tool: bench.Tool, day0: Path, day1: Path, logs: Path) -> dict:
    shutil.rmtree(tool.work, ignore_errors=True)
    tool.work.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(day0), str(tool.work / "src")], check=True)
    env = tool.env()
    tool.version()
    subprocess.run(tool.init(), cwd=tool.work, env=env, check=True, capture_output=True)
    r = {}
    t = time.perf_counter()
    subprocess.run(tool.backup("day0"), cwd=tool.work, env=env, check=True,
                   stdout=open(logs / f"{tool.name}-day0.log", "w"), stderr=subprocess.STDOUT)
    r["day0_s"] = time.perf_counter() - t
    r["repo_day0"] = bench.du_bytes(tool.repo)
    r["sync"] = bench.sync_in_place(day1, tool.work / "src")
    t = time.perf_counter()
    subprocess.run(tool.backup("day1"), cwd=tool.work, env=env, check=True,
                   stdout=open(logs / f"{tool.name}-day1.log", "w"), stderr=subprocess.STDOUT)
    r["day1_s"] = time.perf_counter() - t
    r["repo_day1"] = bench.du_bytes(tool.repo)
    r["increment"] = r["repo_day1"] - r["repo_day0"]
    shutil.rmtree(tool.work / "src", ignore_errors=True)
    shutil.rmtree(tool.repo, ignore_errors=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embassy-bin", type=Path, required=True)
    ap.add_argument("--corpus-dir", type=Path, default=HERE / "out" / "corpus-full")
    ap.add_argument("--work", type=Path, default=Path("/work/pgcorpus/inc"))
    ap.add_argument("--tools", default="embassy,restic,borg")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    logs = a.work / "logs"
    logs.mkdir(exist_ok=True)
    variants = {}
    for name, without in (("db", False), ("db-without-pg_wal", True)):
        d0, d1 = a.work / f"{name}.day0", a.work / f"{name}.day1"
        copy_variant(a.corpus_dir / "day0" / "db", d0, without)
        copy_variant(a.corpus_dir / "day1" / "db", d1, without)
        variants[name] = (d0, d1)
    results = {"machine": bench.machine_info(a.work) if hasattr(bench, "machine_info") else {}}
    for name, (d0, d1) in variants.items():
        results[name] = {"day0_bytes": bench.du_bytes(d0), "day1_bytes": bench.du_bytes(d1)}
        for t in a.tools.split(","):
            work = a.work / t
            tool = {"embassy": lambda: bench.Embassy(work, a.embassy_bin.resolve()),
                    "restic": lambda: bench.Restic(work, shutil.which("restic")),
                    "borg": lambda: bench.Borg(work, shutil.which("borg"))}[t]()
            results[name][t] = run(tool, d0, d1, logs)
            print(f"{name:20s} {t:8s} day0 repo {results[name][t]['repo_day0'] / 1e6:8.1f} MB  "
                  f"increment {results[name][t]['increment'] / 1e6:8.1f} MB  "
                  f"(backups {results[name][t]['day0_s']:.0f} s, {results[name][t]['day1_s']:.0f} s)",
                  flush=True)
    (a.work / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n| data | " + " | ".join(f"{t} increment" for t in a.tools.split(",")) + " | embassy/restic |")
    print("|---|" + "---|" * (len(a.tools.split(",")) + 1))
    for name in variants:
        row = [f"{results[name][t]['increment'] / 1e6:.1f} MB" for t in a.tools.split(",")]
        ratio = ""
        if "embassy" in results[name] and "restic" in results[name]:
            ratio = f"{results[name]['embassy']['increment'] / results[name]['restic']['increment']:.2f}"
        print(f"| {name} | " + " | ".join(row) + f" | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
