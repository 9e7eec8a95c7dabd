//! Streaming a raw image onto a disk in three stages that run at once: the download (async),
//! hashing (a thread, optional) and writing (a thread, `O_DIRECT` in 4 MiB aligned chunks on
//! block devices, then `fsync`). The slowest stage sets the pace instead of their sum. Zero
//! chunks are not written but zeroed by the device (write-zeroes) or punched out of a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::error::AgentError;

/// Bytes per chunk handed to the hash and write stages.
pub const CHUNK: usize = 4 << 20;
/// Alignment `O_DIRECT` needs for buffers, offsets and lengths (covers 512 and 4K sectors).
const ALIGN: usize = 4096;
/// Chunks in flight per stage (memory: about 2 × DEPTH × CHUNK).
const DEPTH: usize = 4;

/// Spare chunk buffers: a steady stream reuses them instead of allocating (and page-faulting)
/// 4 MiB per chunk.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    fn chunk(&self) -> Chunk {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let buf = spare.unwrap_or_else(|| vec![0u8; CHUNK + ALIGN]);
        // `align_offset` is safe and exact for u8 pointers.
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Chunk {
            buf,
            start,
            len: 0,
            pool: Some(self.clone()),
        }
    }
}

/// A chunk whose data starts at an `ALIGN`-aligned address; its buffer goes back to the pool
/// when the last stage is done with it.
pub struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    pool: Option<Pool>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let mut spare = pool.0.lock().unwrap_or_else(|p| p.into_inner());
            if spare.len() < 2 * DEPTH + 2 {
                spare.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

impl Chunk {
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

/// Whether `data` is all zeros (page by page; the inner fold compiles to wide compares).
fn is_zero(data: &[u8]) -> bool {
    data.chunks(ALIGN)
        .all(|page| page.iter().fold(0u8, |acc, b| acc | b) == 0)
}

/// What flows to the stages, in disk order.
enum Piece {
    /// Bytes to write.
    Data(Arc<Chunk>),
    /// This many zero bytes (a qcow2 zero or unallocated range).
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
/// [`RawWriter::finish`]. Dropped without `finish` (an error elsewhere), it waits for the write
/// thread, so nothing reaches the disk after the caller has moved on (to wiping, say).
pub struct RawWriter<H: ChunkHasher> {
    device: PathBuf,
    device_size: u64,
    pool: Pool,
    current: Chunk,
    queued: u64,
    to_hash: Option<mpsc::Sender<Piece>>,
    to_write: Option<mpsc::Sender<Piece>>,
    hasher: Option<std::thread::JoinHandle<H::Output>>,
    /// `None` once joined.
    writer: Option<WriteThread>,
    written: Arc<AtomicU64>,
}

type WriteThread = std::thread::JoinHandle<Result<u64, AgentError>>;

impl<H: ChunkHasher> Drop for RawWriter<H> {
    fn drop(&mut self) {
        self.to_hash = None;
        self.to_write = None;
        if let Some(writer) = self.writer.take() {
            // At most DEPTH queued chunks are left to write; the thread stops after them.
            let _ = writer.join();
        }
    }
}

impl<H: ChunkHasher> RawWriter<H> {
    /// Open `device` (of `device_size` bytes) and start the stages; without a hasher nothing
    /// is hashed.
    pub fn start(device: &Path, device_size: u64, hasher: Option<H>) -> Result<Self, AgentError> {
        let (direct, buffered) = open_device(device)?;
        let pool = Pool::default();
        let (to_hash, hasher) = match hasher {
            Some(h) => {
                let (tx, rx) = mpsc::channel::<Piece>(DEPTH);
                let thread = std::thread::Builder::new()
                    .name("image-hash".into())
                    .spawn(move || hash_stage(h, rx))
                    .map_err(|e| AgentError::disk(device, "starting the hash thread for", e))?;
                (Some(tx), Some(thread))
            }
            None => (None, None),
        };
        let (to_write, write_rx) = mpsc::channel::<Piece>(DEPTH);
        let written = Arc::new(AtomicU64::new(0));
        let stage = WriteStage {
            device: device.to_path_buf(),
            direct,
            block: is_block(&buffered),
            buffered,
            progress: written.clone(),
            zeros: None,
            pool: pool.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("image-write".into())
            .spawn(move || stage.run(write_rx))
            .map_err(|e| AgentError::disk(device, "starting the write thread for", e))?;
        Ok(Self {
            device: device.to_path_buf(),
            device_size,
            current: pool.chunk(),
            pool,
            queued: 0,
            to_hash,
            to_write: Some(to_write),
            hasher,
            writer: Some(writer),
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
        self.hand_on(|| Piece::Zeros(n)).await
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
        let chunk = std::mem::replace(&mut self.current, self.pool.chunk());
        self.reserve(chunk.len as u64)?;
        let chunk = Arc::new(chunk);
        self.hand_on(|| Piece::Data(chunk.clone())).await
    }

    async fn hand_on(&mut self, piece: impl Fn() -> Piece) -> Result<(), AgentError> {
        if let Some(h) = &self.to_hash {
            // The hash stage only stops when its receiver is gone, i.e. it panicked;
            // `finish` reports that.
            let _ = h.send(piece()).await;
        }
        let sent = match &self.to_write {
            Some(w) => w.send(piece()).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The write thread has stopped: its own error says why (a disk error, say).
        self.to_write = None;
        let writer = self.writer.take();
        Err(match join_writer(&self.device, writer).await {
            Err(e) => e,
            Ok(_) => self.error("the write stage stopped"),
        })
    }

    fn error(&self, what: &str) -> AgentError {
        AgentError::disk(
            &self.device,
            "writing",
            std::io::Error::other(what.to_owned()),
        )
    }

    /// Flush the last partial chunk, wait for the stages and return the bytes written and
    /// the hash stage's output (`None` without a hasher). The stages are always joined, even
    /// when the last chunk is refused.
    pub async fn finish(mut self) -> Result<(u64, Option<H::Output>), AgentError> {
        let last = if self.current.len > 0 {
            self.send().await
        } else {
            Ok(())
        };
        self.to_hash = None;
        self.to_write = None;
        let written = join_writer(&self.device, self.writer.take()).await;
        let hash = match self.hasher.take() {
            None => Ok(None),
            Some(h) => match tokio::task::spawn_blocking(move || h.join()).await {
                Ok(Ok(output)) => Ok(Some(output)),
                _ => Err(self.error("the hash thread panicked")),
            },
        };
        last?;
        let written = written?;
        Ok((written, hash?))
    }
}

/// Wait for the write thread (off the async threads) and return its result.
async fn join_writer(device: &Path, writer: Option<WriteThread>) -> Result<u64, AgentError> {
    let fail = |what: String| AgentError::disk(device, "writing", std::io::Error::other(what));
    let Some(writer) = writer else {
        return Err(fail("the write stage stopped earlier".into()));
    };
    match tokio::task::spawn_blocking(move || writer.join()).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(fail("the write thread panicked".into())),
        Err(e) => Err(fail(format!("waiting for the write thread failed: {e}"))),
    }
}

/// The hash thread: every piece in order, zero ranges as zeros.
fn hash_stage<H: ChunkHasher>(mut hasher: H, mut rx: mpsc::Receiver<Piece>) -> H::Output {
    let zeros = vec![0u8; CHUNK];
    while let Some(piece) = rx.blocking_recv() {
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
}

/// The write thread's state.
struct WriteStage {
    device: PathBuf,
    /// An `O_DIRECT` handle (block devices that allow it).
    direct: Option<File>,
    buffered: File,
    /// A block device (else a disk file).
    block: bool,
    progress: Arc<AtomicU64>,
    /// A chunk of zeros, made the first time a range has to be written out as zeros.
    zeros: Option<Chunk>,
    pool: Pool,
}

impl WriteStage {
    fn run(mut self, mut rx: mpsc::Receiver<Piece>) -> Result<u64, AgentError> {
        let mut offset = 0u64;
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                Piece::Data(chunk) => {
                    let data = chunk.data();
                    let len = data.len() as u64;
                    // Zeros in a raw image (most of an OS image's free space) need no writing.
                    if !(is_zero(data) && self.zero_fast(offset, len).is_ok()) {
                        write_at(self.direct.as_ref(), &self.buffered, data, offset)
                            .map_err(|e| self.error("writing", e))?;
                    }
                    offset += len;
                }
                Piece::Zeros(n) => {
                    if self.zero_fast(offset, n).is_err() {
                        self.write_zeros(offset, n)
                            .map_err(|e| self.error("zeroing", e))?;
                    }
                    offset += n;
                }
            }
            self.progress.store(offset, Ordering::Relaxed);
        }
        if let Some(d) = &self.direct {
            d.sync_all().map_err(|e| self.error("syncing", e))?;
        }
        (&self.buffered)
            .flush()
            .and_then(|()| self.buffered.sync_all())
            .map_err(|e| self.error("syncing", e))?;
        Ok(offset)
    }

    /// Zero a range without sending zeros: a hole in a file (it stays sparse), write-zeroes on
    /// a block device (as `qemu-img convert` does; the kernel writes zeros itself where the
    /// device has no such command). An error for ranges the call refuses (unaligned on a block
    /// device, no hole punching in this filesystem); the caller then writes zeros.
    fn zero_fast(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let how = if self.block {
            nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE
        } else {
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        };
        zero_with(&self.buffered, offset, len, how)
    }

    fn write_zeros(&mut self, mut offset: u64, mut n: u64) -> std::io::Result<()> {
        let pool = &self.pool;
        let z = self.zeros.get_or_insert_with(|| {
            let mut c = pool.chunk();
            c.buf.fill(0);
            c.len = CHUNK;
            c
        });
        while n > 0 {
            let take = n.min(CHUNK as u64) as usize;
            write_at(
                self.direct.as_ref(),
                &self.buffered,
                &z.data()[..take],
                offset,
            )?;
            offset += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    fn error(&self, op: &'static str, e: std::io::Error) -> AgentError {
        AgentError::disk(&self.device, op, e)
    }
}

fn is_block(file: &File) -> bool {
    file.metadata()
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
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
    let direct = if is_block(&buffered) {
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
        let mut w = RawWriter::start(&dev, 20 << 20, Some(Sha(Sha256::new()))).unwrap();
        for piece in image.chunks(65_537) {
            w.push(piece).await.unwrap();
        }
        let (written, hash) = w.finish().await.unwrap();
        assert_eq!(written, image.len() as u64);
        assert_eq!(hash, Some(crate::image::hex(&Sha256::digest(&image))));
        let disk = std::fs::read(&dev).unwrap();
        assert!(disk[..image.len()] == image[..]);
        assert!(
            disk[image.len()..].iter().all(|b| *b == 0xaa),
            "nothing written past the image"
        );
    }

    #[tokio::test]
    async fn zero_chunks_become_holes_and_are_still_hashed() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0xaau8; 16 << 20]).unwrap();
        // 4 MiB of data, 8 MiB of zeros, 4 MiB of data.
        let mut image = vec![0x55u8; 16 << 20];
        image[4 << 20..12 << 20].fill(0);
        let mut w = RawWriter::start(&dev, 16 << 20, Some(Sha(Sha256::new()))).unwrap();
        w.push(&image).await.unwrap();
        let (written, hash) = w.finish().await.unwrap();
        assert_eq!(written, 16 << 20);
        assert_eq!(hash, Some(crate::image::hex(&Sha256::digest(&image))));
        assert!(
            std::fs::read(&dev).unwrap() == image,
            "the zeros replaced the old bytes"
        );
        let allocated = std::fs::metadata(&dev).unwrap().blocks() * 512;
        assert!(
            allocated <= 9 << 20,
            "the zero range was punched out: {allocated} bytes allocated"
        );
    }

    #[tokio::test]
    async fn a_failing_disk_reports_its_own_error() {
        // /dev/full refuses every write with ENOSPC.
        let mut w =
            RawWriter::start(Path::new("/dev/full"), 64 << 20, Some(Sha(Sha256::new()))).unwrap();
        let pushed = async {
            for _ in 0..12 {
                w.push(&vec![1u8; 4 << 20]).await?;
            }
            Ok::<_, AgentError>(())
        }
        .await;
        let err = match pushed {
            Err(e) => e,
            Ok(()) => w.finish().await.unwrap_err(),
        };
        assert!(err.to_string().contains("No space left"), "{err}");
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }

    #[tokio::test]
    async fn without_a_hasher_nothing_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0u8; 8 << 20]).unwrap();
        let mut w = RawWriter::<Sha>::start(&dev, 8 << 20, None).unwrap();
        w.push(&[7u8; 5000]).await.unwrap();
        w.push_zeros(3000).await.unwrap();
        w.push(&[9u8; 100]).await.unwrap();
        let (written, hash) = w.finish().await.unwrap();
        assert_eq!((written, hash), (8100, None));
        let disk = std::fs::read(&dev).unwrap();
        assert!(disk[..5000].iter().all(|b| *b == 7) && disk[5000..8000].iter().all(|b| *b == 0));
        assert!(disk[8000..8100].iter().all(|b| *b == 9));
    }

    #[tokio::test]
    async fn an_image_larger_than_the_disk_stops_before_writing_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("disk");
        std::fs::write(&dev, vec![0u8; 6 << 20]).unwrap();
        let mut w = RawWriter::start(&dev, 6 << 20, Some(Sha(Sha256::new()))).unwrap();
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
