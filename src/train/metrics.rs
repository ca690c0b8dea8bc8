//! `metrics.jsonl`, kept consistent with the checkpoints across crashes: every line is whole,
//! and a resumed run first cuts the log back to the step it resumes from, so no step is
//! logged twice.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::atomic_write;

/// Appends `line` and its newline with one write. A failed write (a full disk) is undone by
/// cutting the file back to its previous length, so the next line never joins a partial one.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let before = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    if let Err(e) = f.write_all(&bytes) {
        let _ = f.set_len(before);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Keeps the lines of `text` that a run resumed at `step` had written: whole lines (ending in
/// a newline) that parse and whose `step` is at most `step`.
pub fn lines_up_to(text: &str, step: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.ends_with('\n') {
            break;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["step"].as_u64().is_some_and(|s| s <= step as u64) {
            out.push_str(line);
        }
    }
    out
}

/// Rewrites `path` (when it exists) to the lines written up to `step`, atomically; nothing is
/// written when no line goes.
pub fn truncate_to_step(path: &Path, step: usize) -> Result<()> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept = lines_up_to(&text, step);
    if kept != text {
        atomic_write(path, kept.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_steps_and_partial_lines_go() {
        let text = "{\"step\":10,\"loss\":1}\n{\"step\":10,\"test_bpd\":2}\n\
                    {\"step\":20,\"loss\":1}\n{\"step\":5";
        assert_eq!(
            lines_up_to(text, 10),
            "{\"step\":10,\"loss\":1}\n{\"step\":10,\"test_bpd\":2}\n"
        );
        assert_eq!(lines_up_to(text, 25), text[..text.rfind('{').unwrap()]);
        assert_eq!(lines_up_to("garbage\n{\"step\":1}\n", 3), "{\"step\":1}\n");
    }
}
