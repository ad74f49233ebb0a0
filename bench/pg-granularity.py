#!/usr/bin/env python3
"""Which page-aligned chunk size stores a day of change of a PostgreSQL data directory best?

  bench/pg-granularity.py DAY0_DB DAY1_DB [PAGES_PER_CHUNK ...]

For each chunk size (in 8 KiB pages, default 1 2 4 8 16 128), splits every relation file of day 1
(base/*/NNN, global/NNN, pg_tblspc/..., forks and segments) into aligned chunks, and sums what the
chunks that differ from day 0 at the same place cost when each is compressed on its own with zstd
level 3 (as Data Embassy stores a blob), plus an estimated per-chunk overhead (index entry, pack
directory entry, AEAD tag, chunk id in the tree: PER_CHUNK bytes). Unchanged chunks dedup. Uses
libzstd through ctypes (no Python packages needed).
"""
import ctypes
import ctypes.util
import os
import re
import sys

PAGE = 8192
PER_CHUNK = 150
LEVEL = int(os.environ.get("ZSTD_LEVEL", "3"))
REL = re.compile(r"(^|/)(base/\d+|global|PG_\d+_\d+/\d+)/(\d+)(_fsm|_vm|_init)?(\.\d+)?$")

lib = ctypes.CDLL(ctypes.util.find_library("zstd") or "libzstd.so.1")
lib.ZSTD_compressBound.restype = ctypes.c_size_t
lib.ZSTD_compress.restype = ctypes.c_size_t
lib.ZSTD_compress.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
OUT = ctypes.create_string_buffer(lib.ZSTD_compressBound(128 * PAGE))


def zlen(b: bytes) -> int:
    n = lib.ZSTD_compress(OUT, len(OUT), b, len(b), LEVEL)
    return min(n, len(b)) + 1


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    d0, d1 = sys.argv[1], sys.argv[2]
    sizes = [int(x) for x in sys.argv[3:]] or [1, 2, 4, 8, 16, 128]
    tot = {g: [0, 0, 0] for g in sizes}  # chunks, changed chunks, stored bytes
    raw_changed_pages = 0
    for root, _, files in os.walk(d1):
        for f in files:
            p1 = os.path.join(root, f)
            rel = os.path.relpath(p1, d1)
            if not REL.search(rel):
                continue
            p0 = os.path.join(d0, rel)
            b1 = open(p1, "rb").read()
            b0 = open(p0, "rb").read() if os.path.exists(p0) else b""
            for g in sizes:
                step = g * PAGE
                seen = set()
                for off in range(0, len(b1), step):
                    c = b1[off:off + step]
                    tot[g][0] += 1
                    if b0[off:off + step] == c or c in seen:
                        continue
                    seen.add(c)
                    tot[g][1] += 1
                    tot[g][2] += zlen(c) + PER_CHUNK
            for off in range(0, len(b1), PAGE):
                if b0[off:off + PAGE] != b1[off:off + PAGE]:
                    raw_changed_pages += 1
    print(f"changed 8 KiB pages: {raw_changed_pages} ({raw_changed_pages * PAGE / 1e6:.0f} MB raw)")
    print("pages/chunk  chunks  changed  stored MB (zstd-3 per chunk + overhead)")
    for g in sizes:
        c, ch, b = tot[g]
        print(f"{g:11d} {c:7d} {ch:8d}  {b / 1e6:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
