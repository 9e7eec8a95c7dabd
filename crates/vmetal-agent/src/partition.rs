//! Partition tables on a disk: reading and extending MBR and GPT (headers, entry arrays,
//! CRC32s, backup copy at the disk end). Pure over byte buffers; callers do the file I/O.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Logical sector size the agent assumes (512-byte sectors; 4Kn disks are not handled).
pub const SECTOR: u64 = 512;
/// The GPT header signature at LBA 1.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Size of the GPT header proper (the rest of the sector is zero).
const GPT_HEADER_SIZE: usize = 92;
/// MBR partition type of a GPT protective entry.
const MBR_PROTECTIVE: u8 = 0xEE;

/// One partition, whichever table it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Slot in the table (0-based).
    pub index: usize,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// GPT partition name (empty for MBR).
    pub name: String,
    /// MBR type byte (0 for GPT).
    pub mbr_type: u8,
}

/// What a disk's first sectors say about its layout.
#[derive(Debug, Clone)]
pub enum Table {
    /// GUID partition table.
    Gpt(Gpt),
    /// Classic MBR with up to four primary partitions.
    Mbr(Mbr),
    /// No partition table; `blank` when the first sector is all zero.
    None {
        /// Whether sector 0 is all zero.
        blank: bool,
    },
}

/// The MBR (sector 0).
#[derive(Debug, Clone)]
pub struct Mbr {
    /// The whole sector.
    pub sector: Vec<u8>,
}

impl Mbr {
    /// An empty MBR with a valid boot signature.
    pub fn empty() -> Self {
        let mut sector = vec![0u8; SECTOR as usize];
        sector[510] = 0x55;
        sector[511] = 0xAA;
        Mbr { sector }
    }

    /// The used primary partitions.
    pub fn partitions(&self) -> Vec<Partition> {
        (0..4)
            .filter_map(|i| {
                let e = &self.sector[446 + i * 16..446 + (i + 1) * 16];
                let kind = e[4];
                let start = u64::from(le32(&e[8..12]));
                let len = u64::from(le32(&e[12..16]));
                (kind != 0 && len != 0).then(|| Partition {
                    index: i,
                    first_lba: start,
                    last_lba: start + len - 1,
                    name: String::new(),
                    mbr_type: kind,
                })
            })
            .collect()
    }

    /// Put a primary partition into the first free slot.
    pub fn add_partition(
        &mut self,
        kind: u8,
        first_lba: u64,
        sectors: u64,
    ) -> Result<usize, String> {
        let (Ok(start), Ok(len)) = (u32::try_from(first_lba), u32::try_from(sectors)) else {
            return Err("the partition would end beyond the 2 TiB limit of an MBR".into());
        };
        let slot = (0..4)
            .find(|i| self.sector[446 + i * 16 + 4] == 0)
            .ok_or("all four primary MBR partitions are in use")?;
        let e = &mut self.sector[446 + slot * 16..446 + (slot + 1) * 16];
        e.fill(0);
        // CHS fields say "use LBA" (max values), as every modern tool writes.
        e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[4] = kind;
        e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&len.to_le_bytes());
        Ok(slot)
    }
}

/// A GPT: the primary header and its entry array.
#[derive(Debug, Clone)]
pub struct Gpt {
    /// The protective MBR.
    pub mbr: Mbr,
    /// The header sector (LBA 1).
    pub header: Vec<u8>,
    /// The partition entry array.
    pub entries: Vec<u8>,
}

/// `EBD0A0A2-B9E5-4433-87C0-68B6B72699C7` (Microsoft basic data) in on-disk byte order.
pub const GPT_TYPE_BASIC_DATA: [u8; 16] = [
    0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];
/// `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` (EFI system partition) in on-disk byte order.
pub const GPT_TYPE_EFI_SYSTEM: [u8; 16] = [
    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
];

impl Gpt {
    /// A fresh GPT with 128 empty entries for a disk of `disk_sectors` sectors.
    pub fn new(disk_sectors: u64, disk_guid: [u8; 16]) -> Self {
        let mut mbr = Mbr::empty();
        let _ = mbr.add_partition(MBR_PROTECTIVE, 1, protective_len(disk_sectors));
        let mut header = vec![0u8; SECTOR as usize];
        header[0..8].copy_from_slice(GPT_SIGNATURE);
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&(GPT_HEADER_SIZE as u32).to_le_bytes());
        put64(&mut header, 24, 1);
        put64(&mut header, 40, 34);
        header[56..72].copy_from_slice(&disk_guid);
        put64(&mut header, 72, 2);
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        let mut gpt = Gpt {
            mbr,
            header,
            entries: vec![0u8; 128 * 128],
        };
        gpt.resize(disk_sectors);
        gpt
    }

    fn entry_size(&self) -> usize {
        le32(&self.header[84..88]) as usize
    }

    fn num_entries(&self) -> usize {
        le32(&self.header[80..84]) as usize
    }

    /// Sectors the entry array occupies.
    pub fn entry_sectors(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(SECTOR)
    }

    /// LBA of the first usable sector.
    pub fn first_usable(&self) -> u64 {
        get64(&self.header, 40)
    }

    /// LBA of the last usable sector.
    pub fn last_usable(&self) -> u64 {
        get64(&self.header, 48)
    }

    /// LBA of the backup header as recorded in the primary header.
    pub fn backup_lba(&self) -> u64 {
        get64(&self.header, 32)
    }

    /// The used entries.
    pub fn partitions(&self) -> Vec<Partition> {
        let size = self.entry_size();
        (0..self.num_entries())
            .filter_map(|i| {
                let e = self.entries.get(i * size..(i + 1) * size)?;
                if e[0..16].iter().all(|b| *b == 0) {
                    return None;
                }
                let name: Vec<u16> = e[56..128]
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|c| *c != 0)
                    .collect();
                let (first_lba, last_lba) = (get64(e, 32), get64(e, 40));
                // Corrupt entries (end before start, beyond any disk) are ignored.
                if last_lba < first_lba || last_lba >= u64::MAX / SECTOR {
                    return None;
                }
                Some(Partition {
                    index: i,
                    first_lba,
                    last_lba,
                    name: String::from_utf16_lossy(&name),
                    mbr_type: 0,
                })
            })
            .collect()
    }

    /// Fill the first free entry.
    pub fn add_partition(
        &mut self,
        type_guid: [u8; 16],
        unique_guid: [u8; 16],
        first_lba: u64,
        last_lba: u64,
        name: &str,
    ) -> Result<usize, String> {
        if first_lba < self.first_usable() || last_lba > self.last_usable() {
            return Err(format!(
                "sectors {first_lba}-{last_lba} are outside the usable range {}-{}",
                self.first_usable(),
                self.last_usable()
            ));
        }
        let size = self.entry_size();
        let slot = (0..self.num_entries())
            .find(|i| {
                self.entries[i * size..i * size + 16]
                    .iter()
                    .all(|b| *b == 0)
            })
            .ok_or("the GPT has no free partition entry")?;
        let e = &mut self.entries[slot * size..(slot + 1) * size];
        e.fill(0);
        e[0..16].copy_from_slice(&type_guid);
        e[16..32].copy_from_slice(&unique_guid);
        put64(e, 32, first_lba);
        put64(e, 40, last_lba);
        for (i, c) in name.encode_utf16().take(36).enumerate() {
            e[56 + i * 2..58 + i * 2].copy_from_slice(&c.to_le_bytes());
        }
        Ok(slot)
    }

    /// Move the backup structures to the end of a disk of `disk_sectors` sectors.
    pub fn resize(&mut self, disk_sectors: u64) {
        let last = disk_sectors.saturating_sub(1);
        put64(&mut self.header, 32, last);
        let last_usable = last.saturating_sub(self.entry_sectors() + 1);
        put64(&mut self.header, 48, last_usable);
        let mbr = &mut self.mbr.sector;
        for i in 0..4 {
            if mbr[446 + i * 16 + 4] == MBR_PROTECTIVE {
                let len = u32::try_from(protective_len(disk_sectors)).unwrap_or(u32::MAX);
                mbr[446 + i * 16 + 12..446 + i * 16 + 16].copy_from_slice(&len.to_le_bytes());
            }
        }
    }

    /// The primary header with fresh CRCs.
    fn primary_header(&self) -> Vec<u8> {
        let mut h = self.header.clone();
        let crc = crc32fast::hash(&self.entries);
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        seal(&mut h);
        h
    }

    /// The backup header: same content, own and other LBA swapped, entries before it.
    fn backup_header(&self) -> Vec<u8> {
        let mut h = self.primary_header();
        let last = self.backup_lba();
        put64(&mut h, 24, last);
        put64(&mut h, 32, 1);
        put64(&mut h, 72, last.saturating_sub(self.entry_sectors()));
        seal(&mut h);
        h
    }

    /// Write the protective MBR, both headers and both entry arrays.
    pub fn write(&self, f: &mut File) -> io::Result<()> {
        write_at(f, 0, &self.mbr.sector)?;
        write_at(f, SECTOR, &self.primary_header())?;
        write_at(f, get64(&self.header, 72) * SECTOR, &self.entries)?;
        let backup = self.backup_lba();
        write_at(
            f,
            backup.saturating_sub(self.entry_sectors()) * SECTOR,
            &self.entries,
        )?;
        write_at(f, backup * SECTOR, &self.backup_header())
    }
}

/// Length of the protective MBR entry for a disk of `disk_sectors` (capped at 32 bits).
fn protective_len(disk_sectors: u64) -> u64 {
    disk_sectors.saturating_sub(1).min(u64::from(u32::MAX))
}

/// Set the header CRC over the first `header_size` bytes, with the CRC field zeroed.
fn seal(h: &mut [u8]) {
    h[16..20].fill(0);
    let size = (le32(&h[12..16]) as usize).clamp(GPT_HEADER_SIZE, h.len());
    let crc = crc32fast::hash(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// Read the partition table of `f`.
///
/// A GPT whose primary header or entries fail their CRC is reported as an error rather than
/// silently treated as absent, so a corrupt table is never overwritten blindly.
pub fn read_table(f: &mut File) -> io::Result<Table> {
    let disk_bytes = f.seek(SeekFrom::End(0))?;
    if disk_bytes < 2 * SECTOR {
        return Ok(Table::None { blank: true });
    }
    let mut first = vec![0u8; 2 * SECTOR as usize];
    read_at(f, 0, &mut first)?;
    let (sector0, sector1) = first.split_at(SECTOR as usize);
    if sector0[510..512] != [0x55, 0xAA] {
        return Ok(Table::None {
            blank: sector0.iter().all(|b| *b == 0),
        });
    }
    let mbr = Mbr {
        sector: sector0.to_vec(),
    };
    let protective = mbr
        .partitions()
        .iter()
        .any(|p| p.mbr_type == MBR_PROTECTIVE);
    if !protective || &sector1[0..8] != GPT_SIGNATURE {
        return Ok(Table::Mbr(mbr));
    }
    let header = sector1.to_vec();
    let mut check = header.clone();
    let stored = le32(&check[16..20]);
    seal(&mut check);
    if le32(&check[16..20]) != stored {
        return Err(invalid("the primary GPT header fails its CRC32"));
    }
    let count = le32(&header[80..84]) as usize;
    let size = le32(&header[84..88]) as usize;
    if !(128..=4096).contains(&size) || count > 4096 {
        return Err(invalid("the GPT entry array has an implausible size"));
    }
    let mut entries = vec![0u8; count * size];
    read_at(f, get64(&header, 72) * SECTOR, &mut entries)?;
    if crc32fast::hash(&entries) != le32(&header[88..92]) {
        return Err(invalid("the GPT partition entries fail their CRC32"));
    }
    Ok(Table::Gpt(Gpt {
        mbr,
        header,
        entries,
    }))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Read exactly `buf.len()` bytes at `offset`.
pub fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

/// Write all of `buf` at `offset`.
pub fn write_at(f: &mut File, offset: u64, buf: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(buf)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn get64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_written_gpt_reads_back_with_valid_crcs() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut f = file.reopen().unwrap();
        f.set_len(8 << 20).unwrap();
        let mut gpt = Gpt::new(8 << 20 >> 9, [7; 16]);
        gpt.add_partition(GPT_TYPE_EFI_SYSTEM, [1; 16], 2048, 4095, "EFI")
            .unwrap();
        gpt.write(&mut f).unwrap();
        let Table::Gpt(back) = read_table(&mut f).unwrap() else {
            panic!("no GPT")
        };
        let parts = back.partitions();
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].first_lba, parts[0].last_lba), (2048, 4095));
        assert_eq!(parts[0].name, "EFI");
        assert_eq!(back.last_usable(), (8 << 20 >> 9) - 34);
        // The backup header at the last sector carries a valid CRC too.
        let mut last = vec![0u8; 512];
        read_at(&mut f, (8 << 20) - 512, &mut last).unwrap();
        assert_eq!(&last[0..8], GPT_SIGNATURE);
        let stored = le32(&last[16..20]);
        seal(&mut last);
        assert_eq!(le32(&last[16..20]), stored);
        assert_eq!(get64(&last, 72), (8 << 20 >> 9) - 33);
    }

    #[test]
    fn a_corrupt_gpt_is_an_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut f = file.reopen().unwrap();
        f.set_len(1 << 20).unwrap();
        Gpt::new(2048, [1; 16]).write(&mut f).unwrap();
        write_at(&mut f, 512 + 40, &[9]).unwrap();
        assert!(read_table(&mut f).is_err());
    }

    #[test]
    fn mbr_slots_fill_up() {
        let mut mbr = Mbr::empty();
        for i in 0..4 {
            assert_eq!(
                mbr.add_partition(0x83, 2048 * (i + 1), 2048),
                Ok(i as usize)
            );
        }
        assert!(mbr.add_partition(0x0C, 1 << 20, 1).is_err());
        assert_eq!(mbr.partitions().len(), 4);
        assert!(Mbr::empty().add_partition(0x0C, 1 << 33, 1).is_err());
    }
}
