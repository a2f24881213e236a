//! The machine log: one JSON object per line,
//! `{"time":"2026-11-22T01:02:03.123456789Z","stream":"stdout","message":"..."}`,
//! in a file that is rotated to `<file>.1` when it exceeds its size limit, so
//! a machine's logs never take more than twice the limit.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

/// Longest line kept in one record; longer output is split.
pub const MAX_LINE: usize = 16 * 1024;

/// A size-bounded, rotated JSON-lines log.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
}

#[derive(Serialize)]
struct Record<'a> {
    time: &'a str,
    stream: &'a str,
    message: &'a str,
}

impl LogFile {
    /// Opens (appending to) the log at `path`.
    pub fn open(path: PathBuf, max_bytes: u64) -> io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            file,
            size,
            max_bytes: max_bytes.max(4096),
        })
    }

    /// Appends one record.
    pub fn write(&mut self, stream: &str, message: &[u8]) -> io::Result<()> {
        let time = rfc3339_nanos(std::time::SystemTime::now());
        let message = String::from_utf8_lossy(message);
        let mut line = serde_json::to_vec(&Record {
            time: &time,
            stream,
            message: &message,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Splits a stream into records at newlines (and every [`MAX_LINE`] bytes).
#[derive(Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Adds bytes; calls `emit` for each complete line.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            for chunk in line.chunks(MAX_LINE) {
                emit(chunk);
            }
            if line.is_empty() {
                emit(b"");
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        while self.buf.len() >= MAX_LINE {
            let rest = self.buf.split_off(MAX_LINE);
            emit(&self.buf);
            self.buf = rest;
        }
    }

    /// Emits what is left at end of stream.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(&self.buf);
            self.buf.clear();
        }
    }
}

/// Formats a time as RFC 3339 in UTC with nanoseconds.
pub fn rfc3339_nanos(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339_nanos(t), "2023-11-14T22:13:20.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc3339_nanos(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn splits_lines() {
        let mut b = LineBuffer::default();
        let mut out: Vec<Vec<u8>> = Vec::new();
        b.push(b"a\nbc", |l| out.push(l.to_vec()));
        b.push(b"d\r\n\nrest", |l| out.push(l.to_vec()));
        b.finish(|l| out.push(l.to_vec()));
        assert_eq!(
            out,
            vec![
                b"a".to_vec(),
                b"bcd".to_vec(),
                b"".to_vec(),
                b"rest".to_vec()
            ]
        );
        let mut out = 0;
        b.push(&vec![b'x'; MAX_LINE * 2 + 1], |_| out += 1);
        assert_eq!(out, 2);
    }

    #[test]
    fn rotates_at_the_limit() {
        let dir = std::env::temp_dir().join(format!("hangar-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("machine.log");
        let mut log = LogFile::open(path.clone(), 4096).unwrap();
        for i in 0..200 {
            log.write("stdout", format!("line {i}").as_bytes()).unwrap();
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("machine.log.1")).unwrap().len();
        assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(
            last.trim_end().ends_with(r#""message":"line 199"}"#),
            "{last}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
