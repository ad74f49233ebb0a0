#!/usr/bin/env python3
"""Data Embassy peer benchmark: Data Embassy vs restic, borg (and rustic when installed).

Run it through `bench/run` (see bench/README.md). Python 3.11, standard library only. Must run as root:
the corpus scripts run a PostgreSQL cluster as `postgres`, and missing tools are installed with apt-get.

One benchmark run, for i in 1..N, for each tool in turn (A B A B ...):
  fresh working copy of day 0 -> init a fresh repository -> initial backup -> the working copy is
  updated in place to day 1 -> incremental backup -> restore latest -> compare with day 1 (diff -r) ->
  verify with data read.
Each timed step runs under /usr/bin/time -v (CPU, peak RSS); wall time is measured around it.
The machine's ceilings (embassy-ceilings) are measured in every run too.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 42
PASSPHRASE = "embassy-bench-passphrase"  # throwaway repositories only
DATASET = "bench"  # Data Embassy dataset name

# Corpus sizes: knobs of make-dataset.sh (day 0) and mutate-dataset.sh (day 1).
SIZES = {
    "tiny": {
        "make": {"REGISTRY_SCALE": "0.02", "PGBENCH_SCALE": "1", "NDOCS": "300", "SCANS_MB": "5"},
        "mutate": {"TX": "500", "ADD": "8", "EDIT": "3", "NEWSCANS_MB": "1"},
        "ceilings": ["--seconds", "0.2", "--sample-mib", "16", "--write-mib", "64"],
    },
    "small": {
        "make": {"REGISTRY_SCALE": "0.1", "PGBENCH_SCALE": "1", "NDOCS": "2000", "SCANS_MB": "30"},
        "mutate": {"TX": "2000", "ADD": "50", "EDIT": "20", "NEWSCANS_MB": "2"},
        "ceilings": ["--seconds", "1", "--sample-mib", "64", "--write-mib", "256"],
    },
    "full": {  # the scripts' defaults
        "make": {},
        "mutate": {},
        "ceilings": ["--seconds", "1", "--sample-mib", "64", "--write-mib", "256"],
    },
}
BORG_COMPRESSION = "zstd,3"
ALL_TOOLS = ["embassy", "restic", "borg", "rustic"]


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench {dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(argv, cwd=None, env=None, check=True, capture=True, logfile: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure raise BenchError with the tail of its output."""
    out = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, text=True, errors="replace",
        stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
    )
    if logfile is not None and capture:
        with open(logfile, "a") as f:
            f.write(f"$ {' '.join(map(str, argv))}\n{out.stdout}\n[exit {out.returncode}]\n")
    if check and out.returncode != 0:
        tail = "\n".join((out.stdout or "").splitlines()[-30:])
        raise BenchError(f"command failed (exit {out.returncode}): {' '.join(map(str, argv))}\n{tail}")
    return out


# ---------------------------------------------------------------------------------------------- paths

def repo_root() -> Path:
    try:
        r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=HERE, text=True,
                           capture_output=True, check=True)
        return Path(r.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return HERE.parent


def shared_bench(root: Path) -> Path:
    for c in (root.parent / "shared" / "bench", Path("/work/shared/bench")):
        if (c / "make-dataset.sh").is_file() and (c / "mutate-dataset.sh").is_file():
            return c.resolve()
    raise BenchError("cannot find make-dataset.sh: looked in ../shared/bench and /work/shared/bench")


def du_bytes(p: Path) -> int:
    """Apparent size in bytes, as `du -sb`."""
    r = sh(["du", "-sb", p])
    return int(r.stdout.split()[0])


# ---------------------------------------------------------------------------------------------- tools

def have(cmd: str) -> str | None:
    return shutil.which(cmd)


def ensure_packages(no_install: bool, want_peers: list[str]) -> None:
    """Install restic, borgbackup and GNU time with apt-get when missing (apt-get update once if needed)."""
    need = []
    if not Path("/usr/bin/time").exists():
        need.append("time")
    if "restic" in want_peers and not have("restic"):
        need.append("restic")
    if "borg" in want_peers and not have("borg"):
        need.append("borgbackup")
    if not need:
        return
    if no_install:
        raise BenchError(f"missing {', '.join(need)} and --no-install was given")
    if not have("apt-get"):
        raise BenchError(f"missing {', '.join(need)} and no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(need)} with apt-get")
    r = sh(["apt-get", "install", "-y", "-q", *need], env=env, check=False)
    if r.returncode != 0:
        log("apt-get install failed; running apt-get update once and retrying")
        sh(["apt-get", "update", "-q"], env=env)
        sh(["apt-get", "install", "-y", "-q", *need], env=env)


def cargo_build(root: Path, packages: list[str]) -> Path:
    """`cargo build --release -p ...`; returns the release directory."""
    argv = ["cargo", "build", "--release", "--quiet"]
    for p in packages:
        argv += ["-p", p]
    log(f"building {', '.join(packages)} (release)")
    sh(argv, cwd=root)
    meta = json.loads(sh(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root).stdout)
    return Path(meta["target_directory"]) / "release"


class Tool:
    """One backup program. Commands run with cwd = the tool's work dir, which holds `src/`."""

    name = "?"
    settings = ""

    def __init__(self, work: Path):
        self.work = work
        self.repo = work / "repo"
        self.restore_dir = work / "restore"

    def env(self) -> dict:
        return dict(os.environ)

    def version(self) -> str:
        raise NotImplementedError

    def init(self) -> list:
        raise NotImplementedError

    def backup(self, label: str) -> list:
        raise NotImplementedError

    def restore(self) -> tuple[list, Path]:
        """argv, cwd to run it in."""
        raise NotImplementedError

    def restored_tree(self) -> Path:
        raise NotImplementedError

    def verify(self) -> list:
        raise NotImplementedError

    def reset(self) -> None:
        pass


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path, exe: str):
        super().__init__(work)
        self.exe = exe
        self.settings = ("repository version 2, compression auto (default), default pack size; "
                         "local cache in the work dir (not counted in vault size)")

    def env(self):
        return dict(os.environ, RESTIC_PASSWORD=PASSPHRASE, RESTIC_REPOSITORY=str(self.repo),
                    RESTIC_CACHE_DIR=str(self.work / "cache"), RESTIC_PROGRESS_FPS="0.2")

    def version(self):
        return sh([self.exe, "version"]).stdout.strip()

    def init(self):
        return [self.exe, "init", "--repository-version", "2"]

    def backup(self, label):
        return [self.exe, "backup", "--quiet", "--host", "bench", "--tag", label, "src"]

    def restore(self):
        return [self.exe, "restore", "latest", "--target", str(self.restore_dir)], self.work

    def restored_tree(self):
        # restic stores the absolute path of the backed-up directory
        return self.restore_dir / str((self.work / "src").resolve()).lstrip("/")

    def verify(self):
        return [self.exe, "check", "--read-data"]

    def reset(self):
        shutil.rmtree(self.work / "cache", ignore_errors=True)


class Rustic(Restic):
    name = "rustic"

    def __init__(self, work: Path, exe: str):
        super().__init__(work, exe)
        self.settings = "defaults (restic-compatible repository, compression default); cache in the work dir"

    def env(self):
        return dict(os.environ, RUSTIC_PASSWORD=PASSPHRASE, RUSTIC_REPOSITORY=str(self.repo),
                    RUSTIC_CACHE_DIR=str(self.work / "cache"))

    def version(self):
        return sh([self.exe, "--version"]).stdout.strip()

    # untested here (no rustic on the machine this was written on); syntax from rustic's docs
    def init(self):
        return [self.exe, "--no-progress", "init"]

    def backup(self, label):
        return [self.exe, "--no-progress", "backup", "--host", "bench", "--tag", label, "src"]

    def restore(self):
        return [self.exe, "--no-progress", "restore", "latest", str(self.restore_dir)], self.work

    def verify(self):
        return [self.exe, "--no-progress", "check", "--read-data"]


class Borg(Tool):
    name = "borg"

    def __init__(self, work: Path, exe: str):
        super().__init__(work)
        self.exe = exe
        self.major = 1
        self.labels: list[str] = []

    def env(self):
        return dict(os.environ, BORG_PASSPHRASE=PASSPHRASE, BORG_BASE_DIR=str(self.work / "borg-home"),
                    BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no")

    def version(self):
        v = sh([self.exe, "--version"]).stdout.strip()
        m = re.search(r"(\d+)\.(\d+)", v)
        self.major = int(m.group(1)) if m else 1
        enc = "repokey-blake2" if self.major < 2 else "repokey-blake2-chacha20-poly1305"
        self.settings = (f"encryption {enc}, compression {BORG_COMPRESSION}, default chunker; "
                         "cache/security dirs in the work dir (not counted in vault size)")
        return v

    def init(self):
        if self.major < 2:
            return [self.exe, "init", "--encryption=repokey-blake2", str(self.repo)]
        # borg 2: `repo-create` (2.0 betas before b10: `rcreate`)
        sub = "repo-create" if "repo-create" in sh([self.exe, "--help"], check=False).stdout else "rcreate"
        return [self.exe, "-r", str(self.repo), sub, "--encryption=repokey-blake2-chacha20-poly1305"]

    def backup(self, label):
        self.labels.append(label)
        if self.major < 2:
            return [self.exe, "create", "--compression", BORG_COMPRESSION, f"{self.repo}::{label}", "src"]
        return [self.exe, "-r", str(self.repo), "create", "--compression", BORG_COMPRESSION, label, "src"]

    def restore(self):
        label = self.labels[-1]  # the latest archive
        if self.major < 2:
            return [self.exe, "extract", f"{self.repo}::{label}"], self.restore_dir
        return [self.exe, "-r", str(self.repo), "extract", label], self.restore_dir

    def restored_tree(self):
        return self.restore_dir / "src"

    def verify(self):
        if self.major < 2:
            return [self.exe, "check", "--verify-data", str(self.repo)]
        return [self.exe, "-r", str(self.repo), "check", "--verify-data"]

    def reset(self):
        self.labels = []
        shutil.rmtree(self.work / "borg-home", ignore_errors=True)


class Embassy(Tool):
    name = "embassy"

    def __init__(self, work: Path, exe: Path):
        super().__init__(work)
        self.exe = str(exe)
        self.key = work / "embassy.key"
        self.settings = ("defaults of the build (zstd level embassy_core::COMPRESSION_LEVEL, "
                         "ChaCha20-Poly1305, keyed BLAKE3); key file outside the vault")

    def env(self):
        return dict(os.environ, EMBASSY_PASSPHRASE=PASSPHRASE)

    def g(self):
        return [self.exe, "--site", str(self.repo), "--key-file", str(self.key), "--quiet"]

    def version(self):
        return sh([self.exe, "--version"]).stdout.strip()

    def init(self):
        return [*self.g(), "init"]

    def backup(self, label):
        return [*self.g(), "backup", DATASET, "src"]

    def restore(self):
        return [*self.g(), "restore", DATASET, "--to", str(self.restore_dir)], self.work

    def restored_tree(self):
        # The layout under --to is found at run time (see find_restored): `src/` or the tree itself.
        return self.restore_dir

    def verify(self):
        return [*self.g(), "verify", "--deep"]

    def reset(self):
        if self.key.exists():
            self.key.unlink()


def find_restored(tool: Tool, reference: Path) -> Path:
    """The directory in the tool's restore output that should equal `reference`."""
    cands = [tool.restored_tree(), tool.restore_dir / "src",
             tool.restore_dir / str((tool.work / "src").resolve()).lstrip("/"), tool.restore_dir]
    top = {p.name for p in reference.iterdir()}
    for c in cands:
        if c.is_dir() and top <= {p.name for p in c.iterdir()}:
            return c
    return cands[0]


# ---------------------------------------------------------------------------------------------- corpus

def build_corpus(cache: Path, size: str, scripts: Path) -> tuple[Path, Path]:
    """day0/ and day1/ under `cache`, built once and reused (marker files hold the knobs)."""
    knobs = SIZES[size]
    cache.mkdir(parents=True, exist_ok=True)
    day0, day1 = cache / "day0", cache / "day1"
    want0 = {"seed": SEED, "make": knobs["make"]}
    want1 = {"seed": SEED, "make": knobs["make"], "mutate": knobs["mutate"], "day": 1}

    def marker_ok(m: Path, want: dict) -> bool:
        try:
            return json.loads(m.read_text()) == want
        except (OSError, ValueError):
            return False

    m0, m1 = cache / "day0.done", cache / "day1.done"
    if not (day0.is_dir() and marker_ok(m0, want0)):
        for p in (m0, m1):
            p.unlink(missing_ok=True)
        shutil.rmtree(day0, ignore_errors=True)
        shutil.rmtree(day1, ignore_errors=True)
        log(f"building corpus day 0 ({size}) in {day0}")
        t = time.monotonic()
        sh(["bash", scripts / "make-dataset.sh", day0, str(SEED)], env=dict(os.environ, **knobs["make"]),
           logfile=cache / "make-dataset.log")
        log(f"  day 0 built in {time.monotonic() - t:.0f} s")
        m0.write_text(json.dumps(want0))
    if not (day1.is_dir() and marker_ok(m1, want1)):
        m1.unlink(missing_ok=True)
        shutil.rmtree(day1, ignore_errors=True)
        tmp = cache / "day1.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building day 1 (copy of day 0 + mutate-dataset.sh) in {day1}")
        t = time.monotonic()
        sh(["cp", "-a", day0, tmp])
        sh(["bash", scripts / "mutate-dataset.sh", tmp, "1", str(SEED)], env=dict(os.environ, **knobs["mutate"]),
           logfile=cache / "mutate-dataset.log")
        tmp.rename(day1)
        log(f"  day 1 built in {time.monotonic() - t:.0f} s")
        m1.write_text(json.dumps(want1))
    return day0, day1


def composition(d: Path) -> dict:
    return {c.name: du_bytes(c) for c in sorted(d.iterdir()) if c.is_dir()}


PAGE = 8192


def sync_in_place(src: Path, dst: Path) -> dict:
    """Make `dst` equal to `src` the way a live system changes: unchanged files (same size and mtime)
    are not touched; changed files are rewritten in place, only the 8 KiB pages that differ, keeping
    their inode; new files are created and vanished ones deleted. Modes, owners and mtimes follow src."""
    st = {"pages_written": 0, "files_changed": 0, "files_new": 0, "files_deleted": 0}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        ddir = dst / rel
        if not ddir.is_dir():
            ddir.mkdir(parents=True)
        # delete what is no longer there
        want = set(dirnames) | set(filenames)
        for e in list(os.scandir(ddir)):
            if e.name not in want:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path)
                else:
                    os.unlink(e.path)
                st["files_deleted"] += 1
        for fn in filenames:
            s, d = Path(dirpath) / fn, ddir / fn
            ss = s.lstat()
            if s.is_symlink():
                if d.is_symlink() or d.exists():
                    d.unlink()
                os.symlink(os.readlink(s), d)
                continue
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            try:
                ds = d.lstat()
            except FileNotFoundError:
                shutil.copy2(s, d)
                os.chown(d, ss.st_uid, ss.st_gid)
                st["files_new"] += 1
                continue
            if ds.st_size == ss.st_size and ds.st_mtime_ns == ss.st_mtime_ns:
                continue
            st["files_changed"] += 1
            with open(s, "rb") as fs, open(d, "r+b") as fd:
                off = 0
                while True:
                    a = fs.read(1 << 20)
                    if not a:
                        break
                    b = fd.read(len(a))
                    if a != b:
                        for p in range(0, len(a), PAGE):
                            if a[p:p + PAGE] != b[p:p + PAGE]:
                                fd.seek(off + p)
                                fd.write(a[p:p + PAGE])
                                st["pages_written"] += 1
                        fd.seek(off + len(a))
                    off += len(a)
                fd.truncate(ss.st_size)
        for dn in dirnames:
            if (ddir / dn).exists() and not (ddir / dn).is_dir():
                os.unlink(ddir / dn)
    # metadata last (writing changes directory mtimes), deepest first, and only where it differs:
    # setting it anyway changes every file's ctime, which a live system does not, and which makes
    # every tool (restic, borg and embassy all compare ctime) read every unchanged file again
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for name in filenames + dirnames:
            s = Path(dirpath) / name
            follow_metadata(s.lstat(), dst / s.relative_to(src), s.is_symlink())
        follow_metadata(Path(dirpath).lstat(), dst / Path(dirpath).relative_to(src), False)
    return st


def follow_metadata(ss: os.stat_result, d: Path, symlink: bool) -> None:
    """Give `d` the owner, mode and mtime of `ss` where they differ (never touching the rest)."""
    ds = d.lstat()
    if not symlink:
        if (ds.st_uid, ds.st_gid) != (ss.st_uid, ss.st_gid):
            os.chown(d, ss.st_uid, ss.st_gid)
        if ds.st_mode & 0o7777 != ss.st_mode & 0o7777:
            os.chmod(d, ss.st_mode & 0o7777)
    if ds.st_mtime_ns != ss.st_mtime_ns:
        os.utime(d, ns=(ss.st_atime_ns, ss.st_mtime_ns), follow_symlinks=False)


def warm(d: Path) -> float:
    """Read every file under d once (page-cache warm-up). Returns seconds."""
    t = time.perf_counter()
    buf = bytearray(1 << 20)
    for dirpath, _, filenames in os.walk(d):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if os.path.islink(p):
                continue
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------- measure

TIME_FIELDS = {
    "User time (seconds)": ("user_s", float),
    "System time (seconds)": ("sys_s", float),
    "Maximum resident set size (kbytes)": ("max_rss_kb", int),
    "Exit status": ("exit", int),
    "File system inputs": ("fs_inputs", int),
    "File system outputs": ("fs_outputs", int),
}


def timed(argv, cwd: Path, env: dict, logfile: Path) -> dict:
    """Run argv under /usr/bin/time -v; wall time from perf_counter around it."""
    tf = logfile.with_suffix(".time")
    with open(logfile, "a") as lf:
        lf.write(f"$ {' '.join(map(str, argv))}\n")
        lf.flush()
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", str(tf), *map(str, argv)], cwd=cwd, env=env,
                           stdout=lf, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - t
    r = {"wall_s": wall}
    for line in tf.read_text().splitlines():
        k, _, v = line.strip().rpartition(": ")
        if k in TIME_FIELDS:
            name, conv = TIME_FIELDS[k]
            r[name] = conv(v)
    r["cpu_s"] = r.get("user_s", 0.0) + r.get("sys_s", 0.0)
    if p.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        raise BenchError(f"{' '.join(map(str, argv))} failed (exit {p.returncode}); log {logfile}:\n{tail}")
    return r


def settle_deleted_inodes(logs: Path) -> bool:
    """Restores are timed as onto a disk where nothing was just deleted (a restore after a
    disaster writes onto a fresh or quiet file system). ext4 looks up the inode-table block of
    every recently freed inode it passes over when it allocates one, while that block is cached
    (`recently_deleted` in fs/ext4/ialloc.c); after the harness deleted a tool's ~40,000 files of
    the run before, a restore spent over half its samples there and its wall time swung 2x from
    one run to the next. Writing back and dropping the clean page cache ends that for every tool
    alike; the vault is read into the cache again afterwards (the caller warms it)."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        said, dropped = "page cache dropped before a restore", True
    except OSError as e:
        # A container's read-only /proc/sys: measured as it is, and said in the results.
        said, dropped = f"page cache NOT dropped before a restore: {e}", False
        log(f"  {said}")
    with open(logs / "settled.log", "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {said}\n")
    return dropped


def timed_sync() -> float:
    t = time.perf_counter()
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t


def run_tool(tool: Tool, run: int, day0: Path, day1: Path, src_bytes: dict, logs: Path, check: bool) -> dict:
    env = tool.env()
    w = tool.work
    # fresh repository and working copy (untimed)
    for p in (tool.repo, tool.restore_dir, w / "src"):
        shutil.rmtree(p, ignore_errors=True)
    tool.reset()
    w.mkdir(parents=True, exist_ok=True)
    sh(["cp", "-a", day0, w / "src"])
    sh(["sync"])
    lf = logs / f"run{run}-{tool.name}.log"
    res: dict = {"run": run, "tool": tool.name}
    sh(tool.init(), cwd=w, env=env, logfile=lf)

    warm(w / "src")
    r = timed(tool.backup("day0"), w, env, lf)
    r["sync_after_s"] = timed_sync()
    r["vault_bytes"] = du_bytes(tool.repo)
    r["mbps"] = src_bytes["day0"] / r["wall_s"] / 1e6
    r["mb_per_cpu_s"] = src_bytes["day0"] / r["cpu_s"] / 1e6 if r["cpu_s"] > 0 else None
    res["initial"] = r
    log(f"  {tool.name:8} initial   {r['wall_s']:7.2f} s  {r['mbps']:7.1f} MB/s  cpu {r['cpu_s']:6.1f} s  "
        f"rss {r.get('max_rss_kb', 0) / 1024:6.0f} MiB  vault {r['vault_bytes'] / 1e6:8.1f} MB")

    res["day1_sync"] = sync_in_place(day1, w / "src")
    sh(["sync"])
    warm(w / "src")
    r = timed(tool.backup("day1"), w, env, lf)
    r["sync_after_s"] = timed_sync()
    r["vault_bytes"] = du_bytes(tool.repo)
    r["added_bytes"] = r["vault_bytes"] - res["initial"]["vault_bytes"]
    r["mbps"] = src_bytes["day1"] / r["wall_s"] / 1e6
    res["incremental"] = r
    log(f"  {tool.name:8} increment {r['wall_s']:7.2f} s  {r['mbps']:7.1f} MB/s  cpu {r['cpu_s']:6.1f} s  "
        f"added {r['added_bytes'] / 1e6:8.1f} MB")

    dropped = settle_deleted_inodes(logs)
    warm(tool.repo)
    tool.restore_dir.mkdir(parents=True, exist_ok=True)
    argv, cwd = tool.restore()
    r = timed(argv, cwd, env, lf)
    r["page_cache_dropped_before"] = dropped
    r["sync_after_s"] = timed_sync()
    r["mbps"] = src_bytes["day1"] / r["wall_s"] / 1e6
    if check:
        got = find_restored(tool, day1)
        d = subprocess.run(["diff", "-r", "--no-dereference", "-q", str(day1), str(got)],
                           capture_output=True, text=True, errors="replace")
        r["equal"] = d.returncode == 0
        if d.returncode != 0:
            with open(lf, "a") as f:
                f.write(f"diff -r {day1} {got}:\n{d.stdout}{d.stderr}\n")
            raise BenchError(f"{tool.name}: restored tree {got} differs from {day1}:\n"
                             + "\n".join((d.stdout + d.stderr).splitlines()[:20]))
        r["compared"] = str(got)
    res["restore"] = r
    log(f"  {tool.name:8} restore   {r['wall_s']:7.2f} s  {r['mbps']:7.1f} MB/s  cpu {r['cpu_s']:6.1f} s"
        + ("  (equal to day 1)" if check else ""))
    shutil.rmtree(tool.restore_dir, ignore_errors=True)

    r = timed(tool.verify(), w, env, lf)
    r["mbps"] = res["incremental"]["vault_bytes"] / r["wall_s"] / 1e6  # vault bytes read per second
    res["verify"] = r
    log(f"  {tool.name:8} verify    {r['wall_s']:7.2f} s  {r['mbps']:7.1f} MB/s of vault  cpu {r['cpu_s']:6.1f} s")
    return res


def run_ceilings(exe: Path, day0: Path, work: Path, size: str, logs: Path, run: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    r = sh([exe, "--corpus", day0, "--write-dir", work, *SIZES[size]["ceilings"]],
           logfile=logs / f"run{run}-ceilings.log")
    c = json.loads(r.stdout[r.stdout.index("{"):])
    p = c["pipeline"]
    log(f"  ceilings: read {c['page_cache_read']['single_mbps']:.0f}, blake3 {c['blake3_keyed']['single_mbps']:.0f}, "
        f"aead {c['chacha20poly1305_seal']['single_mbps']:.0f}, fsync write {c['fsync_write'].get('mbps', 0):.0f} MB/s; "
        f"pipeline {p['single_mbps']:.0f} MB/s/core, ceiling {p['ceiling_mbps']:.0f} MB/s")
    return c


# ---------------------------------------------------------------------------------------------- report

def machine_info(out: Path) -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    fs = sh(["df", "--output=source,fstype", out], check=False).stdout.splitlines()
    osr = {}
    try:
        for line in open("/etc/os-release"):
            k, _, v = line.strip().partition("=")
            osr[k] = v.strip('"')
    except OSError:
        pass
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "?"
    return {"load_at_start": load, "host": socket.gethostname(), "cpu": cpu, "nproc": os.cpu_count(), "memory": mem,
            "kernel": platform.release(), "os": osr.get("PRETTY_NAME", "?"),
            "disk": " ".join(fs[-1].split()) if len(fs) > 1 else "?", "python": platform.python_version()}


def git_rev(root: Path) -> str:
    r = sh(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=False)
    rev = r.stdout.strip() if r.returncode == 0 else "no commit"
    d = sh(["git", "status", "--porcelain"], cwd=root, check=False)
    return rev + (" (dirty)" if d.returncode == 0 and d.stdout.strip() else "")


# (key, label, unit, scale, getter, decimals)
METRICS = [
    ("initial.wall_s", "Initial backup: wall", "s", 1, 2),
    ("initial.mbps", "Initial backup: throughput", "MB/s", 1, 1),
    ("initial.cpu_s", "Initial backup: CPU (user+sys)", "s", 1, 2),
    ("initial.mb_per_cpu_s", "Initial backup: source MB per CPU-second", "MB/CPU-s", 1, 1),
    ("initial.max_rss_kb", "Initial backup: peak RSS", "MiB", 1 / 1024, 0),
    ("initial.vault_bytes", "Vault size after initial", "MB", 1e-6, 1),
    ("initial.sync_after_s", "sync after initial backup", "s", 1, 2),
    ("incremental.wall_s", "Incremental backup: wall", "s", 1, 2),
    ("incremental.cpu_s", "Incremental backup: CPU", "s", 1, 2),
    ("incremental.added_bytes", "Incremental: bytes added", "MB", 1e-6, 1),
    ("incremental.max_rss_kb", "Incremental backup: peak RSS", "MiB", 1 / 1024, 0),
    ("restore.wall_s", "Restore latest: wall", "s", 1, 2),
    ("restore.mbps", "Restore latest: throughput", "MB/s", 1, 1),
    ("restore.cpu_s", "Restore latest: CPU", "s", 1, 2),
    ("restore.max_rss_kb", "Restore latest: peak RSS", "MiB", 1 / 1024, 0),
    ("verify.wall_s", "Verify (read all data): wall", "s", 1, 2),
    ("verify.mbps", "Verify: vault bytes read", "MB/s", 1, 1),
    ("verify.cpu_s", "Verify: CPU", "s", 1, 2),
]


def get(rec: dict, key: str):
    a, b = key.split(".")
    v = rec.get(a, {}).get(b)
    return v


def fmt(x: float, dec: int) -> str:
    return f"{x:,.{dec}f}"


def summarize(results: list[dict], tools: list[str], ceilings: list[dict]) -> dict:
    s: dict = {"metrics": {}, "ratios": {}, "ceiling_fraction": None}
    for key, *_ in METRICS:
        s["metrics"][key] = {}
        for t in tools:
            vals = [get(r, key) for r in results if r["tool"] == t and get(r, key) is not None]
            if vals:
                s["metrics"][key][t] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                                        "n": len(vals)}
        # ratios embassy/peer, per run, then the median (not for sync times: near zero, noise only)
        if "embassy" in tools and "sync_after" not in key:
            for peer in tools:
                if peer == "embassy":
                    continue
                rs = []
                for run in sorted({r["run"] for r in results}):
                    e = [get(r, key) for r in results if r["run"] == run and r["tool"] == "embassy"]
                    p = [get(r, key) for r in results if r["run"] == run and r["tool"] == peer]
                    if e and p and e[0] is not None and p[0]:
                        rs.append(e[0] / p[0])
                if rs:
                    s["ratios"].setdefault(key, {})[peer] = {"median": statistics.median(rs), "min": min(rs),
                                                             "max": max(rs)}
    # fraction of the pipeline ceiling, per run (same run's ceiling)
    def fractions(num, den):
        fr = {}
        for t in tools:
            xs = []
            for r in results:
                c = next((c for c in ceilings if c.get("run") == r["run"]), None)
                if r["tool"] == t and c and num(r) and den(c):
                    xs.append(num(r) / den(c))
            if xs:
                fr[t] = {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}
        return fr

    # wall: initial-backup MB/s / (pipeline single-core x cores), both from the same run
    s["ceiling_fraction"] = fractions(lambda r: r["initial"]["mbps"], lambda c: c["pipeline"]["ceiling_mbps"])
    # CPU: source MB per CPU-second / pipeline single-core rate per CPU-second (robust to other load)
    s["cpu_fraction"] = fractions(lambda r: r["initial"].get("mb_per_cpu_s"),
                                  lambda c: c["pipeline"].get("single_cpu_mbps"))
    return s


def ceilings_table(ceilings: list[dict]) -> list[str]:
    if not ceilings:
        return ["(ceilings not measured)"]

    def med(path):
        vals = []
        for c in ceilings:
            v = c
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, (int, float)):
                vals.append(v)
        return statistics.median(vals) if vals else None

    def cell(path):
        v = med(path)
        return fmt(v, 0) if v is not None else "—"

    c0 = ceilings[0]
    lines = [f"| Ceiling (MB/s of input, median of {len(ceilings)}) | 1 core | 1 core, per CPU-s "
             f"| all {c0['threads']} cores |",
             "|---|---:|---:|---:|",
             f"| Page-cache read of the corpus | {cell(['page_cache_read', 'single_mbps'])} | "
             f"{cell(['page_cache_read', 'single_cpu_mbps'])} | {cell(['page_cache_read', 'all_mbps'])} |",
             f"| BLAKE3 keyed hash (1 MiB chunks) | {cell(['blake3_keyed', 'single_mbps'])} | "
             f"{cell(['blake3_keyed', 'single_cpu_mbps'])} | {cell(['blake3_keyed', 'all_mbps'])} |",
             f"| ChaCha20-Poly1305 seal | {cell(['chacha20poly1305_seal', 'single_mbps'])} | "
             f"{cell(['chacha20poly1305_seal', 'single_cpu_mbps'])} | {cell(['chacha20poly1305_seal', 'all_mbps'])} |"]
    for cat in c0["zstd"]:
        ratio = med(["zstd", cat, "ratio"])
        lines.append(f"| zstd -{c0['zstd_level']} compress, {cat} (ratio {ratio:.2f}) | "
                     f"{cell(['zstd', cat, 'compress_single_mbps'])} | {cell(['zstd', cat, 'compress_single_cpu_mbps'])} "
                     f"| {cell(['zstd', cat, 'compress_all_mbps'])} |")
    for cat in c0["zstd"]:
        lines.append(f"| zstd decompress, {cat} | {cell(['zstd', cat, 'decompress_single_mbps'])} | — | — |")
    lines.append(f"| fsync'd sequential write, 4 MiB writes ({c0['fsync_write'].get('bytes', 0) >> 20} MiB) | "
                 f"{cell(['fsync_write', 'mbps'])} | — | — |")
    lines.append(f"| **Pipeline** read+hash+zstd+seal | {cell(['pipeline', 'single_mbps'])} | "
                 f"{cell(['pipeline', 'single_cpu_mbps'])} | **{cell(['pipeline', 'ceiling_mbps'])}** = 1 core × "
                 f"{c0['threads']} (measured all-core: {cell(['pipeline', 'all_measured_mbps'])}) |")
    return lines


def report(meta: dict, results: list[dict], ceilings: list[dict], tools: list[str]) -> str:
    s = summarize(results, tools, ceilings)
    peers = [t for t in tools if t != "embassy"] if "embassy" in tools else []
    m = meta["machine"]
    L = [f"# Data Embassy benchmark — size `{meta['size']}`, {meta['runs']} run(s)", "",
         f"- Date: {meta['started']} (took {meta['elapsed_s'] / 60:.1f} min); repo {meta['git']}",
         f"- Machine: {m['cpu']}, {m['nproc']} cores, {m['memory']} RAM, kernel {m['kernel']}, {m['os']}; "
         f"disk {m['disk']}; load average at start {m['load_at_start']}",
         f"- Corpus: day 0 {meta['src_bytes']['day0'] / 1e6:,.1f} MB, day 1 {meta['src_bytes']['day1'] / 1e6:,.1f} MB "
         f"(du -sb); day 0 by part: " + ", ".join(f"{k} {v / 1e6:,.1f} MB" for k, v in meta['composition'].items()),
         f"- Corpus knobs: make {meta['knobs']['make'] or 'defaults'}, mutate {meta['knobs']['mutate'] or 'defaults'}, "
         f"seed {SEED}"]
    for t in tools:
        L.append(f"- {t}: `{meta['versions'][t]}` — {meta['settings'][t]}")
    L += ["", "Cells: median [min–max] over the runs. Ratios: embassy ÷ peer computed within each run, "
              "then the median [min–max] (below 1 is better for times, sizes and CPU; above 1 for MB/s).", ""]
    hdr = ["Metric"] + tools + [f"embassy/{p}" for p in peers]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" + "---:|" * (len(hdr) - 1))
    for key, label, unit, scale, dec in METRICS:
        row = [f"{label} ({unit})"]
        for t in tools:
            v = s["metrics"][key].get(t)
            if v is None:
                row.append("—")
            elif v["n"] == 1:
                row.append(fmt(v["median"] * scale, dec))
            else:
                row.append(f"{fmt(v['median'] * scale, dec)} [{fmt(v['min'] * scale, dec)}–{fmt(v['max'] * scale, dec)}]")
        for p in peers:
            rr = s["ratios"].get(key, {}).get(p)
            if rr is None:
                row.append("—")
            elif len(results) // len(tools) == 1:
                row.append(f"{rr['median']:.2f}")
            else:
                row.append(f"{rr['median']:.2f} [{rr['min']:.2f}–{rr['max']:.2f}]")
        L.append("| " + " | ".join(row) + " |")
    for fkey, label in (("ceiling_fraction", "Initial backup ÷ pipeline ceiling (wall, all cores)"),
                        ("cpu_fraction", "Initial backup MB per CPU-s ÷ pipeline MB per CPU-s (1 core)")):
        fr = s[fkey]
        if not fr:
            continue
        row = [label]
        for t in tools:
            v = fr.get(t)
            if v is None:
                row.append("—")
            elif v["min"] == v["max"]:
                row.append(f"{v['median']:.1%}")
            else:
                row.append(f"{v['median']:.1%} [{v['min']:.1%}–{v['max']:.1%}]")
        row += [""] * len(peers)
        L.append("| " + " | ".join(row) + " |")
    L += [""] + ceilings_table(ceilings)
    if ceilings:
        c0 = ceilings[0]
        L += ["", f"Pipeline ceiling = 1 / (1/read + 1/blake3 + Σ w·1/zstd + Σ w/(ratio·seal)) per core × "
                  f"{c0['threads']} cores, with w each part's share of the corpus bytes; zstd level "
                  f"{c0['zstd_level']} ({c0['zstd_level_source']}). It ignores chunking, dedup lookups, "
                  f"packing and writing the vault."]
    if "embassy" not in tools:
        L += ["", "_Data Embassy not measured in this run._"]
    L += ["", f"Raw results: `results.json`; logs: `logs/`. Command: `{meta['command']}`"]
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description="Data Embassy vs restic / borg / rustic "
                                 "benchmark; see bench/README.md")
    ap.add_argument("--size", choices=list(SIZES), default="small",
                    help="corpus size: tiny ~160 MB (smoke), small ~450 MB (default), full ~2.7 GB")
    ap.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    ap.add_argument("--out", type=Path, default=None, help="results dir (default bench/out/results-<time>)")
    ap.add_argument("--keep", action="store_true", help="keep the last run's repositories and working copies")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS),
                    help="comma-separated subset of embassy,restic,borg,rustic (rustic only if on PATH)")
    ap.add_argument("--corpus-dir", type=Path, default=None, help="corpus cache (default bench/out/corpus-<size>)")
    ap.add_argument("--embassy-bin", type=Path, default=None, help="use this embassy binary, do not build")
    ap.add_argument("--ceilings-bin", type=Path, default=None, help="use this embassy-ceilings binary, do not build")
    ap.add_argument("--no-ceilings", action="store_true")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing tools")
    ap.add_argument("--no-check", action="store_true", help="skip diff -r of each restore against day 1")
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if os.geteuid() != 0:
        raise BenchError("must run as root (the corpus scripts run PostgreSQL as postgres; apt-get installs)")
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in ALL_TOOLS]
    if bad or not tools:
        ap.error(f"unknown tools: {bad}" if bad else "no tools given")
    t_start = time.monotonic()
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    root = repo_root()
    scripts = shared_bench(root)
    out = (a.out or HERE / "out" / f"results-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    work_root = out / "work"

    if "rustic" in tools and not have("rustic"):
        log("rustic not on PATH: skipped")
        tools.remove("rustic")
    if not tools:
        raise BenchError("no tool left to measure")
    ensure_packages(a.no_install, tools)

    build = []
    if "embassy" in tools and a.embassy_bin is None:
        build.append("embassy")
    if not a.no_ceilings and a.ceilings_bin is None:
        build.append("embassy-bench-ceilings")
    rel = cargo_build(root, build) if build else None
    emb_exe = a.embassy_bin or (rel / "embassy" if rel else None)
    ceil_exe = None if a.no_ceilings else (a.ceilings_bin or rel / "embassy-ceilings")

    objs: dict[str, Tool] = {}
    for t in tools:
        w = work_root / t
        if t == "embassy":
            objs[t] = Embassy(w, emb_exe.resolve())
        elif t == "restic":
            objs[t] = Restic(w, have("restic"))
        elif t == "borg":
            objs[t] = Borg(w, have("borg"))
        elif t == "rustic":
            objs[t] = Rustic(w, have("rustic"))
    versions = {t: o.version() for t, o in objs.items()}
    for t, v in versions.items():
        log(f"{t}: {v}")

    cache = (a.corpus_dir or HERE / "out" / f"corpus-{a.size}").resolve()
    day0, day1 = build_corpus(cache, a.size, scripts)
    src_bytes = {"day0": du_bytes(day0), "day1": du_bytes(day1)}
    meta = {"size": a.size, "runs": a.runs, "started": started, "git": git_rev(root),
            "machine": machine_info(out), "versions": versions,
            "settings": {t: o.settings for t, o in objs.items()}, "knobs": SIZES[a.size],
            "src_bytes": src_bytes, "composition": composition(day0), "corpus": str(cache),
            "command": " ".join(["bench/run", *sys.argv[1:]]), "tools_order": tools}
    log(f"corpus day 0 {src_bytes['day0'] / 1e6:.1f} MB, day 1 {src_bytes['day1'] / 1e6:.1f} MB; "
        f"tools {', '.join(tools)}; {a.runs} run(s); results in {out}")

    results: list[dict] = []
    ceilings: list[dict] = []
    try:
        for run in range(1, a.runs + 1):
            log(f"run {run}/{a.runs}")
            warm(day0)
            warm(day1)
            if ceil_exe is not None:
                c = run_ceilings(ceil_exe, day0, work_root, a.size, logs, run)
                c["run"] = run
                ceilings.append(c)
            for t in tools:
                results.append(run_tool(objs[t], run, day0, day1, src_bytes, logs, not a.no_check))
                if not (a.keep and run == a.runs):
                    shutil.rmtree(objs[t].work, ignore_errors=True)
            (out / "results.json").write_text(json.dumps(
                {"meta": meta, "results": results, "ceilings": ceilings}, indent=1))
    finally:
        if not a.keep:
            shutil.rmtree(work_root, ignore_errors=True)
    meta["elapsed_s"] = time.monotonic() - t_start
    summary = summarize(results, tools, ceilings)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "results": results, "ceilings": ceilings, "summary": summary}, indent=1))
    md = report(meta, results, ceilings, tools)
    (out / "results.md").write_text(md)
    print(md)
    log(f"done in {meta['elapsed_s'] / 60:.1f} min: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"\nbench: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        sys.exit(130)
