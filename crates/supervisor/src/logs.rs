//! Per-service log files: timestamped lines, rotated by size
//! (`NAME.log`, `NAME.log.1` … `NAME.log.{files-1}`), as text or as one
//! JSON object per line (`logging.format`); read back as text either way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::spec::logging::LogFormat;

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Rotate when the live file would grow past this.
    pub max_bytes: u64,
    /// Files kept in all, the live one included.
    pub files: u32,
}

/// A service's log. The file is open only while the supervisor's cache of
/// open logs keeps it (see `output::LOGS_OPEN`): a stack of ten thousand
/// services does not hold ten thousand fds for logs nobody writes.
pub struct LogFile {
    path: PathBuf,
    service: String,
    format: LogFormat,
    replica: Option<u32>,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    files: u32,
}

impl LogFile {
    /// Check that the log can be written (creating it), and leave it closed.
    /// One that is there already (a restarted or upgraded supervisor's) is
    /// only looked at: a stat, where creating is five calls — ten thousand
    /// services at every start of `isola up`.
    pub fn open(cfg: &LogConfig, service: &str) -> io::Result<LogFile> {
        let path = cfg.dir.join(format!("{service}.log"));
        let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
        let size = match fs::metadata(&path) {
            Ok(m) if m.is_file() && writable(&path) => m.len(),
            _ => {
                fs::create_dir_all(&cfg.dir)?;
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                file.metadata()?.len()
            }
        };
        Ok(LogFile {
            path,
            service: service.to_string(),
            format: LogFormat::Text,
            replica: None,
            file: None,
            size,
            max_bytes: cfg.max_bytes.max(1),
            files: cfg.files.max(1),
        })
    }

    /// Lines from now on are written as `format` (a replica's say which
    /// one it is).
    pub fn set_format(&mut self, format: LogFormat, replica: Option<u32>) {
        self.format = format;
        self.replica = replica;
    }

    /// Append one line: `<RFC 3339 UTC time> <stream> <text>`, or its
    /// JSON object. Opens the file if it is closed: true when it did (the
    /// caller's cache then counts one more open log).
    pub fn write_line(&mut self, stream: &str, text: &str) -> io::Result<bool> {
        let time = timestamp(SystemTime::now());
        let line = match self.format {
            LogFormat::Text => format!("{time} {stream} {text}\n"),
            LogFormat::Json => {
                let j = JsonLine {
                    time: &time,
                    service: &self.service,
                    stream,
                    replica: self.replica,
                    msg: text,
                };
                let mut l = serde_json::to_string(&j).map_err(io::Error::other)?;
                l.push('\n');
                l
            }
        };
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        let opened = self.file.is_none();
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(append(&self.path)?),
        };
        file.write_all(line.as_bytes())?;
        self.size = self.size.saturating_add(len);
        Ok(opened)
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Give the fd back (the next write opens the file again).
    pub fn close(&mut self) {
        self.file = None;
    }

    fn rotate(&mut self) -> io::Result<()> {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        if self.files == 1 {
            match &self.file {
                Some(f) => f.set_len(0)?,
                None => OpenOptions::new()
                    .write(true)
                    .open(&self.path)?
                    .set_len(0)?,
            }
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(name(self.files - 1));
        for i in (1..self.files - 1).rev() {
            let _ = fs::rename(name(i), name(i + 1));
        }
        fs::rename(&self.path, name(1))?;
        if self.file.is_some() {
            self.file = Some(append(&self.path)?);
        }
        self.size = 0;
        Ok(())
    }
}

/// A line of a JSON log file.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: &'a str,
    service: &'a str,
    stream: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<u32>,
    msg: &'a str,
}

/// A log line as text (`TIME STREAM TEXT`), whichever format it was
/// written in (a stack may change `logging.format` between runs).
fn as_text(line: &str) -> String {
    // A text line starts with its time: not JSON, refused at once.
    match serde_json::from_str::<JsonLineOwned>(line) {
        Ok(j) => format!("{} {} {}", j.time, j.stream, j.msg),
        Err(_) => line.to_string(),
    }
}

/// [`JsonLine`] read back (its text may be escaped: not borrowed).
#[derive(Deserialize)]
struct JsonLineOwned {
    time: String,
    stream: String,
    msg: String,
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The last `n` lines of a service's logs, across rotated files.
pub fn tail(dir: &Path, service: &str, n: usize, files: u32) -> Vec<String> {
    tail_since(dir, service, n, files, None)
}

/// [`tail`] of the lines stamped at or after `since` (RFC 3339, as the
/// lines are: the strings compare as the times do).
pub fn tail_since(
    dir: &Path,
    service: &str,
    n: usize,
    files: u32,
    since: Option<&str>,
) -> Vec<String> {
    let keep = |l: &str| since.is_none_or(|s| l.split(' ').next().is_some_and(|t| t >= s));
    let mut lines: Vec<String> = Vec::new();
    for i in 0..files.max(1) {
        let p = if i == 0 {
            dir.join(format!("{service}.log"))
        } else {
            dir.join(format!("{service}.log.{i}"))
        };
        let Ok(text) = fs::read_to_string(&p) else {
            break;
        };
        let mut chunk: Vec<String> = text.lines().map(as_text).filter(|l| keep(l)).collect();
        chunk.append(&mut lines);
        lines = chunk;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// The last `n` lines of every service's log, interleaved by time, each
/// as `TIME NAME STREAM TEXT`.
pub fn tail_all(
    dir: &Path,
    services: &[String],
    n: usize,
    files: u32,
    since: Option<&str>,
) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for s in services {
        for l in tail_since(dir, s, n, files, since) {
            let (time, rest) = l.split_once(' ').unwrap_or((l.as_str(), ""));
            all.push(format!("{time} {s} {rest}"));
        }
    }
    // Stable: one service's lines of the same millisecond keep their order.
    all.sort_by(|a, b| a.split(' ').next().cmp(&b.split(' ').next()));
    let skip = all.len().saturating_sub(n);
    all.split_off(skip)
}

/// Splits a byte stream into lines; keeps a partial last line for later.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Longest line kept whole; longer ones are cut into pieces this size.
    const MAX_LINE: usize = 16 * 1024;

    pub fn push(&mut self, data: &[u8], out: &mut Vec<String>) {
        self.pending.extend_from_slice(data);
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        while self.pending.len() > Self::MAX_LINE {
            let line: Vec<u8> = self.pending.drain(..Self::MAX_LINE).collect();
            out.push(String::from_utf8_lossy(&line).into_owned());
        }
    }

    /// What was read of a line not finished yet (an upgrade hands it on).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// A buffer that goes on from what an older one had read.
    pub fn resumed(pending: Vec<u8>) -> LineBuffer {
        LineBuffer { pending }
    }

    /// At EOF: whatever is left, as a last line.
    pub fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let line = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(line)
    }
}

/// RFC 3339 UTC with milliseconds, without a date crate.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_306_245_123);
        assert_eq!(timestamp(t), "2026-11-22T00:10:45.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_split_and_keep_partials() {
        let mut b = LineBuffer::default();
        let mut out = Vec::new();
        b.push(b"one\ntw", &mut out);
        b.push(b"o\nthree", &mut out);
        assert_eq!(out, ["one", "two"]);
        assert_eq!(b.finish().as_deref(), Some("three"));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let dir = std::env::temp_dir().join(format!("isola-logs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let cfg = LogConfig {
            dir: dir.clone(),
            max_bytes: 200,
            files: 3,
        };
        let mut f = LogFile::open(&cfg, "svc").unwrap();
        for i in 0..100 {
            f.write_line("stdout", &format!("line {i:03} {}", "x".repeat(20)))
                .unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["svc.log", "svc.log.1", "svc.log.2"]);
        for n in &names {
            assert!(fs::metadata(dir.join(n)).unwrap().len() <= 200);
        }
        let last = tail(&dir, "svc", 5, 3);
        assert_eq!(last.len(), 5);
        assert!(
            last[4].ends_with(&format!("line 099 {}", "x".repeat(20))),
            "{last:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
