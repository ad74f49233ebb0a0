//! `embassy-ceilings`: what this machine can do at best, for the benchmark in `bench/`.
//!
//! Measures, on samples of the benchmark corpus, single-core and all-core throughput of each stage of
//! the backup pipeline (page-cache read, keyed BLAKE3, zstd at our level, ChaCha20-Poly1305 seal) and
//! the fsync'd sequential write throughput of the target disk, then derives the pipeline ceiling:
//!
//! ```text
//! cost per source byte = 1/read + 1/blake3 + sum_c w_c/zstd_c + sum_c w_c/(ratio_c * aead)
//! pipeline ceiling     = 1/cost (single core), x cores for the all-core ceiling
//! ```
//!
//! where `c` runs over the corpus categories (db, dump, docs, scans), `w_c` is the category's share of
//! the corpus bytes and `ratio_c` its zstd ratio (the AEAD seals compressed bytes). Output is JSON on
//! stdout. Rates are in MB/s (10^6 bytes per second) of input bytes. Single-core rates are also given
//! per CPU-second of the measuring thread (`*_cpu_mbps`): on a busy machine the wall-clock rates drop,
//! those do not, and they are what a tool's "MB per CPU-second" compares with.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// The zstd level the pipeline uses, taken from the core library so the ceiling follows it.
const COMPRESSION_LEVEL: i32 = embassy_core::COMPRESSION_LEVEL;
const LEVEL_SOURCE: &str = "embassy_core::COMPRESSION_LEVEL";

const CATEGORIES: [&str; 4] = ["db", "dump", "docs", "scans"];
const MIB: usize = 1 << 20;

struct Opts {
    corpus: Option<PathBuf>,
    write_dir: PathBuf,
    sample_mib: usize,
    seconds: f64,
    threads: usize,
    chunk: usize,
    write_mib: usize,
    level: i32,
    read: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: embassy-ceilings [--corpus DIR] [--write-dir DIR] [--sample-mib N] [--seconds S]\n\
         \x20                       [--threads N] [--chunk-kib N] [--write-mib N] [--level L] [--no-read]\n\
         Prints JSON. --corpus is a corpus made by make-dataset.sh (db/ dump/ docs/ scans/); without it,\n\
         compression is measured on synthetic data only."
    );
    std::process::exit(2)
}

fn parse() -> Opts {
    let mut o = Opts {
        corpus: None,
        write_dir: PathBuf::from("."),
        sample_mib: 64,
        seconds: 1.0,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        chunk: MIB,
        write_mib: 256,
        level: COMPRESSION_LEVEL,
        read: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--corpus" => o.corpus = Some(PathBuf::from(val())),
            "--write-dir" => o.write_dir = PathBuf::from(val()),
            "--sample-mib" => o.sample_mib = val().parse().unwrap_or_else(|_| usage()),
            "--seconds" => o.seconds = val().parse().unwrap_or_else(|_| usage()),
            "--threads" => o.threads = val().parse().unwrap_or_else(|_| usage()),
            "--chunk-kib" => o.chunk = val().parse::<usize>().unwrap_or_else(|_| usage()) * 1024,
            "--write-mib" => o.write_mib = val().parse().unwrap_or_else(|_| usage()),
            "--level" => o.level = val().parse().unwrap_or_else(|_| usage()),
            "--no-read" => o.read = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if o.threads == 0 || o.chunk == 0 || o.sample_mib == 0 || o.write_mib == 0 {
        usage()
    }
    o
}

/// All regular files under `dir`, sorted by path, with their sizes.
fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(m) = e.metadata() {
                    out.push((e.path(), m.len()));
                }
            }
        }
    }
    out.sort();
    out
}

/// About `mib` MiB of `chunk`-sized pieces taken at evenly spaced offsets of the concatenation of the
/// files under `dir` (all of it when it is smaller). Pieces may span file boundaries.
fn sample(dir: &Path, mib: usize, chunk: usize) -> (u64, Vec<Vec<u8>>) {
    let files = walk(dir);
    let total: u64 = files.iter().map(|f| f.1).sum();
    if total == 0 {
        return (0, Vec::new());
    }
    let want = ((mib * MIB) / chunk).max(1) as u64;
    let k = want.min(total.div_ceil(chunk as u64));
    let stride = total / k;
    // pieces never overlap: a corpus part smaller than the sample is read once
    let chunk = chunk.min(stride as usize).max(1);
    let mut pieces = Vec::new();
    for i in 0..k {
        let mut off = i * stride;
        let mut piece = Vec::with_capacity(chunk);
        // find the file holding `off`, then read forward across files
        let mut acc = 0u64;
        for (p, len) in &files {
            if piece.len() >= chunk {
                break;
            }
            if off >= acc + len {
                acc += len;
                continue;
            }
            let within = off - acc;
            if let Ok(mut f) = File::open(p) {
                let n = ((len - within) as usize).min(chunk - piece.len());
                let start = piece.len();
                piece.resize(start + n, 0);
                if f.seek(SeekFrom::Start(within)).is_ok()
                    && f.read_exact(&mut piece[start..]).is_ok()
                {
                    off += n as u64;
                } else {
                    piece.truncate(start);
                }
            }
            acc += len;
        }
        if !piece.is_empty() {
            pieces.push(piece);
        }
    }
    (total, pieces)
}

/// Deterministic incompressible bytes.
fn noise(n: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new_keyed(&[seed; 32])
        .finalize_xof()
        .fill(&mut v);
    v
}

/// CPU time consumed by the calling thread, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_THREAD_CPUTIME_ID is valid on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A throughput in MB/s, per wall-clock second and per CPU-second of the measuring threads (the
/// latter does not drop when other processes compete for the cores).
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: f64,
}

/// Runs `work` (which processes one chunk and returns the input bytes it consumed) on `threads`
/// threads, each cycling over its own copy of `chunks`, for about `seconds`; returns the summed
/// per-thread rates.
fn rate<S, F>(
    chunks: &[Vec<u8>],
    threads: usize,
    seconds: f64,
    make: impl Fn() -> S + Sync,
    work: F,
) -> Rate
where
    F: Fn(&mut S, &mut Vec<u8>) -> usize + Sync,
{
    if chunks.is_empty() {
        return Rate {
            wall: 0.0,
            cpu: 0.0,
        };
    }
    let dur = Duration::from_secs_f64(seconds);
    let (wall, cpu): (f64, f64) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let work = &work;
                let make = &make;
                s.spawn(move || {
                    let mut st = make();
                    let mut local: Vec<Vec<u8>> = chunks.to_vec();
                    // one warm-up pass, not counted
                    for c in local.iter_mut() {
                        work(&mut st, c);
                    }
                    let t0 = Instant::now();
                    let c0 = thread_cpu_s();
                    let mut bytes = 0u64;
                    'outer: loop {
                        for c in local.iter_mut() {
                            bytes += work(&mut st, c) as u64;
                            if t0.elapsed() >= dur {
                                break 'outer;
                            }
                        }
                    }
                    let cpu = thread_cpu_s() - c0;
                    (bytes, t0.elapsed().as_secs_f64(), cpu)
                })
            })
            .collect();
        let rs: Vec<(u64, f64, f64)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        // aggregate rate = sum of per-thread rates (threads run over the same window)
        (
            rs.iter().map(|(b, t, _)| *b as f64 / t).sum(),
            rs.iter().map(|(b, _, c)| *b as f64 / c).sum(),
        )
    });
    Rate {
        wall: wall / 1e6,
        cpu: cpu / 1e6,
    }
}

fn blake3_rate(chunks: &[Vec<u8>], threads: usize, seconds: f64) -> Rate {
    let key = [7u8; 32];
    rate(
        chunks,
        threads,
        seconds,
        || (),
        |_, c| {
            std::hint::black_box(blake3::keyed_hash(&key, c));
            c.len()
        },
    )
}

fn aead_rate(chunks: &[Vec<u8>], threads: usize, seconds: f64) -> Rate {
    let key = Key::from([9u8; 32]);
    rate(
        chunks,
        threads,
        seconds,
        || (ChaCha20Poly1305::new(&key), 0u64),
        |(cipher, ctr), c| {
            *ctr += 1;
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&ctr.to_le_bytes());
            // seal in place (ciphertext of ciphertext on later passes: same cost)
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&n), b"", c)
                .expect("seal");
            std::hint::black_box(tag);
            c.len()
        },
    )
}

struct ZstdFig {
    ratio: f64,
    comp_single: Rate,
    comp_all: f64,
    decomp_single: f64,
}

fn zstd_figs(chunks: &[Vec<u8>], threads: usize, seconds: f64, level: i32) -> ZstdFig {
    let inb: usize = chunks.iter().map(|c| c.len()).sum();
    let mut cmp = zstd::bulk::Compressor::new(level).expect("zstd");
    let compressed: Vec<Vec<u8>> = chunks
        .iter()
        .map(|c| cmp.compress(c).expect("zstd"))
        .collect();
    let outb: usize = compressed.iter().map(|c| c.len()).sum();
    let make = || {
        (
            zstd::bulk::Compressor::new(level).expect("zstd"),
            Vec::<u8>::new(),
        )
    };
    let work = |(z, out): &mut (zstd::bulk::Compressor<'static>, Vec<u8>), c: &mut Vec<u8>| {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(c.len()));
        z.compress_to_buffer(c.as_slice(), out).expect("zstd");
        c.len()
    };
    let comp_single = rate(chunks, 1, seconds, make, work);
    let comp_all = if threads > 1 {
        rate(chunks, threads, seconds, make, work).wall
    } else {
        comp_single.wall
    };
    // decompression: rate in MB/s of *decompressed* bytes
    let maxlen = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    let pairs: Vec<Vec<u8>> = compressed;
    let decomp_single = rate(
        &pairs,
        1,
        seconds,
        || {
            (
                zstd::bulk::Decompressor::new().expect("zstd"),
                vec![0u8; maxlen],
            )
        },
        |(d, out), c| {
            d.decompress_to_buffer(c.as_slice(), out.as_mut_slice())
                .expect("zstd")
        },
    )
    .wall;
    ZstdFig {
        ratio: inb as f64 / outb.max(1) as f64,
        comp_single,
        comp_all,
        decomp_single,
    }
}

/// Page-cache read: one untimed pass to warm the cache, then a timed pass (single thread), then a
/// timed pass with the files dealt to `threads` threads.
fn read_figs(dir: &Path, threads: usize) -> (u64, Rate, f64) {
    let files = walk(dir);
    let total: u64 = files.iter().map(|f| f.1).sum();
    let read_list = |list: &[&(PathBuf, u64)]| -> u64 {
        let mut buf = vec![0u8; MIB];
        let mut n = 0u64;
        for (p, _) in list {
            if let Ok(mut f) = File::open(p) {
                while let Ok(k) = f.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k as u64;
                }
            }
        }
        n
    };
    let all: Vec<&(PathBuf, u64)> = files.iter().collect();
    read_list(&all);
    let t0 = Instant::now();
    let c0 = thread_cpu_s();
    let n = read_list(&all);
    let single = Rate {
        wall: n as f64 / t0.elapsed().as_secs_f64() / 1e6,
        cpu: n as f64 / (thread_cpu_s() - c0) / 1e6,
    };
    // deal files by size to balance the threads
    let mut sorted = all.clone();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.1));
    let mut parts: Vec<Vec<&(PathBuf, u64)>> = vec![Vec::new(); threads];
    let mut loads = vec![0u64; threads];
    for f in sorted {
        let i = (0..threads).min_by_key(|&i| loads[i]).unwrap();
        loads[i] += f.1;
        parts[i].push(f);
    }
    let t0 = Instant::now();
    let n: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = parts.iter().map(|p| s.spawn(|| read_list(p))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let all_rate = n as f64 / t0.elapsed().as_secs_f64() / 1e6;
    (total, single, all_rate)
}

/// Sequential write of `mib` MiB in 4 MiB writes, then fsync; MB/s including the fsync.
fn fsync_write(dir: &Path, mib: usize) -> std::io::Result<f64> {
    let path = dir.join(format!(".embassy-ceilings-{}.tmp", std::process::id()));
    let buf = noise(4 * MIB, 1);
    let t0 = Instant::now();
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut left = mib * MIB;
        while left > 0 {
            let n = left.min(buf.len());
            f.write_all(&buf[..n])?;
            left -= n;
        }
        f.sync_all()?;
        Ok::<_, std::io::Error>(())
    })();
    let secs = t0.elapsed().as_secs_f64();
    let _ = fs::remove_file(&path);
    res?;
    Ok((mib * MIB) as f64 / secs / 1e6)
}

fn jstr(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn jnum(x: f64) -> String {
    if x.is_finite() {
        format!("{:.3}", x)
    } else {
        "null".into()
    }
}

fn main() {
    let o = parse();
    let t_start = Instant::now();
    let sec = o.seconds;
    let th = o.threads;

    // Samples per category (synthetic fallbacks when no corpus is given).
    let mut cats: Vec<(&str, u64, Vec<Vec<u8>>)> = Vec::new();
    if let Some(c) = &o.corpus {
        for name in CATEGORIES {
            let (total, pieces) = sample(&c.join(name), o.sample_mib, o.chunk);
            if !pieces.is_empty() {
                cats.push((name, total, pieces));
            }
        }
    }
    if cats.is_empty() {
        let n = (o.sample_mib * MIB / o.chunk).max(1);
        let pieces: Vec<Vec<u8>> = (0..n).map(|i| noise(o.chunk, i as u8)).collect();
        cats.push(("synthetic-random", (n * o.chunk) as u64, pieces));
    }
    // hash and AEAD do not depend on content: measure them on up to 64 MiB of all samples
    let mixed: Vec<Vec<u8>> = cats
        .iter()
        .flat_map(|c| c.2.iter().cloned())
        .take(64 * MIB / o.chunk)
        .collect();

    let b3_1 = blake3_rate(&mixed, 1, sec);
    let b3_n = if th > 1 {
        blake3_rate(&mixed, th, sec).wall
    } else {
        b3_1.wall
    };
    let ae_1 = aead_rate(&mixed, 1, sec);
    let ae_n = if th > 1 {
        aead_rate(&mixed, th, sec).wall
    } else {
        ae_1.wall
    };
    let zs: Vec<(&str, u64, usize, ZstdFig)> = cats
        .iter()
        .map(|(n, total, p)| {
            (
                *n,
                *total,
                p.iter().map(|c| c.len()).sum(),
                zstd_figs(p, th, sec, o.level),
            )
        })
        .collect();
    let read = match (&o.corpus, o.read) {
        (Some(c), true) => Some(read_figs(c, th)),
        _ => None,
    };
    let write = fsync_write(&o.write_dir, o.write_mib);

    // Pipeline ceiling (see module docs).
    let corpus_total: u64 = zs.iter().map(|z| z.1).sum();
    let w = |t: u64| {
        if corpus_total > 0 {
            t as f64 / corpus_total as f64
        } else {
            0.0
        }
    };
    // `which`: 0 = single-core wall rates, 1 = single-core CPU-time rates, 2 = all-core wall rates
    let cost = |read_r: Option<f64>, b3: f64, ae: f64, which: u8| -> f64 {
        let mut c = 1.0 / b3;
        if let Some(r) = read_r {
            c += 1.0 / r;
        }
        for z in &zs {
            let zr = match which {
                0 => z.3.comp_single.wall,
                1 => z.3.comp_single.cpu,
                _ => z.3.comp_all,
            };
            c += w(z.1) / zr + w(z.1) / (z.3.ratio * ae);
        }
        c
    };
    let pipe_1 = 1.0 / cost(read.map(|r| r.1.wall), b3_1.wall, ae_1.wall, 0);
    let pipe_1_cpu = 1.0 / cost(read.map(|r| r.1.cpu), b3_1.cpu, ae_1.cpu, 1);
    let pipe_cores = pipe_1 * th as f64;
    let pipe_meas = 1.0 / cost(read.map(|r| r.2), b3_n, ae_n, 2);
    let overall_ratio = {
        let out: f64 = zs.iter().map(|z| w(z.1) / z.3.ratio).sum();
        if out > 0.0 {
            1.0 / out
        } else {
            f64::NAN
        }
    };

    let mut j = String::from("{\n");
    j += "  \"tool\": \"embassy-ceilings\",\n";
    j += &format!("  \"version\": {},\n", jstr(env!("CARGO_PKG_VERSION")));
    j += "  \"units\": \"MB/s = 10^6 input bytes per second\",\n";
    j += &format!(
        "  \"zstd_level\": {},\n  \"zstd_level_source\": {},\n",
        o.level,
        jstr(LEVEL_SOURCE)
    );
    j += &format!(
        "  \"threads\": {},\n  \"chunk_bytes\": {},\n  \"seconds_per_measure\": {},\n",
        th, o.chunk, sec
    );
    j += &format!(
        "  \"corpus\": {},\n",
        o.corpus
            .as_ref()
            .map(|p| jstr(&p.display().to_string()))
            .unwrap_or("null".into())
    );
    j += &format!(
        "  \"blake3_keyed\": {{\"single_mbps\": {}, \"single_cpu_mbps\": {}, \"all_mbps\": {}}},\n",
        jnum(b3_1.wall),
        jnum(b3_1.cpu),
        jnum(b3_n)
    );
    j += &format!(
        "  \"chacha20poly1305_seal\": {{\"single_mbps\": {}, \"single_cpu_mbps\": {}, \"all_mbps\": {}}},\n",
        jnum(ae_1.wall),
        jnum(ae_1.cpu),
        jnum(ae_n)
    );
    j += "  \"zstd\": {\n";
    let zl: Vec<String> = zs
        .iter()
        .map(|(n, total, sb, f)| {
            format!(
                "    {}: {{\"corpus_bytes\": {}, \"sample_bytes\": {}, \"ratio\": {}, \"compress_single_mbps\": {}, \"compress_single_cpu_mbps\": {}, \"compress_all_mbps\": {}, \"decompress_single_mbps\": {}}}",
                jstr(n), total, sb, jnum(f.ratio), jnum(f.comp_single.wall), jnum(f.comp_single.cpu), jnum(f.comp_all), jnum(f.decomp_single)
            )
        })
        .collect();
    j += &zl.join(",\n");
    j += "\n  },\n";
    match read {
        Some((bytes, s1, sn)) => {
            j += &format!(
            "  \"page_cache_read\": {{\"bytes\": {}, \"single_mbps\": {}, \"single_cpu_mbps\": {}, \"all_mbps\": {}}},\n",
            bytes,
            jnum(s1.wall),
            jnum(s1.cpu),
            jnum(sn)
        )
        }
        None => j += "  \"page_cache_read\": null,\n",
    }
    match &write {
        Ok(r) => {
            j += &format!(
                "  \"fsync_write\": {{\"dir\": {}, \"bytes\": {}, \"write_size\": {}, \"mbps\": {}}},\n",
                jstr(&o.write_dir.display().to_string()),
                o.write_mib * MIB,
                4 * MIB,
                jnum(*r)
            )
        }
        Err(e) => j += &format!("  \"fsync_write\": {{\"error\": {}}},\n", jstr(&e.to_string())),
    }
    j += &format!(
        "  \"pipeline\": {{\"formula\": {}, \"zstd_ratio_weighted\": {}, \"single_mbps\": {}, \"ceiling_mbps\": {}, \"single_cpu_mbps\": {}, \"all_measured_mbps\": {}, \"includes_read\": {}}},\n",
        jstr("1/(1/read + 1/blake3 + sum_c w_c/zstd_c + sum_c w_c/(ratio_c*aead)); ceiling = single x threads"),
        jnum(overall_ratio),
        jnum(pipe_1),
        jnum(pipe_cores),
        jnum(pipe_1_cpu),
        jnum(pipe_meas),
        read.is_some()
    );
    j += &format!(
        "  \"elapsed_s\": {}\n}}\n",
        jnum(t_start.elapsed().as_secs_f64())
    );
    print!("{j}");
}
