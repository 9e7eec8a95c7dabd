//! The config-drive partition: a new partition after the image holding the ConfigDrive v2
//! filesystem (GPT entry named `config-2`, or MBR type 0x0C), and reading it back.
//!
//! A disk with no partition table gets a fresh MBR only when its first sector is blank; an
//! image written without a table would be damaged by one, so that case fails instead.

use std::fs::{File, OpenOptions};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::AgentError;
use crate::partition::{GPT_TYPE_BASIC_DATA, Mbr, SECTOR, Table, read_table, write_at};

/// GPT partition name (and filesystem label) of the config drive.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// Largest config drive accepted (Ironic's limit).
pub const MAX_CONFIG_DRIVE_BYTES: u64 = 64 << 20;
/// MBR partition type for FAT32 with LBA.
const MBR_TYPE_FAT32_LBA: u8 = 0x0C;
/// Partitions start on 1 MiB boundaries.
const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR;

/// Write `fs_image` into a new partition placed after `image_end` bytes and after every
/// existing partition, then fsync. An existing GPT partition named `config-2` that is large
/// enough is reused instead.
pub fn write_config_drive(
    device: &Path,
    image_end: u64,
    fs_image: &[u8],
) -> Result<(), AgentError> {
    let fail = |reason: String| AgentError::ConfigDrive {
        device: device.to_path_buf(),
        reason,
    };
    let len = fs_image.len() as u64;
    if len == 0 || len > MAX_CONFIG_DRIVE_BYTES {
        return Err(fail(format!(
            "the config drive is {len} bytes; it must be between 1 byte and 64 MiB"
        )));
    }
    let io = |op| move |e| AgentError::disk(device, op, e);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("opening"))?;
    let disk_sectors = disk_size(&mut f).map_err(io("sizing"))? / SECTOR;
    let part_sectors = len.div_ceil(SECTOR * ALIGN_SECTORS) * ALIGN_SECTORS;
    let table = read_table(&mut f).map_err(io("reading the partition table of"))?;
    let image_end_lba = image_end.div_ceil(SECTOR);
    let start_after = |used_end: u64| {
        let first = used_end.max(image_end_lba).max(ALIGN_SECTORS);
        first.div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS
    };
    let too_small = |first: u64, limit: u64| AgentError::DiskTooSmall {
        device: device.to_path_buf(),
        reason: format!(
            "the config drive needs sectors {first}-{} but the last usable sector is {limit}",
            first + part_sectors - 1
        ),
    };

    let first_lba = match table {
        Table::Gpt(mut gpt) => {
            let parts = gpt.partitions();
            if let Some(p) = parts.iter().find(|p| {
                p.name == CONFIG_DRIVE_LABEL && p.last_lba + 1 - p.first_lba >= part_sectors
            }) {
                p.first_lba
            } else {
                // The image's GPT ends where the image ends: move the backup to the disk end.
                let old_backup = gpt.backup_lba();
                let old_backup_entries = old_backup.saturating_sub(gpt.entry_sectors());
                gpt.resize(disk_sectors);
                let used_end = parts.iter().map(|p| p.last_lba + 1).max().unwrap_or(0);
                let first = start_after(used_end);
                let last = first + part_sectors - 1;
                if last > gpt.last_usable() {
                    return Err(too_small(first, gpt.last_usable()));
                }
                let guid = partition_guid(&gpt.header, first);
                gpt.add_partition(GPT_TYPE_BASIC_DATA, guid, first, last, CONFIG_DRIVE_LABEL)
                    .map_err(fail)?;
                // A stale backup header inside the disk would confuse repair tools.
                if old_backup != gpt.backup_lba() && old_backup > 1 && old_backup < first {
                    let stale =
                        vec![0u8; ((old_backup + 1 - old_backup_entries) * SECTOR) as usize];
                    write_at(&mut f, old_backup_entries * SECTOR, &stale)
                        .map_err(io("clearing the old backup GPT of"))?;
                }
                gpt.write(&mut f).map_err(io("writing the GPT of"))?;
                first
            }
        }
        Table::Mbr(mut mbr) => {
            let used_end = mbr
                .partitions()
                .iter()
                .map(|p| p.last_lba + 1)
                .max()
                .unwrap_or(0);
            let first = start_after(used_end);
            let limit = disk_sectors.saturating_sub(1);
            if first + part_sectors - 1 > limit {
                return Err(too_small(first, limit));
            }
            mbr.add_partition(MBR_TYPE_FAT32_LBA, first, part_sectors)
                .map_err(fail)?;
            write_at(&mut f, 0, &mbr.sector).map_err(io("writing the MBR of"))?;
            first
        }
        Table::None { blank: true } => {
            let first = start_after(0);
            let limit = disk_sectors.saturating_sub(1);
            if first + part_sectors - 1 > limit {
                return Err(too_small(first, limit));
            }
            let mut mbr = Mbr::empty();
            mbr.add_partition(MBR_TYPE_FAT32_LBA, first, part_sectors)
                .map_err(fail)?;
            write_at(&mut f, 0, &mbr.sector).map_err(io("writing the MBR of"))?;
            first
        }
        Table::None { blank: false } => {
            return Err(fail(
                "the image has no partition table (neither GPT nor MBR), so no config-drive \
                 partition can be added; use a whole-disk image with a partition table"
                    .into(),
            ));
        }
    };

    let mut content = fs_image.to_vec();
    content.resize((part_sectors * SECTOR) as usize, 0);
    write_at(&mut f, first_lba * SECTOR, &content).map_err(io("writing the config drive to"))?;
    f.sync_all().map_err(io("syncing"))
}

/// Read the config-drive partition of `device`: the GPT partition named `config-2`, else the
/// last MBR partition of type 0x0C. `None` when there is none.
pub fn read_config_drive(device: &Path) -> Result<Option<Vec<u8>>, AgentError> {
    let io = |op| move |e| AgentError::disk(device, op, e);
    let mut f = File::open(device).map_err(io("opening"))?;
    let part = match read_table(&mut f).map_err(io("reading the partition table of"))? {
        Table::Gpt(gpt) => gpt
            .partitions()
            .into_iter()
            .find(|p| p.name == CONFIG_DRIVE_LABEL),
        Table::Mbr(mbr) => mbr
            .partitions()
            .into_iter()
            .filter(|p| p.mbr_type == MBR_TYPE_FAT32_LBA)
            .max_by_key(|p| p.first_lba),
        Table::None { .. } => None,
    };
    let Some(p) = part else { return Ok(None) };
    let len = (p.last_lba + 1 - p.first_lba) * SECTOR;
    if len > MAX_CONFIG_DRIVE_BYTES {
        return Err(AgentError::ConfigDrive {
            device: device.to_path_buf(),
            reason: format!("the config-2 partition is {len} bytes, more than 64 MiB"),
        });
    }
    let mut buf = vec![0u8; len as usize];
    crate::partition::read_at(&mut f, p.first_lba * SECTOR, &mut buf).map_err(io("reading"))?;
    Ok(Some(buf))
}

/// Size in bytes of a disk file or block device.
pub(crate) fn disk_size(f: &mut File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::End(0))
}

/// A version-4-style partition GUID derived from the disk GUID and the start sector, so a
/// repeated deploy produces the same table.
fn partition_guid(header: &[u8], first_lba: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(&header[56..72]);
    h.update(first_lba.to_le_bytes());
    h.update(CONFIG_DRIVE_LABEL.as_bytes());
    let d = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d[..16]);
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    g
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::partition::{GPT_TYPE_EFI_SYSTEM, Gpt, read_at};

    const MIB: u64 = 1 << 20;

    /// A disk file of `disk` bytes holding a GPT "image" of `image` bytes with one partition.
    fn gpt_disk(image: u64, disk: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut f = file.reopen().unwrap();
        f.set_len(image).unwrap();
        let mut gpt = Gpt::new(image / SECTOR, [3; 16]);
        gpt.add_partition(
            GPT_TYPE_EFI_SYSTEM,
            [4; 16],
            2048,
            image / SECTOR - 34,
            "root",
        )
        .unwrap();
        gpt.write(&mut f).unwrap();
        f.set_len(disk).unwrap();
        file
    }

    fn fs_image(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn gpt_disk_gets_a_config2_entry_and_a_backup_at_the_end() {
        let disk = gpt_disk(4 * MIB, 16 * MIB);
        let fs = fs_image(300_000);
        write_config_drive(disk.path(), 4 * MIB, &fs).unwrap();
        let mut f = disk.reopen().unwrap();
        let Table::Gpt(gpt) = read_table(&mut f).unwrap() else {
            panic!("GPT lost")
        };
        let parts = gpt.partitions();
        assert_eq!(parts.len(), 2);
        let cd = &parts[1];
        assert_eq!(cd.name, "config-2");
        assert_eq!(
            cd.first_lba,
            4 * MIB / SECTOR,
            "1 MiB aligned right after the image"
        );
        assert_eq!(cd.last_lba - cd.first_lba + 1, MIB / SECTOR);
        assert_eq!(gpt.backup_lba(), 16 * MIB / SECTOR - 1);
        let mut backup = vec![0u8; 8];
        read_at(&mut f, 16 * MIB - SECTOR, &mut backup).unwrap();
        assert_eq!(&backup, b"EFI PART");
        let back = read_config_drive(disk.path()).unwrap().unwrap();
        assert_eq!(&back[..fs.len()], &fs[..]);
        assert!(back[fs.len()..].iter().all(|b| *b == 0));
        // Deploying again reuses the partition instead of adding another one.
        write_config_drive(disk.path(), 4 * MIB, &fs).unwrap();
        let Table::Gpt(gpt) = read_table(&mut f).unwrap() else {
            panic!("GPT lost")
        };
        assert_eq!(gpt.partitions().len(), 2);
    }

    #[test]
    fn mbr_disk_gets_a_primary_partition() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut f = file.reopen().unwrap();
        let mut mbr = Mbr::empty();
        mbr.add_partition(0x83, 2048, 2048 * 3).unwrap();
        write_at(&mut f, 0, &mbr.sector).unwrap();
        f.set_len(10 * MIB).unwrap();
        let fs = fs_image(2 * MIB as usize + 5);
        write_config_drive(file.path(), MIB, &fs).unwrap();
        let Table::Mbr(mbr) = read_table(&mut f).unwrap() else {
            panic!("MBR lost")
        };
        let cd = mbr.partitions()[1].clone();
        assert_eq!((cd.mbr_type, cd.first_lba), (0x0C, 4 * 2048));
        assert_eq!(cd.last_lba + 1 - cd.first_lba, 3 * 2048);
        let back = read_config_drive(file.path()).unwrap().unwrap();
        assert_eq!(&back[..fs.len()], &fs[..]);
    }

    #[test]
    fn blank_disk_gets_an_mbr_and_a_tableless_image_is_refused() {
        let blank = tempfile::NamedTempFile::new().unwrap();
        blank.as_file().set_len(4 * MIB).unwrap();
        write_config_drive(blank.path(), 0, b"hello").unwrap();
        assert_eq!(
            &read_config_drive(blank.path()).unwrap().unwrap()[..5],
            b"hello"
        );

        let raw = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(raw.path(), b"a filesystem, not a partition table").unwrap();
        raw.as_file().set_len(4 * MIB).unwrap();
        let err = write_config_drive(raw.path(), MIB, b"x").unwrap_err();
        assert!(err.to_string().contains("no partition table"), "{err}");
        assert_eq!(read_config_drive(raw.path()).unwrap(), None);
    }

    #[test]
    fn a_full_disk_fails_clearly() {
        let disk = gpt_disk(4 * MIB, 5 * MIB);
        let err =
            write_config_drive(disk.path(), 4 * MIB, &fs_image(2 * MIB as usize)).unwrap_err();
        assert!(matches!(err, AgentError::DiskTooSmall { .. }), "{err}");
        let err = write_config_drive(disk.path(), 0, &vec![0; 65 << 20]).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
    }
}
