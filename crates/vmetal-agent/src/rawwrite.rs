//! Streaming a raw image onto a disk in three stages that run at once: the download (async),
//! hashing (a thread) and writing (a thread, `O_DIRECT` in 4 MiB aligned chunks on block
//! devices, then `fsync`). The slowest stage sets the pace instead of their sum.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::error::AgentError;

/// Bytes per chunk handed to the hash and write stages.
pub const CHUNK: usize = 4 << 20;
/// Alignment `O_DIRECT` needs for buffers, offsets and lengths (covers 512 and 4K sectors).
const ALIGN: usize = 4096;
/// Chunks in flight per stage (memory: about 2 × DEPTH × CHUNK).
const DEPTH: usize = 4;

/// A chunk whose data starts at an `ALIGN`-aligned address.
pub struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Self {
        let buf = vec![0u8; CHUNK + ALIGN];
        // `align_offset` is safe and exact for u8 pointers.
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Self { buf, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn is_full(&self) -> bool {
        self.len == CHUNK
    }

    /// Append from `src`; returns how many bytes were taken.
    fn fill(&mut self, src: &[u8]) -> usize {
        let take = (CHUNK - self.len).min(src.len());
        let at = self.start + self.len;
        self.buf[at..at + take].copy_from_slice(&src[..take]);
        self.len += take;
        take
    }
}

/// What flows to the stages, in disk order.
enum Piece {
    /// Bytes to write.
    Data(Arc<Chunk>),
    /// This many zero bytes (a hole in a file; written zeros on a block device).
    Zeros(u64),
}

/// The hash stage: `update` over every chunk in order, then the result.
pub trait ChunkHasher: Send + 'static {
    /// What the stage returns.
    type Output: Send + 'static;
    /// Hash one chunk.
    fn update(&mut self, data: &[u8]);
    /// Finish.
    fn finish(self) -> Self::Output;
}

/// Feeds the stages; call [`RawWriter::push`] with each piece of the download, then
/// [`RawWriter::finish`].
pub struct RawWriter<H: ChunkHasher> {
    device: PathBuf,
    device_size: u64,
    current: Chunk,
    queued: u64,
    to_hash: mpsc::Sender<Piece>,
    to_write: mpsc::Sender<Piece>,
    hasher: std::thread::JoinHandle<H::Output>,
    writer: std::thread::JoinHandle<Result<u64, AgentError>>,
    written: Arc<AtomicU64>,
}

impl<H: ChunkHasher> RawWriter<H> {
    /// Open `device` (of `device_size` bytes) and start the stages.
    pub fn start(device: &Path, device_size: u64, mut hasher: H) -> Result<Self, AgentError> {
        let (direct, buffered) = open_device(device)?;
        let (to_hash, mut hash_rx) = mpsc::channel::<Piece>(DEPTH);
        let (to_write, mut write_rx) = mpsc::channel::<Piece>(DEPTH);
        let hasher = std::thread::Builder::new()
            .name("image-hash".into())
            .spawn(move || {
                let zeros = vec![0u8; CHUNK];
                while let Some(piece) = hash_rx.blocking_recv() {
                    match piece {
                        Piece::Data(chunk) => hasher.update(chunk.data()),
                        Piece::Zeros(mut n) => {
                            while n > 0 {
                                let take = n.min(CHUNK as u64) as usize;
                                hasher.update(&zeros[..take]);
                                n -= take as u64;
                            }
                        }
                    }
                }
                hasher.finish()
            })
            .map_err(|e| AgentError::disk(device, "starting the hash thread for", e))?;
        let written = Arc::new(AtomicU64::new(0));
        let progress = written.clone();
        let dev = device.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("image-write".into())
            .spawn(move || {
                let io = |op| {
                    let dev = dev.clone();
                    move |e| AgentError::disk(&dev, op, e)
                };
                let mut offset = 0u64;
                let mut zeros: Option<Chunk> = None;
                while let Some(piece) = write_rx.blocking_recv() {
                    match piece {
                        Piece::Data(chunk) => {
                            write_at(direct.as_ref(), &buffered, chunk.data(), offset)
                                .map_err(io("writing"))?;
                            offset += chunk.len as u64;
                        }
                        Piece::Zeros(n) if direct.is_none() => {
                            // A file (a simulated server's disk): a hole reads as zeros and
                            // keeps the file sparse.
                            punch_hole(&buffered, offset, n).map_err(io("zeroing"))?;
                            offset += n;
                        }
                        // A block device that zeroes ranges itself (write-zeroes, as
                        // `qemu-img convert` uses) saves writing them.
                        Piece::Zeros(n) if zero_range(&buffered, offset, n).is_ok() => {
                            offset += n;
                        }
                        Piece::Zeros(mut n) => {
                            let z = zeros.get_or_insert_with(|| {
                                let mut c = Chunk::new();
                                c.len = CHUNK;
                                c
                            });
                            while n > 0 {
                                let take = n.min(CHUNK as u64) as usize;
                                write_at(direct.as_ref(), &buffered, &z.data()[..take], offset)
                                    .map_err(io("zeroing"))?;
                                offset += take as u64;
                                n -= take as u64;
                            }
                        }
                    }
                    progress.store(offset, Ordering::Relaxed);
                }
                if let Some(d) = &direct {
                    d.sync_all().map_err(io("syncing"))?;
                }
                (&buffered).flush().map_err(io("syncing"))?;
                buffered.sync_all().map_err(io("syncing"))?;
                Ok(offset)
            })
            .map_err(|e| AgentError::disk(device, "starting the write thread for", e))?;
        Ok(Self {
            device: device.to_path_buf(),
            device_size,
            current: Chunk::new(),
            queued: 0,
            to_hash,
            to_write,
            hasher,
            writer,
            written,
        })
    }

    /// Bytes on the device so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Add downloaded bytes; waits while the stages are behind.
    pub async fn push(&mut self, mut data: &[u8]) -> Result<(), AgentError> {
        while !data.is_empty() {
            let took = self.current.fill(data);
            data = &data[took..];
            if self.current.is_full() {
                self.send().await?;
            }
        }
        Ok(())
    }

    /// Add `n` zero bytes (a qcow2 zero or unallocated range) without building them.
    pub async fn push_zeros(&mut self, n: u64) -> Result<(), AgentError> {
        if self.current.len > 0 {
            self.send().await?;
        }
        self.reserve(n)?;
        let _ = self.to_hash.send(Piece::Zeros(n)).await;
        if self.to_write.send(Piece::Zeros(n)).await.is_err() {
            return Err(self.stopped());
        }
        Ok(())
    }

    /// Account for `n` more bytes, refusing to go past the end of the disk.
    fn reserve(&mut self, n: u64) -> Result<(), AgentError> {
        let end = self.queued + n;
        if end > self.device_size {
            return Err(AgentError::DiskTooSmall {
                device: self.device.clone(),
                reason: format!(
                    "the image needs more than {} bytes but the disk has {}",
                    self.queued, self.device_size
                ),
            });
        }
        self.queued = end;
        Ok(())
    }

    async fn send(&mut self) -> Result<(), AgentError> {
        let chunk = std::mem::replace(&mut self.current, Chunk::new());
        self.reserve(chunk.len as u64)?;
        let chunk = Arc::new(chunk);
        // A closed stage has failed; `finish` reports why.
        let _ = self.to_hash.send(Piece::Data(chunk.clone())).await;
        if self.to_write.send(Piece::Data(chunk)).await.is_err() {
            return Err(self.stopped());
        }
        Ok(())
    }

    fn stopped(&self) -> AgentError {
        AgentError::disk(
            &self.device,
            "writing",
            std::io::Error::other("the write stage stopped"),
        )
    }

    /// Flush the last partial chunk, wait for both stages and return the bytes written and
    /// the hash stage's output.
    pub async fn finish(mut self) -> Result<(u64, H::Output), AgentError> {
        if self.current.len > 0 {
            self.send().await?;
        }
        let Self {
            to_hash,
            to_write,
            hasher,
            writer,
            device,
            ..
        } = self;
        drop((to_hash, to_write));
        let joined = tokio::task::spawn_blocking(move || (hasher.join(), writer.join()))
            .await
            .map_err(|e| {
                AgentError::disk(
                    &device,
                    "waiting for the write of",
                    std::io::Error::other(e.to_string()),
                )
            })?;
        let panicked = |what: &str| {
            AgentError::disk(
                &device,
                "writing",
                std::io::Error::other(format!("the {what} thread panicked")),
            )
        };
        let hash = joined.0.map_err(|_| panicked("hash"))?;
        let written = joined.1.map_err(|_| panicked("write"))??;
        Ok((written, hash))
    }
}

/// Write through `O_DIRECT` when offset and length allow it (full aligned chunks go around the
/// page cache), else through the page cache (a tail, an unaligned piece).
fn write_at(
    direct: Option<&File>,
    buffered: &File,
    data: &[u8],
    offset: u64,
) -> std::io::Result<()> {
    match direct {
        Some(d) if offset.is_multiple_of(ALIGN as u64) && data.len().is_multiple_of(ALIGN) => {
            d.write_all_at(data, offset)
        }
        _ => buffered.write_all_at(data, offset),
    }
}

/// Ask the device to zero `len` bytes at `offset` (`FALLOC_FL_ZERO_RANGE`: write-zeroes or
/// discard-with-zeroes on block devices that support it; an error otherwise).
fn zero_range(device: &File, offset: u64, len: u64) -> std::io::Result<()> {
    zero_with(
        device,
        offset,
        len,
        nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE,
    )
}

/// Make `len` bytes at `offset` of a file read as zeros by deallocating them.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    zero_with(
        file,
        offset,
        len,
        nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE,
    )
}

/// `fallocate` with `how`, keeping the size.
fn zero_with(
    file: &File,
    offset: u64,
    len: u64,
    how: nix::fcntl::FallocateFlags,
) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::other("zero range past the largest offset"));
    };
    nix::fcntl::fallocate(
        file,
        how | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
    .map_err(std::io::Error::from)
}

/// `O_DIRECT` and buffered handles on a block device; only a buffered one on a file.
fn open_device(device: &Path) -> Result<(Option<File>, File), AgentError> {
    let io = |op| move |e| AgentError::disk(device, op, e);
    let buffered = OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(io("opening"))?;
    let is_block = buffered
        .metadata()
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let direct = if is_block {
        // Some devices refuse O_DIRECT; the page cache still works there.
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(device)
            .ok()
    } else {
        None
    };
    Ok((direct, buffered))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    struct Sha(Sha256);
    impl ChunkHasher for Sha {
        type Output = String;
        fn update(&mut self, data: &[u8]) {
            self.0.update(data);
        }
        fn finish(self) -> String {
            crate::image::hex(&self.0.finalize())
        }
    }

    #[tokio::test]
    async fn pieces_of_any_size_end_up_in_order_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0xaau8; 20 << 20]).unwrap();
        let image: Vec<u8> = (0..(9 << 20) + 123).map(|i| (i % 253) as u8).collect();
        let mut w = RawWriter::start(&dev, 20 << 20, Sha(Sha256::new())).unwrap();
        for piece in image.chunks(65_537) {
            w.push(piece).await.unwrap();
        }
        let (written, hash) = w.finish().await.unwrap();
        assert_eq!(written, image.len() as u64);
        assert_eq!(hash, crate::image::hex(&Sha256::digest(&image)));
        let disk = std::fs::read(&dev).unwrap();
        assert!(disk[..image.len()] == image[..]);
        assert!(
            disk[image.len()..].iter().all(|b| *b == 0xaa),
            "nothing written past the image"
        );
    }

    #[tokio::test]
    async fn an_image_larger_than_the_disk_stops_before_writing_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0u8; 6 << 20]).unwrap();
        let mut w = RawWriter::start(&dev, 6 << 20, Sha(Sha256::new())).unwrap();
        let err = async {
            for _ in 0..3 {
                w.push(&vec![1u8; 4 << 20]).await?;
            }
            Ok::<_, AgentError>(())
        }
        .await
        .unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
        assert_eq!(std::fs::metadata(&dev).unwrap().len(), 6 << 20);
    }
}
