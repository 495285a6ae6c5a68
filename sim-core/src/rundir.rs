//! A run's directory, `<runs>/<run-id>/`: everything needed to understand, resume and
//! re-check a run after the fact.
//!
//! ```text
//! config.yaml        the effective configuration (defaults filled in, seed and duration applied)
//! seed               the seed, alone on a line
//! events.log         what happened, appended as it happens (faults, exits, anomalies, resumes)
//! checkpoints/       ckpt-<generation>.json: periodic snapshots of the coordinator's state
//! final.json         the state at the end (same format): `simctl report --run-dir` re-judges it
//! report.txt|json|junit.xml   the verdict
//! ```
//!
//! Checkpoint files are written crash-safe: to a temporary file, fsynced, renamed over the
//! final name, and the directory fsynced, so a file with a checkpoint's name is complete.
//! Each starts with a header line carrying a format version, the body's length and its
//! xxh3 checksum; a reader skips any file whose checksum does not match (a disk that lied)
//! and falls back to the previous generation. The last [`KEEP_CHECKPOINTS`] are kept.
//!
//! `checkpointing.path` (default `./checkpoints`) is resolved against the run directory
//! when relative; an absolute path gets a `<run-id>` subdirectory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checkpoint generations kept on disk.
pub const KEEP_CHECKPOINTS: usize = 3;

/// First token of a checkpoint file's header line.
const MAGIC: &str = "parti-sim-checkpoint";
/// Version of the checkpoint format (the header's second token).
pub const FORMAT_VERSION: u32 = 1;

/// What went wrong with a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file is damaged or of another format.
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No usable checkpoint.
    #[error("no valid checkpoint in {0}")]
    NoCheckpoint(PathBuf),
    /// The run directory exists already: another run took this id.
    #[error("{0} exists already")]
    Taken(PathBuf),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RunDirError + 'a {
    move |source| RunDirError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
    checkpoints: PathBuf,
}

impl RunDir {
    /// The directory of `run_id` under `runs`, with checkpoints where `checkpoint_path`
    /// says. Nothing is created yet.
    pub fn new(runs: &Path, run_id: &str, checkpoint_path: &Path) -> Self {
        let root = runs.join(run_id);
        let checkpoints = if checkpoint_path.is_absolute() {
            checkpoint_path.join(run_id)
        } else {
            root.join(checkpoint_path)
        };
        Self { root, checkpoints }
    }

    /// An existing run directory (for resume and offline reports), checkpoints where its
    /// config put them.
    pub fn open(root: &Path, checkpoint_path: &Path) -> Self {
        let run_id = root
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let checkpoints = if checkpoint_path.is_absolute() {
            checkpoint_path.join(run_id)
        } else {
            root.join(checkpoint_path)
        };
        Self {
            root: root.to_path_buf(),
            checkpoints,
        }
    }

    /// The run directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where checkpoints go.
    pub fn checkpoints(&self) -> &Path {
        &self.checkpoints
    }

    /// Create the directories and write the run's effective config and seed.
    /// The root is created exclusively, so two runs never share a directory: if it exists,
    /// [`RunDirError::Taken`] (and nothing is written).
    pub fn create(&self, config_yaml: &str, seed: u64) -> Result<(), RunDirError> {
        if let Some(parent) = self.root.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        match fs::create_dir(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RunDirError::Taken(self.root.clone()));
            }
            result => result.map_err(io("creating", &self.root))?,
        }
        fs::create_dir_all(&self.checkpoints).map_err(io("creating", &self.checkpoints))?;
        write_atomic(&self.root.join("config.yaml"), config_yaml.as_bytes())?;
        write_atomic(&self.root.join("seed"), format!("{seed}\n").as_bytes())
    }

    /// Append lines to `events.log`.
    ///
    /// # Errors
    /// Any file error, naming the path.
    pub fn append_events<'a>(
        &self,
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), RunDirError> {
        let path = self.root.join("events.log");
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        if text.is_empty() {
            return Ok(());
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        file.write_all(text.as_bytes())
            .map_err(io("appending to", &path))
    }

    /// Write a report file (`report.txt`, ...) or `final.json`.
    ///
    /// # Errors
    /// Any file error, naming the path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), RunDirError> {
        write_atomic(&self.root.join(name), contents)
    }

    /// Whether the run finished (its report exists).
    pub fn finished(&self) -> bool {
        self.root.join("report.json").exists()
    }

    /// Write checkpoint `generation` and drop all but the newest [`KEEP_CHECKPOINTS`].
    /// Returns the file written.
    ///
    /// # Errors
    /// Any file error, naming the path.
    pub fn write_checkpoint(&self, generation: u64, body: &[u8]) -> Result<PathBuf, RunDirError> {
        let path = self.checkpoints.join(format!("ckpt-{generation:010}.json"));
        write_atomic(&path, &framed(body))?;
        let mut old = self.generations()?;
        old.sort_unstable();
        let excess = old.len().saturating_sub(KEEP_CHECKPOINTS);
        for (_, stale) in old.into_iter().take(excess) {
            let _ = fs::remove_file(stale);
        }
        Ok(path)
    }

    /// Write the final state (same framing as a checkpoint).
    ///
    /// # Errors
    /// Any file error, naming the path.
    pub fn write_final(&self, body: &[u8]) -> Result<(), RunDirError> {
        write_atomic(&self.root.join("final.json"), &framed(body))
    }

    /// The final state's body.
    ///
    /// # Errors
    /// Missing or damaged file.
    pub fn read_final(&self) -> Result<Vec<u8>, RunDirError> {
        read_framed(&self.root.join("final.json"))
    }

    /// The newest checkpoint whose checksum verifies: (generation, body). Damaged newer
    /// ones are skipped (and named in the log).
    ///
    /// # Errors
    /// [`RunDirError::NoCheckpoint`] when none is usable.
    pub fn latest_checkpoint(&self) -> Result<(u64, Vec<u8>), RunDirError> {
        let mut all = self.generations()?;
        all.sort_unstable();
        for (generation, path) in all.into_iter().rev() {
            match read_framed(&path) {
                Ok(body) => return Ok((generation, body)),
                Err(error) => tracing::warn!(%error, "checkpoint skipped"),
            }
        }
        Err(RunDirError::NoCheckpoint(self.checkpoints.clone()))
    }

    fn generations(&self) -> Result<Vec<(u64, PathBuf)>, RunDirError> {
        let entries = match fs::read_dir(&self.checkpoints) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io("listing", &self.checkpoints)(error)),
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let generation = name
                    .strip_prefix("ckpt-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((generation, entry.path()))
            })
            .collect())
    }
}

/// The newest run directory under `runs` that has a checkpoint and no report, for a resume
/// without a named run; `matches` filters by the run's own config.yaml text.
pub fn latest_unfinished(runs: &Path, matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(runs)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("config.yaml").exists() && !path.join("report.json").exists())
        .filter(|path| {
            fs::read_to_string(path.join("config.yaml")).is_ok_and(|text| matches(&text))
        })
        .filter_map(|path| {
            let modified = fs::metadata(path.join("events.log"))
                .or_else(|_| fs::metadata(path.join("config.yaml")))
                .and_then(|m| m.modified())
                .ok()?;
            Some((modified, path))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, path)| path)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let header = format!(
        "{MAGIC} {FORMAT_VERSION} {} {:016x}\n",
        body.len(),
        xxhash_rust::xxh3::xxh3_64(body)
    );
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

fn read_framed(path: &Path) -> Result<Vec<u8>, RunDirError> {
    let corrupt = |why: String| RunDirError::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let data = fs::read(path).map_err(io("reading", path))?;
    let newline = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header =
        std::str::from_utf8(&data[..newline]).map_err(|_| corrupt("header is not text".into()))?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, length, checksum] = fields[..] else {
        return Err(corrupt(format!("bad header {header:?}")));
    };
    if magic != MAGIC {
        return Err(corrupt(format!("not a checkpoint (header {header:?})")));
    }
    if version != FORMAT_VERSION.to_string() {
        return Err(corrupt(format!(
            "format {version}, this coordinator reads {FORMAT_VERSION}"
        )));
    }
    let body = &data[newline + 1..];
    if length.parse::<usize>().ok() != Some(body.len()) {
        return Err(corrupt(format!(
            "truncated: header says {length} bytes, {} present",
            body.len()
        )));
    }
    let actual = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(body));
    if actual != checksum {
        return Err(corrupt(format!(
            "checksum {actual} does not match the header's {checksum}"
        )));
    }
    Ok(body.to_vec())
}

/// Write `contents` to `path` so that `path` is either the old or the whole new file, and
/// durable once this returns: temporary file, fsync, rename, fsync of the directory.
///
/// # Errors
/// Any file error, naming the path.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), RunDirError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(contents).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, RunDir) {
        let temp = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(temp.path(), "run-1", Path::new("./checkpoints"));
        run.create("simulation: {}\n", 7).expect("create");
        (temp, run)
    }

    #[test]
    fn keeps_the_newest_generations_and_reads_the_latest() {
        let (_temp, run) = dir();
        for generation in 1..=5u64 {
            run.write_checkpoint(generation, format!("body {generation}").as_bytes())
                .expect("write");
        }
        let mut kept: Vec<u64> = run
            .generations()
            .expect("list")
            .into_iter()
            .map(|g| g.0)
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![3, 4, 5]);
        assert_eq!(
            run.latest_checkpoint().expect("latest"),
            (5, b"body 5".to_vec())
        );
        assert_eq!(
            fs::read_to_string(run.root().join("seed")).expect("seed"),
            "7\n"
        );
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous() {
        let (_temp, run) = dir();
        run.write_checkpoint(1, b"good").expect("write");
        let newest = run.write_checkpoint(2, b"newer").expect("write");
        // Flip one byte of the body: the checksum no longer matches.
        let mut data = fs::read(&newest).expect("read");
        let last = data.len() - 1;
        data[last] ^= 0x20;
        fs::write(&newest, &data).expect("damage");
        assert_eq!(
            run.latest_checkpoint().expect("fallback"),
            (1, b"good".to_vec())
        );
        // A truncated file is refused with the reason.
        fs::write(&newest, &data[..data.len() - 2]).expect("truncate");
        let error = read_framed(&newest).expect_err("truncated");
        assert!(error.to_string().contains("truncated"), "{error}");
        fs::remove_file(run.checkpoints().join("ckpt-0000000001.json")).expect("rm");
        assert!(matches!(
            run.latest_checkpoint(),
            Err(RunDirError::NoCheckpoint(_))
        ));
    }

    #[test]
    fn an_absolute_checkpoint_path_gets_a_run_subdirectory() {
        let run = RunDir::new(Path::new("runs"), "run-9", Path::new("/var/ckpt"));
        assert_eq!(run.checkpoints(), Path::new("/var/ckpt/run-9"));
        assert_eq!(run.root(), Path::new("runs/run-9"));
    }

    #[test]
    fn latest_unfinished_skips_finished_runs_and_other_configs() {
        let temp = tempfile::tempdir().expect("tempdir");
        // Explicit modification times: "newest" must not depend on the clock's resolution.
        let make = |id: &str, config: &str, finished: bool, age_s: u64| {
            let run = RunDir::new(temp.path(), id, Path::new("./checkpoints"));
            run.create(config, 1).expect("create");
            run.append_events(["started"]).expect("events");
            if finished {
                run.write_file("report.json", b"{}").expect("report");
            }
            let modified = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
            File::options()
                .append(true)
                .open(run.root().join("events.log"))
                .and_then(|file| file.set_modified(modified))
                .expect("set mtime");
        };
        make("run-a", "a", false, 30);
        make("run-b", "b", false, 20);
        make("run-c", "a", true, 10);
        assert_eq!(
            latest_unfinished(temp.path(), |text| text == "a"),
            Some(temp.path().join("run-a"))
        );
        assert_eq!(
            latest_unfinished(temp.path(), |_| true),
            Some(temp.path().join("run-b"))
        );
    }
}
