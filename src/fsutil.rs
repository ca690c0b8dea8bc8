//! File helpers shared by everything that writes results to disk.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory is written,
/// flushed to disk, then renamed over `path`, so a crash never leaves a half-written file and
/// an existing file is replaced only by a complete one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        Error::arg(
            "atomic_write",
            format!("'{}' is not a file path", path.display()),
        )
    })?;
    let tmp = dir.join(temp_name_of(&name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        // The temporary name means nothing to the user: name the folder when it is missing,
        // the file being written otherwise.
        let at = if dir.is_dir() { path } else { dir.as_path() };
        return Err(Error::io(at, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The name [`atomic_write`] gives the temporary file of `name` while it writes it in the
/// calling process: `.NAME.tmp-PID`.
pub fn temp_name_of(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// The file a temporary name stands for, whatever process wrote it: `.NAME.tmp-PID` (from
/// [`atomic_write`]) or `.NAME.PID.tmp` (from the image writers of earlier releases, which
/// a killed run may have left behind) give `NAME`.
pub fn temp_target(temp_name: &str) -> Option<&str> {
    let rest = temp_name.strip_prefix('.')?;
    let pid = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let (name, id) = match rest.rsplit_once(".tmp-") {
        Some(split) => split,
        None => rest.strip_suffix(".tmp")?.rsplit_once('.')?,
    };
    (pid(id) && !name.is_empty()).then_some(name)
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_is_named_not_the_temporary_file() {
        let dir = std::env::temp_dir().join(format!("tarflow-fsutil-{}", std::process::id()));
        let path = dir.join("no-such-folder").join("out.bin");
        let e = atomic_write(&path, b"x").unwrap_err().to_string();
        assert!(
            e.starts_with(&dir.join("no-such-folder").display().to_string()),
            "{e}"
        );
        assert!(!e.contains(".tmp-"), "{e}");
    }

    #[test]
    fn temporary_names_map_back_to_their_file() {
        assert_eq!(
            temp_target(&temp_name_of("model-0000001.safetensors")),
            Some("model-0000001.safetensors")
        );
        assert_eq!(temp_target(".metrics.jsonl.tmp-42"), Some("metrics.jsonl"));
        assert_eq!(temp_target(".bpd.png.1234.tmp"), Some("bpd.png"));
        for no in [
            "metrics.jsonl",
            ".x.tmp-",
            ".x.tmp",
            ".x.y.tmp",
            ".x.tmp-4a",
            "..tmp-3",
            "x.tmp-3",
        ] {
            assert_eq!(temp_target(no), None, "{no}");
        }
    }
}
