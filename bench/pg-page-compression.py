#!/usr/bin/env python3
"""How small can a PostgreSQL data directory's relation pages be stored? (issue 18, smaller vaults)

  bench/pg-page-compression.py DAY0_DB DAY1_DB [FRAME_PAGES ...]

Relation files are cut into 8 KiB pages so that unchanged pages dedup; each new page is stored
as one blob compressed on its own with zstd level 3, which loses to tools that compress large
content-defined chunks. This compares, over the same pages (libzstd through ctypes, no Python
packages):

- day 0 (initial backup): every distinct page (a) on its own, (b) on its own with a zstd
  dictionary trained on 4,000 of the day's pages, (c) in frames of N consecutive new pages of a
  file compressed together (one blob id per page kept, so dedup stays page by page), and the
  whole relation files compressed in 1 MiB pieces (what content-defined chunks get);
- day 1 (a day of change): every page new since day 0 (a) on its own, (b) with the day-0
  dictionary, (c) in frames of consecutive new pages, and (d) as a delta against the page at the
  same place of the same file on day 0 (zstd with that page as a raw-content dictionary): what a
  writer could store if it read the previous version's page back from the vault; (e) the same
  delta kept only where it is smaller than the page alone (what the writer of format 6 does);
  (f) XOR with the day-0 page, then zstd. Deltas are timed (CPU seconds of this process, libzstd
  through ctypes: compare the two methods with each other, not with the Rust writer).

Prints megabytes (10^6 bytes); per-blob overhead (tag, index and tree entries) is not counted.
"""
import ctypes
import ctypes.util
import hashlib
import os
import random
import re
import sys
import time

PAGE = 8192
LEVEL = 3
REL = re.compile(r"(^|/)(base/\d+|global|PG_\d+_\d+/\d+)/(\d+)(_fsm|_vm|_init)?(\.\d+)?$")

lib = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
for name in ["ZSTD_compressBound", "ZSTD_compress", "ZSTD_compress_usingDict", "ZDICT_trainFromBuffer"]:
    getattr(lib, name).restype = ctypes.c_size_t
lib.ZSTD_createCCtx.restype = ctypes.c_void_p
lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
CCTX = lib.ZSTD_createCCtx()
OUT = ctypes.create_string_buffer(lib.ZSTD_compressBound(256 * PAGE))


def zlen(data: bytes, dictionary: bytes = b"") -> int:
    if dictionary:
        n = lib.ZSTD_compress_usingDict(ctypes.c_void_p(CCTX), OUT, len(OUT), data, len(data),
                                        dictionary, len(dictionary), LEVEL)
    else:
        n = lib.ZSTD_compress(OUT, len(OUT), data, len(data), LEVEL)
    if lib.ZSTD_isError(n):
        sys.exit("zstd failed")
    return n


def train(samples: list, size: int) -> bytes:
    joined = b"".join(samples)
    sizes = (ctypes.c_size_t * len(samples))(*map(len, samples))
    buf = ctypes.create_string_buffer(size)
    n = lib.ZDICT_trainFromBuffer(buf, size, joined, sizes, len(samples))
    if lib.ZSTD_isError(n):
        sys.exit("dictionary training failed")
    return buf.raw[:n]


def relation_files(root: str) -> list:
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), root)
            if REL.search(rel):
                found.append(rel)
    return sorted(found)


def pages(path: str) -> list:
    with open(path, "rb") as f:
        data = f.read()
    return [data[i:i + PAGE] for i in range(0, len(data), PAGE)]


def frames(runs: list, n: int, dictionary: bytes = b"") -> int:
    return sum(zlen(b"".join(r[i:i + n]), dictionary) for r in runs for i in range(0, len(r), n))


def mb(n: int) -> str:
    return f"{n / 1e6:9.1f}"


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    day0, day1 = sys.argv[1], sys.argv[2]
    sizes = [int(a) for a in sys.argv[3:]] or [8, 32]
    seen, runs0, whole = set(), [], 0
    files0 = relation_files(day0)
    for rel in files0:
        run = []
        with open(os.path.join(day0, rel), "rb") as f:
            data = f.read()
        whole += sum(zlen(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20))
        for p in [data[i:i + PAGE] for i in range(0, len(data), PAGE)]:
            h = hashlib.blake2b(p, digest_size=16).digest()
            if h in seen:
                if run:
                    runs0.append(run)
                run = []
                continue
            seen.add(h)
            run.append(p)
        if run:
            runs0.append(run)
    new0 = [p for r in runs0 for p in r]
    random.seed(1)
    dictionary = train(random.sample(new0, min(4000, len(new0))), 112 * 1024)
    print(f"day 0: {len(files0)} relation files, {len(new0)} distinct pages ({mb(len(new0) * PAGE).strip()} MB)")
    print(f"  page by page             {mb(sum(zlen(p) for p in new0))} MB")
    print(f"  page by page, dictionary {mb(sum(zlen(p, dictionary) for p in new0) + len(dictionary))} MB")
    for n in sizes:
        print(f"  frames of {n:3} pages      {mb(frames(runs0, n))} MB")
    print(f"  whole files, 1 MiB       {mb(whole)} MB")
    runs1, delta, kept, xor = [], 0, 0, 0
    t_dict = t_xor = 0.0
    for rel in relation_files(day1):
        old_path = os.path.join(day0, rel)
        old = pages(old_path) if os.path.exists(old_path) else []
        run = []
        for i, p in enumerate(pages(os.path.join(day1, rel))):
            h = hashlib.blake2b(p, digest_size=16).digest()
            if h in seen:
                if run:
                    runs1.append(run)
                run = []
                continue
            seen.add(h)
            run.append(p)
            alone = zlen(p)
            if i < len(old) and len(old[i]) == PAGE:
                t0 = time.process_time()
                d = zlen(p, old[i])
                t1 = time.process_time()
                x = zlen((int.from_bytes(p, "little") ^ int.from_bytes(old[i], "little")).to_bytes(PAGE, "little"))
                t2 = time.process_time()
                t_dict += t1 - t0
                t_xor += t2 - t1
            else:
                d = x = alone
            delta += d
            xor += x
            kept += min(d, alone)
        if run:
            runs1.append(run)
    new1 = [p for r in runs1 for p in r]
    print(f"day 1: {len(new1)} new pages ({mb(len(new1) * PAGE).strip()} MB) in {len(runs1)} runs")
    print(f"  page by page             {mb(sum(zlen(p) for p in new1))} MB")
    print(f"  page by page, dictionary {mb(sum(zlen(p, dictionary) for p in new1))} MB")
    for n in sizes:
        print(f"  frames of {n:3} pages      {mb(frames(runs1, n))} MB")
    print(f"  delta against day 0      {mb(delta)} MB  ({t_dict:.2f} s CPU)")
    print(f"  delta, kept when smaller {mb(kept)} MB")
    print(f"  XOR with day 0, zstd     {mb(xor)} MB  ({t_xor:.2f} s CPU, XOR in Python included)")


if __name__ == "__main__":
    main()
