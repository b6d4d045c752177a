//! The spool's own file layer: every open, write, fdatasync, read, rename and unlink of the
//! spool's files goes through here, so that a test can make one of them fail the way a disk
//! does (EIO, ENOSPC, a short write), which no process kill can produce. Without the
//! `test-util` feature these are the plain calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

/// A kind of file operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Open,
    Write,
    Sync,
    Read,
    Rename,
    Unlink,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Open,
        Op::Write,
        Op::Sync,
        Op::Read,
        Op::Rename,
        Op::Unlink,
    ];
}

/// The injected failure of `op` on `path`, if a test armed one.
fn injected(op: Op, path: &Path) -> Option<faults::Kind> {
    #[cfg(any(test, feature = "test-util"))]
    return faults::take(op, path);
    #[cfg(not(any(test, feature = "test-util")))]
    {
        let _ = (op, path);
        None
    }
}

/// Fails with the injected error of `op` on `path`, if any (a short write is an ENOSPC here).
pub fn check(op: Op, path: &Path) -> io::Result<()> {
    match injected(op, path) {
        Some(kind) => Err(kind.error()),
        None => Ok(()),
    }
}

pub fn open(options: &OpenOptions, path: &Path) -> io::Result<File> {
    check(Op::Open, path)?;
    options.open(path)
}

pub fn open_read(path: &Path) -> io::Result<File> {
    check(Op::Open, path)?;
    File::open(path)
}

/// `write_all_at`; an injected short write leaves the first half of `buf` written.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64, path: &Path) -> io::Result<()> {
    match injected(Op::Write, path) {
        Some(faults::Kind::ShortWrite) => {
            file.write_all_at(&buf[..buf.len() / 2], offset)?;
            Err(faults::Kind::ShortWrite.error())
        }
        Some(kind) => Err(kind.error()),
        None => file.write_all_at(buf, offset),
    }
}

/// `write_all` at the file's cursor; an injected short write leaves half of `buf` written.
pub fn write_all(file: &mut File, buf: &[u8], path: &Path) -> io::Result<()> {
    match injected(Op::Write, path) {
        Some(faults::Kind::ShortWrite) => {
            file.write_all(&buf[..buf.len() / 2])?;
            Err(faults::Kind::ShortWrite.error())
        }
        Some(kind) => Err(kind.error()),
        None => file.write_all(buf),
    }
}

pub fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    check(Op::Sync, path)?;
    file.sync_data()
}

pub fn sync_all(file: &File, path: &Path) -> io::Result<()> {
    check(Op::Sync, path)?;
    file.sync_all()
}

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    check(Op::Read, path)?;
    std::fs::read(path)
}

pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    check(Op::Rename, from)?;
    std::fs::rename(from, to)
}

pub fn remove_file(path: &Path) -> io::Result<()> {
    check(Op::Unlink, path)?;
    std::fs::remove_file(path)
}

/// Failures a test arms: the `skip`+1-th call of `op` on a path under `dir` fails, `times`
/// times in a row. Scoped by directory, so tests running at once in one process do not meet
/// each other's faults.
pub mod faults {
    use std::io;
    #[cfg(any(test, feature = "test-util"))]
    use std::path::{Path, PathBuf};
    #[cfg(any(test, feature = "test-util"))]
    use std::sync::Mutex;

    #[cfg(any(test, feature = "test-util"))]
    use super::Op;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// The call fails with this errno (libc::EIO, libc::ENOSPC, ...).
        Errno(i32),
        /// Half the bytes reach the file, then ENOSPC.
        ShortWrite,
    }

    impl Kind {
        pub fn error(self) -> io::Error {
            match self {
                Kind::Errno(errno) => io::Error::from_raw_os_error(errno),
                Kind::ShortWrite => io::Error::from_raw_os_error(libc::ENOSPC),
            }
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    #[derive(Debug, Clone)]
    pub struct Fault {
        pub dir: PathBuf,
        pub op: Op,
        pub kind: Kind,
        /// Calls that pass before the first failure.
        pub skip: usize,
        /// Failures in a row.
        pub times: usize,
    }

    #[cfg(any(test, feature = "test-util"))]
    struct Armed {
        fault: Fault,
        seen: usize,
        fired: usize,
    }

    #[cfg(any(test, feature = "test-util"))]
    static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

    #[cfg(any(test, feature = "test-util"))]
    fn armed() -> std::sync::MutexGuard<'static, Vec<Armed>> {
        ARMED.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(any(test, feature = "test-util"))]
    pub fn inject(fault: Fault) {
        armed().push(Armed {
            fault,
            seen: 0,
            fired: 0,
        });
    }

    /// Disarms `dir`'s faults; how many failures they injected.
    #[cfg(any(test, feature = "test-util"))]
    pub fn clear(dir: &Path) -> usize {
        let mut armed = armed();
        let fired = armed
            .iter()
            .filter(|a| a.fault.dir == dir)
            .map(|a| a.fired)
            .sum();
        armed.retain(|a| a.fault.dir != dir);
        fired
    }

    #[cfg(any(test, feature = "test-util"))]
    pub(super) fn take(op: Op, path: &Path) -> Option<Kind> {
        let mut armed = armed();
        for a in armed.iter_mut() {
            if a.fault.op != op || !path.starts_with(&a.fault.dir) {
                continue;
            }
            a.seen += 1;
            if a.seen > a.fault.skip && a.fired < a.fault.times {
                a.fired += 1;
                return Some(a.fault.kind);
            }
        }
        None
    }
}
