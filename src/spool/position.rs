//! The forwarder's acknowledged position: every record up to this sequence number is in the
//! broker. `DIR/position` holds two slots of `[seq u64][crc32c u32][zero u32]`, written in place
//! in turn (`pwrite`, `fdatasync`): a crash tears at most the slot being written and the other
//! one still holds the previous position. The file is created once, when the spool opens, and
//! never grows, so a full disk (which preallocated segments fill exactly) cannot stop the
//! position from advancing, and with it the deletion of forwarded segments that makes room.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use super::segment::sync_dir;

const FILE: &str = "position";
/// An older build replaced the file through this one.
const TEMPORARY: &str = "position.tmp";
const SLOT: usize = 16;

/// The position in `dir`; 0 only when there is no file yet (a new spool).
///
/// Any other failure is an error, and nothing is written: reading 0 after an EIO or a damaged
/// file, then writing it to both slots (as an earlier build did), would forward the whole spool
/// again and make the replay permanent. An operator who wants exactly that removes the file.
pub fn read(dir: &Path) -> io::Result<u64> {
    let path = dir.join(FILE);
    let bytes = match super::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("cannot read the position file {}: {err}", path.display()),
            ))
        }
    };
    decode(&bytes).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the position file {} has no valid slot ({} bytes); remove it to forward \
                 everything in the spool again (duplicates carry their dedup id)",
                path.display(),
                bytes.len()
            ),
        )
    })
}

/// The position file, open for writing.
pub struct PositionFile {
    file: File,
    path: std::path::PathBuf,
    /// The slot the next write goes to.
    next: u64,
}

impl PositionFile {
    /// Opens (or creates) `DIR/position` with `seq` (the position just read) in both slots,
    /// durable with its directory entry. An existing file is rewritten a slot at a time, so a
    /// crash meanwhile leaves one valid.
    pub fn open(dir: &Path, seq: u64) -> io::Result<PositionFile> {
        let path = dir.join(FILE);
        let fresh = fs::metadata(&path).map_or(true, |m| m.len() != 2 * SLOT as u64);
        let file = super::fs::open(
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true),
            &path,
        )?;
        let mut position = PositionFile {
            file,
            path,
            next: 0,
        };
        if fresh {
            let mut both = [0u8; 2 * SLOT];
            both[..SLOT].copy_from_slice(&slot(seq));
            both[SLOT..].copy_from_slice(&slot(seq));
            position.file.set_len(0)?;
            super::fs::write_all_at(&position.file, &both, 0, &position.path)?;
            super::fs::sync_all(&position.file, &position.path)?;
            sync_dir(dir)?;
            let _ = fs::remove_file(dir.join(TEMPORARY));
        } else {
            position.write(seq)?;
            position.write(seq)?;
        }
        Ok(position)
    }

    /// Makes `seq` the durable position.
    pub fn write(&mut self, seq: u64) -> io::Result<()> {
        let at = (self.next % 2) * SLOT as u64;
        super::fs::write_all_at(&self.file, &slot(seq), at, &self.path)?;
        super::fs::sync_data(&self.file, &self.path)?;
        self.next += 1;
        Ok(())
    }
}

fn slot(seq: u64) -> [u8; SLOT] {
    let mut out = [0u8; SLOT];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..8]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_slot(bytes: &[u8]) -> Option<u64> {
    let seq: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
    (crc32c::crc32c(&seq) == crc).then(|| u64::from_le_bytes(seq))
}

/// The higher valid slot (positions only grow); an older build's 12-byte file is one slot.
fn decode(bytes: &[u8]) -> Option<u64> {
    match bytes.len() {
        12 => decode_slot(bytes),
        n if n == 2 * SLOT => {
            let a = decode_slot(&bytes[..SLOT]);
            let b = decode_slot(&bytes[SLOT..]);
            a.max(b)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_positions_read_back_and_a_torn_slot_leaves_the_other() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), 0);
        let mut file = PositionFile::open(dir.path(), 0).unwrap();
        file.write(41).unwrap();
        file.write(42).unwrap();
        assert_eq!(read(dir.path()).unwrap(), 42);
        assert_eq!(fs::metadata(dir.path().join(FILE)).unwrap().len(), 32);
        // The slot written last is torn: the one before it holds.
        let mut bytes = fs::read(dir.path().join(FILE)).unwrap();
        bytes[SLOT] ^= 1;
        fs::write(dir.path().join(FILE), &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), 41);
        // Both damaged: an error, never 0 (which would forward everything again).
        bytes[0] ^= 1;
        fs::write(dir.path().join(FILE), &bytes).unwrap();
        assert_eq!(
            read(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Reopened, it goes on from the position it is given.
        let mut file = PositionFile::open(dir.path(), 7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), 7);
        file.write(8).unwrap();
        assert_eq!(read(dir.path()).unwrap(), 8);
    }

    /// Only a missing file is position 0: a read error is an error, and the file is left as it
    /// is (an earlier build read 0 and wrote it to both slots: the whole spool replayed).
    #[test]
    fn a_position_file_that_cannot_be_read_is_an_error_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(FILE)).unwrap();
        assert!(read(dir.path()).is_err());
        assert!(dir.path().join(FILE).is_dir());
        // A file of the wrong size (a truncated one) is no position either.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), [0u8; 7]).unwrap();
        assert_eq!(
            read(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(fs::read(dir.path().join(FILE)).unwrap(), [0u8; 7]);
    }

    #[test]
    fn an_older_builds_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = slot(99);
        fs::write(dir.path().join(FILE), &old[..12]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), 99);
        PositionFile::open(dir.path(), read(dir.path()).unwrap()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), 99);
    }
}
