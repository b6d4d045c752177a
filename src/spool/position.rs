//! The forwarder's acknowledged position: every record up to this sequence number is in the
//! broker. `DIR/position` holds it with a CRC, replaced atomically (write a temporary file,
//! fsync it, rename it over, fsync the directory), so a crash leaves the old or the new one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::segment::sync_dir;

const FILE: &str = "position";
const TEMPORARY: &str = "position.tmp";

/// The position in `dir`; 0 when there is none yet. A damaged file reads as 0 (everything is
/// forwarded again: duplicates, which carry their dedup id, rather than a loss).
pub fn read(dir: &Path) -> u64 {
    let Ok(bytes) = fs::read(dir.join(FILE)) else {
        return 0;
    };
    match decode(&bytes) {
        Some(seq) => seq,
        None => {
            tracing::error!(
                dir = %dir.display(),
                "the spool's position file is damaged: forwarding everything in the spool again"
            );
            0
        }
    }
}

/// Makes `seq` the durable position.
pub fn write(dir: &Path, seq: u64) -> io::Result<()> {
    let temporary = dir.join(TEMPORARY);
    let mut file = File::create(&temporary)?;
    file.write_all(&encode(seq))?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(FILE))?;
    sync_dir(dir)
}

fn encode(seq: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; 12] = bytes.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[8..].try_into().ok()?);
    (crc32c::crc32c(&bytes[..8]) == crc)
        .then(|| u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_positions_read_back_and_damage_reads_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), 0);
        write(dir.path(), 41).unwrap();
        write(dir.path(), 42).unwrap();
        assert_eq!(read(dir.path()), 42);
        let mut bytes = fs::read(dir.path().join(FILE)).unwrap();
        bytes[0] ^= 1;
        fs::write(dir.path().join(FILE), bytes).unwrap();
        assert_eq!(read(dir.path()), 0);
    }
}
