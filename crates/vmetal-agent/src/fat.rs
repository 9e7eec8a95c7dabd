//! Just enough FAT (12/16/32, long names) to read files out of a config drive, plus a small
//! FAT16 builder for tests and the lab. The controller's provisioner builds the real drives.

use std::collections::BTreeMap;

const DIR_ENTRY: usize = 32;
const ATTR_DIR: u8 = 0x10;
const ATTR_LABEL: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;

/// Geometry of a FAT volume, from its boot sector.
struct Volume<'a> {
    bytes: &'a [u8],
    bytes_per_sector: usize,
    sectors_per_cluster: usize,
    fat_offset: usize,
    root_offset: usize,
    root_len: usize,
    data_offset: usize,
    clusters: u32,
    bits: u8,
    root_cluster: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

impl<'a> Volume<'a> {
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.get(510..512)? != [0x55, 0xAA] {
            return None;
        }
        let bps = usize::from(u16_at(bytes, 11)?);
        let spc = usize::from(*bytes.get(13)?);
        let reserved = usize::from(u16_at(bytes, 14)?);
        let fats = usize::from(*bytes.get(16)?);
        let root_entries = usize::from(u16_at(bytes, 17)?);
        let total = match u16_at(bytes, 19)? {
            0 => u32_at(bytes, 32)? as usize,
            n => usize::from(n),
        };
        let fat_size = match u16_at(bytes, 22)? {
            0 => u32_at(bytes, 36)? as usize,
            n => usize::from(n),
        };
        if !matches!(bps, 512 | 1024 | 2048 | 4096) || spc == 0 || fats == 0 {
            return None;
        }
        let root_sectors = (root_entries * DIR_ENTRY).div_ceil(bps);
        let first_data = reserved + fats * fat_size + root_sectors;
        let clusters = u32::try_from(total.checked_sub(first_data)? / spc).ok()?;
        let bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        Some(Volume {
            bytes,
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            fat_offset: reserved * bps,
            root_offset: (reserved + fats * fat_size) * bps,
            root_len: root_sectors * bps,
            data_offset: first_data * bps,
            clusters,
            bits,
            root_cluster: if bits == 32 { u32_at(bytes, 44)? } else { 0 },
        })
    }

    fn next(&self, c: u32) -> Option<u32> {
        let fat = self.bytes.get(self.fat_offset..)?;
        let (v, end) = match self.bits {
            12 => {
                let off = (c + c / 2) as usize;
                let raw = u16_at(fat, off)?;
                (
                    u32::from(if c % 2 == 1 { raw >> 4 } else { raw & 0xFFF }),
                    0xFF8,
                )
            }
            16 => (u32::from(u16_at(fat, c as usize * 2)?), 0xFFF8),
            _ => (u32_at(fat, c as usize * 4)? & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        (v >= 2 && v < end && v < self.clusters + 2).then_some(v)
    }

    fn chain(&self, first: u32) -> Option<Vec<u8>> {
        let size = self.bytes_per_sector * self.sectors_per_cluster;
        let mut out = Vec::new();
        let mut c = first;
        for _ in 0..=self.clusters {
            if c < 2 || c >= self.clusters + 2 {
                return None;
            }
            let at = self.data_offset + (c as usize - 2) * size;
            out.extend_from_slice(self.bytes.get(at..at + size)?);
            match self.next(c) {
                Some(n) => c = n,
                None => return Some(out),
            }
        }
        None // a loop in the FAT
    }

    fn root(&self) -> Option<Vec<u8>> {
        if self.bits == 32 {
            self.chain(self.root_cluster)
        } else {
            Some(
                self.bytes
                    .get(self.root_offset..self.root_offset + self.root_len)?
                    .to_vec(),
            )
        }
    }
}

/// One directory entry: name, attributes, first cluster, size.
struct Entry {
    name: String,
    attr: u8,
    cluster: u32,
    size: usize,
}

fn entries(dir: &[u8], fat32: bool) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut lfn: BTreeMap<u8, Vec<u16>> = BTreeMap::new();
    let mut lfn_sum = None;
    for e in dir.chunks_exact(DIR_ENTRY) {
        match e[0] {
            0 => break,
            0xE5 => {
                lfn.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr == ATTR_LFN {
            let chars = [&e[1..11], &e[14..26], &e[28..32]]
                .concat()
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            lfn.insert(e[0] & 0x1F, chars);
            lfn_sum = Some(e[13]);
            continue;
        }
        if attr & ATTR_LABEL != 0 {
            lfn.clear();
            continue;
        }
        let short = &e[0..11];
        let long: Vec<u16> = lfn
            .values()
            .flatten()
            .copied()
            .take_while(|c| *c != 0)
            .collect();
        let name = if !long.is_empty() && lfn_sum == Some(lfn_checksum(short)) {
            String::from_utf16_lossy(&long)
        } else {
            let base = String::from_utf8_lossy(&short[0..8]).trim_end().to_string();
            let ext = String::from_utf8_lossy(&short[8..11])
                .trim_end()
                .to_string();
            if ext.is_empty() {
                base
            } else {
                format!("{base}.{ext}")
            }
        };
        lfn.clear();
        let hi = if fat32 {
            u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        } else {
            0
        };
        out.push(Entry {
            name,
            attr,
            cluster: hi | u32::from(u16::from_le_bytes([e[26], e[27]])),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]) as usize,
        });
    }
    out
}

fn lfn_checksum(short: &[u8]) -> u8 {
    short.iter().fold(0u8, |sum, b| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(*b)
    })
}

/// The contents of the file at `path` (`openstack/latest/meta_data.json`, case-insensitive)
/// in the FAT filesystem `fs`; `None` when it does not exist or `fs` is not a FAT volume.
pub fn read_file(fs: &[u8], path: &str) -> Option<Vec<u8>> {
    let vol = Volume::parse(fs)?;
    let mut dir = vol.root()?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let entry = entries(&dir, vol.bits == 32)
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(part))?;
        let last = i + 1 == parts.len();
        if last {
            if entry.attr & ATTR_DIR != 0 {
                return None;
            }
            if entry.size == 0 {
                return Some(Vec::new());
            }
            let mut data = vol.chain(entry.cluster)?;
            data.truncate(entry.size);
            return (data.len() == entry.size).then_some(data);
        }
        if entry.attr & ATTR_DIR == 0 {
            return None;
        }
        dir = vol.chain(entry.cluster)?;
    }
    None
}

/// The volume label of a FAT filesystem (root-directory label entry, else the boot sector's).
pub fn label(fs: &[u8]) -> Option<String> {
    let vol = Volume::parse(fs)?;
    let root = vol.root()?;
    let from_root = root
        .chunks_exact(DIR_ENTRY)
        .take_while(|e| e[0] != 0)
        .find(|e| e[0] != 0xE5 && e[11] != ATTR_LFN && e[11] & ATTR_LABEL != 0)
        .map(|e| String::from_utf8_lossy(&e[0..11]).trim_end().to_string());
    let at = if vol.bits == 32 { 71 } else { 43 };
    from_root.or_else(|| {
        Some(
            String::from_utf8_lossy(fs.get(at..at + 11)?)
                .trim_end()
                .to_string(),
        )
    })
}

/// A directory tree being built.
#[derive(Default)]
struct Dir {
    dirs: BTreeMap<String, Dir>,
    files: BTreeMap<String, Vec<u8>>,
}

/// Build a FAT16 filesystem labelled `label` holding `files` (`path`, contents); directories
/// are created as needed. Sized to fit (at least 4 MiB); `None` when over 32 MiB.
pub fn build(label: &str, files: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    const BPS: usize = 512;
    const ROOT_ENTRIES: usize = 512;
    let mut root = Dir::default();
    for (path, data) in files {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (name, dirs) = parts.split_last()?;
        let mut d = &mut root;
        for p in dirs {
            d = d.dirs.entry((*p).to_string()).or_default();
        }
        d.files.insert((*name).to_string(), data.to_vec());
    }
    let payload: usize = files
        .iter()
        .map(|(p, d)| d.len().div_ceil(BPS) + p.len() + 4)
        .sum();
    let clusters = (payload + 64).max(8100);
    if clusters > 65_000 {
        return None;
    }
    let fat_sectors = ((clusters + 2) * 2).div_ceil(BPS);
    let root_sectors = ROOT_ENTRIES * DIR_ENTRY / BPS;
    let first_data = 1 + 2 * fat_sectors + root_sectors;
    let total = first_data + clusters;

    let mut b = Builder {
        fat: vec![0u16; clusters + 2],
        data: Vec::new(),
        next: 2,
    };
    b.fat[0] = 0xFFF8;
    b.fat[1] = 0xFFFF;
    let mut root_bytes = vec![0u8; root_sectors * BPS];
    let mut label_entry = [b' '; 11];
    for (i, c) in label.bytes().take(11).enumerate() {
        label_entry[i] = c;
    }
    root_bytes[0..11].copy_from_slice(&label_entry);
    root_bytes[11] = ATTR_LABEL;
    let entries = b.dir_entries(&root, 0, 0);
    root_bytes
        .get_mut(DIR_ENTRY..DIR_ENTRY + entries.len())?
        .copy_from_slice(&entries);

    let mut img = vec![0u8; total * BPS];
    let boot = &mut img[0..BPS];
    boot[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    boot[3..11].copy_from_slice(b"VMETAL  ");
    boot[11..13].copy_from_slice(&(BPS as u16).to_le_bytes());
    boot[13] = 1;
    boot[14..16].copy_from_slice(&1u16.to_le_bytes());
    boot[16] = 2;
    boot[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    if let Ok(t) = u16::try_from(total) {
        boot[19..21].copy_from_slice(&t.to_le_bytes());
    } else {
        boot[32..36].copy_from_slice(&(total as u32).to_le_bytes());
    }
    boot[21] = 0xF8;
    boot[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
    boot[24..26].copy_from_slice(&32u16.to_le_bytes());
    boot[26..28].copy_from_slice(&64u16.to_le_bytes());
    boot[36] = 0x80;
    boot[38] = 0x29;
    boot[39..43].copy_from_slice(&0x2026_0001u32.to_le_bytes());
    boot[43..54].copy_from_slice(&label_entry);
    boot[54..62].copy_from_slice(b"FAT16   ");
    boot[510] = 0x55;
    boot[511] = 0xAA;
    let fat_bytes: Vec<u8> = b.fat.iter().flat_map(|v| v.to_le_bytes()).collect();
    for copy in 0..2 {
        let at = (1 + copy * fat_sectors) * BPS;
        img[at..at + fat_bytes.len()].copy_from_slice(&fat_bytes);
    }
    let root_at = (1 + 2 * fat_sectors) * BPS;
    img[root_at..root_at + root_bytes.len()].copy_from_slice(&root_bytes);
    let data_at = first_data * BPS;
    img.get_mut(data_at..data_at + b.data.len())?
        .copy_from_slice(&b.data);
    Some(img)
}

/// Allocates clusters (512 bytes each) contiguously.
struct Builder {
    fat: Vec<u16>,
    data: Vec<u8>,
    next: usize,
}

impl Builder {
    fn alloc(&mut self, content: &[u8]) -> u16 {
        let n = content.len().div_ceil(512);
        if n == 0 {
            return 0;
        }
        let first = self.next;
        for i in 0..n {
            self.fat[first + i] = if i + 1 == n {
                0xFFFF
            } else {
                (first + i + 1) as u16
            };
        }
        self.next += n;
        self.data.extend_from_slice(content);
        self.data.resize((self.next - 2) * 512, 0);
        first as u16
    }

    /// Entries of `dir` (with `.`/`..` unless it is the root), allocating its children.
    fn dir_entries(&mut self, dir: &Dir, me: u16, parent: u16) -> Vec<u8> {
        let mut out = Vec::new();
        if me != 0 {
            out.extend(short_entry(*b".          ", ATTR_DIR, me, 0));
            out.extend(short_entry(*b"..         ", ATTR_DIR, parent, 0));
        }
        let mut serial = 0usize;
        for (name, sub) in &dir.dirs {
            serial += 1;
            // The child's entries need its own cluster, known only after allocation: reserve.
            let size = (2 + sub.dirs.len() + sub.files.len()) * DIR_ENTRY
                + sub
                    .dirs
                    .keys()
                    .chain(sub.files.keys())
                    .map(|n| lfn_count(n) * DIR_ENTRY)
                    .sum::<usize>();
            let first = self.alloc(&vec![0u8; size]);
            let body = self.dir_entries(sub, first, me);
            let at = (usize::from(first) - 2) * 512;
            self.data[at..at + body.len()].copy_from_slice(&body);
            out.extend(named_entries(name, serial, ATTR_DIR, first, 0));
        }
        for (name, data) in &dir.files {
            serial += 1;
            let first = self.alloc(data);
            out.extend(named_entries(name, serial, 0x20, first, data.len() as u32));
        }
        out
    }
}

fn lfn_count(name: &str) -> usize {
    (name.encode_utf16().count() + 1).div_ceil(13)
}

fn short_entry(name: [u8; 11], attr: u8, cluster: u16, size: u32) -> [u8; DIR_ENTRY] {
    let mut e = [0u8; DIR_ENTRY];
    e[0..11].copy_from_slice(&name);
    e[11] = attr;
    e[26..28].copy_from_slice(&cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Long-name entries (last part first) followed by a generated 8.3 entry.
fn named_entries(name: &str, serial: usize, attr: u8, cluster: u16, size: u32) -> Vec<u8> {
    let mut short = [b' '; 11];
    short[0..8].copy_from_slice(format!("VM{:06}", serial % 1_000_000).as_bytes());
    let sum = lfn_checksum(&short);
    let mut chars: Vec<u16> = name.encode_utf16().collect();
    chars.push(0);
    let parts = chars.len().div_ceil(13);
    chars.resize(parts * 13, 0xFFFF);
    let mut out = Vec::new();
    for seq in (1..=parts).rev() {
        let c = &chars[(seq - 1) * 13..seq * 13];
        let mut e = [0u8; DIR_ENTRY];
        e[0] = seq as u8 | if seq == parts { 0x40 } else { 0 };
        let bytes: Vec<u8> = c.iter().flat_map(|u| u.to_le_bytes()).collect();
        e[1..11].copy_from_slice(&bytes[0..10]);
        e[11] = ATTR_LFN;
        e[13] = sum;
        e[14..26].copy_from_slice(&bytes[10..22]);
        e[28..32].copy_from_slice(&bytes[22..26]);
        out.extend(e);
    }
    out.extend(short_entry(short, attr, cluster, size));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn built_volumes_read_back() {
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 256) as u8).collect();
        let fs = build(
            "config-2",
            &[
                (
                    "openstack/latest/meta_data.json",
                    br#"{"uuid":"u1","local-hostname":"node-1"}"#,
                ),
                ("openstack/latest/user_data", b"#cloud-config\n"),
                ("openstack/latest/network_data.json", &big),
                ("openstack/2012-08-10/meta_data.json", b"{}"),
                ("empty", b""),
            ],
        )
        .unwrap();
        assert_eq!(label(&fs).as_deref(), Some("config-2"));
        assert_eq!(
            read_file(&fs, "openstack/latest/meta_data.json").unwrap(),
            br#"{"uuid":"u1","local-hostname":"node-1"}"#
        );
        assert_eq!(
            read_file(&fs, "/OpenStack/Latest/USER_DATA").unwrap(),
            b"#cloud-config\n"
        );
        assert_eq!(
            read_file(&fs, "openstack/latest/network_data.json").unwrap(),
            big
        );
        assert_eq!(
            read_file(&fs, "openstack/2012-08-10/meta_data.json").unwrap(),
            b"{}"
        );
        assert_eq!(read_file(&fs, "empty").unwrap(), b"");
        assert_eq!(read_file(&fs, "openstack/latest/vendor_data.json"), None);
        assert_eq!(read_file(&fs, "openstack/latest"), None);
    }

    #[test]
    fn garbage_is_not_a_volume() {
        assert_eq!(read_file(&[0u8; 4096], "x"), None);
        assert_eq!(read_file(&[], "x"), None);
        let mut fs = build("x", &[("a", b"1")]).unwrap();
        // A FAT chain pointing at itself must not loop forever.
        let fat = 512;
        fs[fat + 4..fat + 6].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(read_file(&fs, "a"), None);
    }
}
