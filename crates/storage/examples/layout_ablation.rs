//! The storage-layout ablation of docs/adr/0001-record-data-layout.md: the same durable
//! write and catch-up read workload against three ways of laying out partition data.
//!
//! - `sled`: one sled value per batch (the layout of `sled_store`), 8 MiB segments.
//! - `sled-1m`: the same with values four times larger (several batches per value).
//! - `segments`: the batch bytes appended to one file per partition, with sled holding only
//!   a small index entry per batch (base offset -> file position).
//!
//! Each writes `--mib` MiB of `--batch-kib` KiB batches round-robin over `--partitions`
//! partitions and makes every `--group` batches durable at once (group commit, as acks=all
//! does), then drops the page cache when it can (root), reopens, and reads everything back in
//! log order. Run: `cargo run --release -p sluice-storage --example layout_ablation`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    mib: usize,
    batch_kib: usize,
    partitions: usize,
    group: usize,
    dir: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut a = Args { mib: 1024, batch_kib: 256, partitions: 8, group: 16, dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        let num = |s: String| s.parse::<usize>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--mib" => a.mib = num(v()?)?,
            "--batch-kib" => a.batch_kib = num(v()?)?,
            "--partitions" => a.partitions = num(v()?)?.max(1),
            "--group" => a.group = num(v()?)?.max(1),
            "--dir" => a.dir = Some(PathBuf::from(v()?)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Empties the kernel's page cache, so reads come from the disk; false when not allowed.
fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn sled_db(dir: &Path) -> sled::Result<sled::Db> {
    sled::Config::new().path(dir).cache_capacity(256 << 20).segment_size(8 << 20).flush_every_ms(None).open()
}

/// The batch written for (partition, n): its first bytes name it, the rest is filler.
fn batch(buf: &mut [u8], p: usize, n: u64) {
    buf[..8].copy_from_slice(&n.to_be_bytes());
    buf[8..16].copy_from_slice(&(p as u64).to_be_bytes());
}

trait Layout {
    fn append(&mut self, p: usize, n: u64, data: &[u8]) -> Result<(), String>;
    fn sync(&mut self) -> Result<(), String>;
    /// Reads every partition back in order; returns the bytes read.
    fn read_all(&mut self) -> Result<u64, String>;
}

type Opener<'a> = &'a dyn Fn() -> Result<Box<dyn Layout>, String>;

/// Opens again what was just closed: sled's threads may hold the lock file for a moment
/// after the last handle goes.
fn reopen(open: Opener) -> Result<Box<dyn Layout>, String> {
    let mut last = String::new();
    for _ in 0..100 {
        match open() {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(format!("could not reopen the store: {last}"))
}

struct SledValues {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl SledValues {
    fn open(dir: &Path, partitions: usize) -> Result<Self, String> {
        let db = sled_db(dir).map_err(|e| e.to_string())?;
        let trees = (0..partitions).map(|p| db.open_tree(format!("log/{p}"))).collect::<Result<_, _>>();
        Ok(Self { trees: trees.map_err(|e| e.to_string())?, db })
    }
}

impl Layout for SledValues {
    fn append(&mut self, p: usize, n: u64, data: &[u8]) -> Result<(), String> {
        self.trees[p].insert(n.to_be_bytes(), data).map(|_| ()).map_err(|e| e.to_string())
    }
    fn sync(&mut self) -> Result<(), String> {
        self.db.flush().map(|_| ()).map_err(|e| e.to_string())
    }
    fn read_all(&mut self) -> Result<u64, String> {
        let mut total = 0u64;
        for t in &self.trees {
            for kv in t.iter() {
                let (_, v) = kv.map_err(|e| e.to_string())?;
                total += v.len() as u64;
            }
        }
        Ok(total)
    }
}

struct Segments {
    dir: PathBuf,
    files: Vec<File>,
    ends: Vec<u64>,
    index: sled::Db,
    trees: Vec<sled::Tree>,
}

impl Segments {
    fn open(dir: &Path, partitions: usize) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let index = sled_db(&dir.join("index")).map_err(|e| e.to_string())?;
        let mut files = Vec::new();
        let mut ends = Vec::new();
        let mut trees = Vec::new();
        for p in 0..partitions {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(dir.join(format!("{p}.log")))
                .map_err(|e| e.to_string())?;
            ends.push(f.metadata().map_err(|e| e.to_string())?.len());
            files.push(f);
            trees.push(index.open_tree(format!("idx/{p}")).map_err(|e| e.to_string())?);
        }
        Ok(Self { dir: dir.to_path_buf(), files, ends, index, trees })
    }
}

impl Layout for Segments {
    fn append(&mut self, p: usize, n: u64, data: &[u8]) -> Result<(), String> {
        self.files[p].write_all(data).map_err(|e| e.to_string())?;
        let mut entry = [0u8; 12];
        entry[..8].copy_from_slice(&self.ends[p].to_be_bytes());
        entry[8..].copy_from_slice(&(data.len() as u32).to_be_bytes());
        self.ends[p] += data.len() as u64;
        self.trees[p].insert(n.to_be_bytes(), &entry[..]).map(|_| ()).map_err(|e| e.to_string())
    }
    fn sync(&mut self) -> Result<(), String> {
        // The data first, then the index that points at it.
        for f in &self.files {
            f.sync_data().map_err(|e| e.to_string())?;
        }
        self.index.flush().map(|_| ()).map_err(|e| e.to_string())
    }
    fn read_all(&mut self) -> Result<u64, String> {
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for p in 0..self.files.len() {
            let mut f = File::open(self.dir.join(format!("{p}.log"))).map_err(|e| e.to_string())?;
            loop {
                let n = f.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        Ok(total)
    }
}

fn run(name: &str, open: Opener, a: &Args, batch_bytes: usize, dir: &Path) -> Result<(), String> {
    let mut layout = open()?;
    let total = a.mib << 20;
    let batches = total / batch_bytes;
    let mut data = vec![7u8; batch_bytes];
    let mut next = vec![0u64; a.partitions];
    let started = Instant::now();
    for i in 0..batches {
        let p = i % a.partitions;
        batch(&mut data, p, next[p]);
        layout.append(p, next[p], &data)?;
        next[p] += 1;
        if (i + 1) % a.group == 0 {
            layout.sync()?;
        }
    }
    layout.sync()?;
    let write = started.elapsed().as_secs_f64();
    drop(layout);
    let mut layout = reopen(open)?;
    let cold = drop_caches();
    let started = Instant::now();
    let read = layout.read_all()?;
    let read_s = started.elapsed().as_secs_f64();
    let mb = |bytes: f64, s: f64| bytes / 1e6 / s;
    println!(
        "{{\"layout\":\"{name}\",\"batch_bytes\":{batch_bytes},\"written_mb\":{:.0},\"write_mb_per_sec\":{:.1},\"read_mb_per_sec\":{:.1},\"read_cold\":{cold},\"disk_mb\":{:.0}}}",
        total as f64 / 1e6,
        mb(total as f64, write),
        mb(read as f64, read_s),
        dir_size(dir) as f64 / 1e6
    );
    if read < total as u64 {
        return Err(format!("{name}: read {read} bytes of {total}"));
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let a = args()?;
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sluice-layout-{}", std::process::id())),
    };
    let batch = a.batch_kib << 10;
    for (name, batch_bytes) in [("sled", batch), ("sled-1m", batch * 4), ("segments", batch)] {
        let dir = base.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let open = || -> Result<Box<dyn Layout>, String> {
            Ok(match name {
                "segments" => Box::new(Segments::open(&dir, a.partitions)?),
                _ => Box::new(SledValues::open(&dir, a.partitions)?),
            })
        };
        run(name, &open, &a, batch_bytes, &dir)?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
