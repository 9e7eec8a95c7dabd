//! Disk cleaning: metadata wipe (partition tables and filesystem signatures at both ends of the
//! disk and at the start of each partition) and full wipe (every byte reads as zero).
//!
//! A full wipe of a regular file (a simulated server's disk) truncates and re-extends it, which
//! zeroes it and keeps it sparse; block devices get zeros written in 1 MiB chunks.

use std::fs::OpenOptions;
use std::path::Path;

use crate::configdrive::disk_size;
use crate::error::AgentError;
use crate::partition::{SECTOR, Table, read_table, write_at};

/// Bytes zeroed at each end of the disk and at the start of each partition.
const EDGE: u64 = 1 << 20;

/// Zero the first and last MiB of `device` (MBR, both GPTs, most filesystem superblocks) and
/// the first MiB of each partition the table lists (filesystem signatures inside partitions).
pub fn wipe_metadata(device: &Path) -> Result<(), AgentError> {
    let io = |op| move |e| AgentError::disk(device, op, e);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("opening"))?;
    let size = disk_size(&mut f).map_err(io("sizing"))?;
    // Partition starts are read before the table is gone; a corrupt table is wiped anyway.
    let starts: Vec<u64> = match read_table(&mut f) {
        Ok(Table::Gpt(gpt)) => gpt
            .partitions()
            .iter()
            .map(|p| p.first_lba * SECTOR)
            .collect(),
        Ok(Table::Mbr(mbr)) => mbr
            .partitions()
            .iter()
            .map(|p| p.first_lba * SECTOR)
            .collect(),
        _ => Vec::new(),
    };
    let zeros = vec![0u8; EDGE as usize];
    let mut zero = |offset: u64| -> Result<(), AgentError> {
        if offset >= size {
            return Ok(());
        }
        let len = (size - offset).min(EDGE) as usize;
        write_at(&mut f, offset, &zeros[..len]).map_err(io("wiping"))
    };
    for start in starts {
        zero(start)?;
    }
    zero(0)?;
    zero(size.saturating_sub(EDGE))?;
    f.sync_all().map_err(io("syncing"))
}

/// Make every byte of `device` zero.
pub fn wipe_full(device: &Path) -> Result<(), AgentError> {
    let io = |op| move |e| AgentError::disk(device, op, e);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("opening"))?;
    let size = disk_size(&mut f).map_err(io("sizing"))?;
    let regular = f.metadata().map_err(io("inspecting"))?.is_file();
    if regular {
        f.set_len(0).map_err(io("wiping"))?;
        f.set_len(size).map_err(io("wiping"))?;
    } else {
        let zeros = vec![0u8; EDGE as usize];
        let mut offset = 0;
        while offset < size {
            let len = (size - offset).min(EDGE) as usize;
            write_at(&mut f, offset, &zeros[..len]).map_err(io("wiping"))?;
            offset += len as u64;
        }
    }
    f.sync_all().map_err(io("syncing"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::partition::Gpt;
    use std::io::Read;

    const MIB: u64 = 1 << 20;

    fn filled(len: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![0xA5u8; len as usize]).unwrap();
        file
    }

    fn contents(file: &tempfile::NamedTempFile) -> Vec<u8> {
        let mut v = Vec::new();
        file.reopen().unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn metadata_wipe_clears_both_ends_and_partition_starts_only() {
        let file = filled(16 * MIB);
        let mut f = file.reopen().unwrap();
        let mut gpt = Gpt::new(16 * MIB / SECTOR, [1; 16]);
        gpt.add_partition([9; 16], [2; 16], 4 * MIB / SECTOR, 8 * MIB / SECTOR, "data")
            .unwrap();
        gpt.write(&mut f).unwrap();
        wipe_metadata(file.path()).unwrap();
        let c = contents(&file);
        assert_eq!(c.len() as u64, 16 * MIB);
        let zero = |a: u64, b: u64| c[a as usize..b as usize].iter().all(|x| *x == 0);
        assert!(zero(0, MIB) && zero(15 * MIB, 16 * MIB) && zero(4 * MIB, 5 * MIB));
        assert!(
            c[(2 * MIB) as usize..(4 * MIB) as usize]
                .iter()
                .all(|x| *x == 0xA5)
        );
        assert!(matches!(
            read_table(&mut f).unwrap(),
            Table::None { blank: true }
        ));
    }

    #[test]
    fn metadata_wipe_of_a_tiny_disk_zeroes_it_all() {
        let file = filled(3000);
        wipe_metadata(file.path()).unwrap();
        assert!(contents(&file).iter().all(|x| *x == 0));
    }

    #[test]
    fn full_wipe_zeroes_everything_and_keeps_the_size() {
        let file = filled(3 * MIB + 17);
        wipe_full(file.path()).unwrap();
        let c = contents(&file);
        assert_eq!(c.len() as u64, 3 * MIB + 17);
        assert!(c.iter().all(|x| *x == 0));
    }
}
