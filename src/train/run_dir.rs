//! Ownership and housekeeping of a run directory: one training run at a time holds its lock,
//! and the leftovers of a run that was killed (temporary files, a state file whose model was
//! never written) are removed before the run continues.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::fsutil::temp_target;

/// The lock file inside a run directory. Its content is the holder's process id, for the
/// message a second run gets; the lock itself is the OS's advisory lock on the open file,
/// which the OS releases when the holder exits or dies.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a run directory, released when dropped (or when the process ends).
#[derive(Debug)]
pub struct RunDirLock {
    file: Option<File>,
    key: PathBuf,
}

impl Drop for RunDirLock {
    fn drop(&mut self) {
        // The OS lock first, so that a run in this process that finds the directory free in
        // the registry does not also find the file still locked.
        drop(self.file.take());
        held_here().remove(&self.key);
    }
}

/// Run directories locked by this process. The OS lock alone cannot tell a run of this
/// process from a child it is spawning: between fork and exec a child holds a copy of every
/// open file, and with it the lock, for a moment after the holder has let go.
fn held_here() -> MutexGuard<'static, BTreeSet<PathBuf>> {
    static HELD: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a lock that this process let go of may stay with a child being spawned.
const INHERITED_LOCK_WAIT: Duration = Duration::from_secs(2);

fn in_use(dir: &Path, holder: &str) -> Error {
    let holder = match holder.trim() {
        "" => String::new(),
        pid => format!(" (process {pid})"),
    };
    Error::Config(format!(
        "run directory {} is in use by another training run{holder}: two runs in one \
         directory would mix their checkpoints and metrics; wait for it to end or \
         choose another output directory",
        dir.display()
    ))
}

/// Takes the lock of `dir` (created when missing), or fails naming the directory when another
/// run (in this or another process) holds it.
pub fn lock(dir: &Path) -> Result<RunDirLock> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let key = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let me = std::process::id().to_string();
    // Claimed in the registry before the file is opened, so that no run of this process
    // opens (and then closes) the file of a lock another run of this process holds.
    if !held_here().insert(key.clone()) {
        return Err(in_use(dir, &me));
    }
    let mut claim = RunDirLock { file: None, key };
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
                // Not held by a run of this process (the registry says so), yet marked as
                // ours: a child being spawned holds the lock for a moment; wait for its exec.
                if holder.trim() == me && start.elapsed() < INHERITED_LOCK_WAIT {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Err(in_use(dir, &holder));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
    // Only informative, so a failure to record the holder does not stop the run.
    let _ = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{me}"));
    claim.file = Some(file);
    Ok(claim)
}

/// What a file name in a run directory is, as far as the trainer is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunFile {
    /// `model-STEP.safetensors`.
    Model(usize),
    /// `state-STEP.safetensors`.
    State(usize),
    /// `samples-STEP.png`, `metrics.jsonl`, `bpd.png`.
    Other,
}

/// Classifies a file name the trainer writes; `None` for anything else.
pub fn run_file(name: &str) -> Option<RunFile> {
    let step = |prefix: &str, suffix: &str| {
        name.strip_prefix(prefix)?
            .strip_suffix(suffix)?
            .parse::<usize>()
            .ok()
    };
    if let Some(s) = step("model-", ".safetensors") {
        return Some(RunFile::Model(s));
    }
    if let Some(s) = step("state-", ".safetensors") {
        return Some(RunFile::State(s));
    }
    let other = step("samples-", ".png").is_some() || name == "metrics.jsonl" || name == "bpd.png";
    other.then_some(RunFile::Other)
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Files of a training run in `dir` (checkpoints, sample grids, metrics, plot), sorted.
pub fn run_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(names(dir)?
        .into_iter()
        .filter(|n| run_file(n).is_some())
        .map(|n| dir.join(n))
        .collect())
}

/// Removes what a killed run leaves behind: temporary files of run files (`.NAME.tmp-PID`,
/// from a write that never reached its rename) and state files without their model (the
/// state is written first, so a crash between the two writes leaves one; it is never resumed
/// from). Only safe while holding the directory's lock. Returns the files removed.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<PathBuf>> {
    let all = names(dir)?;
    let mut removed = Vec::new();
    for name in &all {
        let stale_temp = temp_target(name).is_some_and(|t| run_file(t).is_some());
        let orphan_state = match run_file(name) {
            Some(RunFile::State(s)) => !all.contains(&model_name(s)),
            _ => false,
        };
        if stale_temp || orphan_state {
            let p = dir.join(name);
            remove(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Deletes the files of a previous run in `dir` (see [`run_files`]); other files stay.
pub fn remove_run_files(dir: &Path) -> Result<()> {
    for p in run_files(dir)? {
        remove(&p)?;
    }
    Ok(())
}

/// `model-STEP.safetensors`.
pub fn model_name(step: usize) -> String {
    format!("model-{step:07}.safetensors")
}

/// `state-STEP.safetensors`.
pub fn state_name(step: usize) -> String {
    format!("state-{step:07}.safetensors")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_file_names() {
        assert_eq!(
            run_file("model-0000012.safetensors"),
            Some(RunFile::Model(12))
        );
        assert_eq!(run_file(&state_name(7)), Some(RunFile::State(7)));
        assert_eq!(run_file("samples-0000100.png"), Some(RunFile::Other));
        assert_eq!(run_file("metrics.jsonl"), Some(RunFile::Other));
        for no in [
            "model-x.safetensors",
            "notes.txt",
            ".lock",
            "grid.png",
            "model.safetensors",
        ] {
            assert_eq!(run_file(no), None, "{no}");
        }
    }
}
