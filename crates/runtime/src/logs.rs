//! Container logs as the kubelet keeps them (the CRI format): one line per line of output,
//! `TIMESTAMP STREAM TAG MESSAGE`, the timestamp RFC 3339 with nanoseconds, the stream
//! `stdout` or `stderr`, the tag `F` for a full line or `P` for a part of a longer one (cut
//! every 16 KiB). The container's shim (see [`crate::shim`]) appends them to `container.log`,
//! which it rotates to `container.log.1` past a size.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Longest part of a line written as one log line.
pub(crate) const MAX_PART: usize = 16 * 1024;

/// The log file of a container in its state directory.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("container.log")
}

/// One log line.
pub fn format_line(at: SystemTime, stream: &str, partial: bool, message: &[u8]) -> Vec<u8> {
    let mut line = format!(
        "{} {stream} {} ",
        humantime::format_rfc3339_nanos(at),
        if partial { "P" } else { "F" }
    )
    .into_bytes();
    line.extend_from_slice(message);
    line.push(b'\n');
    line
}

/// Present once the shim has copied everything (the container closed its output).
pub fn done_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".done");
    PathBuf::from(p)
}

/// Appends lines to a log file, rotating it past `max_bytes`.
pub struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

impl Writer {
    pub fn open(path: PathBuf, max_bytes: u64) -> std::io::Result<Writer> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Writer {
            path,
            file,
            size,
            max_bytes,
        })
    }

    /// The log file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            fs::rename(&self.path, old)?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// The messages of the log from byte `offset`, each with its timestamp (parts joined into
/// their line), and the offset after the last complete line.
fn entries_from(path: &Path, offset: u64) -> std::io::Result<(Vec<(String, String)>, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut consumed = offset;
    let mut partial = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        consumed += n as u64;
        let mut fields = line.trim_end_matches('\n').splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let message = fields.next().unwrap_or("");
        partial.push_str(message);
        if tag == "P" {
            continue;
        }
        out.push((ts.to_string(), std::mem::take(&mut partial)));
    }
    Ok((out, consumed))
}

fn render(ts: &str, text: &str, timestamps: bool) -> String {
    if timestamps {
        format!("{ts} {text}")
    } else {
        text.to_string()
    }
}

/// The messages of the log from byte `offset`, each with its timestamp if `timestamps`
/// (parts joined into their line), and the offset after the last complete line.
pub fn read_from(
    path: &Path,
    offset: u64,
    timestamps: bool,
) -> std::io::Result<(Vec<String>, u64)> {
    let (entries, consumed) = entries_from(path, offset)?;
    let lines = entries
        .iter()
        .map(|(ts, text)| render(ts, text, timestamps))
        .collect();
    Ok((lines, consumed))
}

/// Which lines of a log to return, as the query of `pods/log` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Each line prefixed by its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this instant.
    pub since: Option<SystemTime>,
}

/// The lines of the log at `path` (its rotated part first) that `selection` picks, each ending
/// in a newline, and the offset in `path` after them (where following goes on).
pub fn select(path: &Path, selection: &Selection) -> std::io::Result<(Vec<String>, u64)> {
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    let mut entries = match entries_from(Path::new(&rotated), 0) {
        Ok((e, _)) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let (current, end) = entries_from(path, 0)?;
    entries.extend(current);
    if let Some(since) = selection.since {
        entries.retain(|(ts, _)| humantime::parse_rfc3339(ts).map_or(true, |at| at >= since));
    }
    if let Some(n) = selection.tail_lines {
        let skip = entries.len().saturating_sub(n as usize);
        entries.drain(..skip);
    }
    let lines = entries
        .iter()
        .map(|(ts, text)| render(ts, text, selection.timestamps) + "\n")
        .collect();
    Ok((lines, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_in_cri_format_rotated_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = path(dir.path());
        let mut w = Writer::open(log.clone(), 200).unwrap();
        let at =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_764_560_000_123_456_789);
        let line = format_line(at, "stdout", false, b"hello");
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "2025-12-01T03:33:20.123456789Z stdout F hello\n"
        );
        w.write(&format_line(at, "stdout", true, b"long ")).unwrap();
        w.write(&format_line(at, "stderr", false, b"line")).unwrap();
        let (msgs, end) = read_from(&log, 0, false).unwrap();
        assert_eq!(msgs, ["long line"]);
        let (stamped, _) = read_from(&log, 0, true).unwrap();
        assert_eq!(stamped, ["2025-12-01T03:33:20.123456789Z long line"]);
        w.write(&line).unwrap();
        let (more, _) = read_from(&log, end, false).unwrap();
        assert_eq!(more, ["hello"]);
        // Past 200 bytes the file is rotated.
        for _ in 0..4 {
            w.write(&line).unwrap();
        }
        assert!(dir.path().join("container.log.1").exists());
        assert!(fs::metadata(&log).unwrap().len() <= 200);
    }

    #[test]
    fn a_selection_takes_the_tail_and_the_lines_since_an_instant_across_the_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = path(dir.path());
        let mut w = Writer::open(log.clone(), 160).unwrap();
        let at =
            |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_560_000 + s);
        for i in 0..6u64 {
            w.write(&format_line(
                at(i),
                "stdout",
                false,
                format!("line {i}").as_bytes(),
            ))
            .unwrap();
        }
        assert!(dir.path().join("container.log.1").exists(), "rotated");
        let all = |sel: Selection| select(&log, &sel).unwrap().0.concat();
        assert_eq!(
            all(Selection::default()),
            "line 0\nline 1\nline 2\nline 3\nline 4\nline 5\n"
        );
        let tail = Selection {
            tail_lines: Some(2),
            ..Selection::default()
        };
        assert_eq!(all(tail), "line 4\nline 5\n");
        let since = Selection {
            since: Some(at(3)),
            timestamps: true,
            ..Selection::default()
        };
        assert_eq!(
            all(since),
            "2025-12-01T03:33:23.000000000Z line 3\n2025-12-01T03:33:24.000000000Z line 4\n2025-12-01T03:33:25.000000000Z line 5\n"
        );
        let (_, end) = select(&log, &Selection::default()).unwrap();
        assert_eq!(end, fs::metadata(&log).unwrap().len());
    }
}
