//! An imago storage object over an image that is still downloading, held in memory: a read
//! waits until the download has passed the bytes it needs, so qcow2 conversion runs while the
//! image arrives instead of after it (Ironic downloads first, then converts). Memory rather
//! than a temporary file because the ramdisk's `/tmp` is RAM anyway, and this saves copying
//! every byte into a file and out again.

use std::fmt;
use std::io;
use std::sync::{Arc, RwLock};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageOpenOptions};
use tokio::sync::watch;

/// The download is kept in pieces of this size (the last one may be shorter).
const SEGMENT: usize = 4 << 20;
/// Memory left to everything else when the download's budget is taken from `MemAvailable`.
const RESERVE: u64 = 256 << 20;

/// How far the download is, published by [`GrowingWriter`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes readable by the converter.
    pub bytes: u64,
    /// `None` while running; then `Ok` or why it failed.
    pub finished: Option<Result<(), String>>,
}

/// The segments downloaded so far, shared by the writer and the reader.
#[derive(Debug, Default)]
struct Segments(RwLock<Vec<Arc<Vec<u8>>>>);

/// The downloader's end: appends bytes and publishes progress.
#[derive(Debug)]
pub struct GrowingWriter {
    segments: Arc<Segments>,
    current: Vec<u8>,
    total: u64,
    published: u64,
    budget: u64,
    progress: watch::Sender<Downloaded>,
}

/// Where the converter's end comes from, before the final size is known.
#[derive(Debug, Clone)]
pub struct GrowingSource {
    segments: Arc<Segments>,
    progress: watch::Receiver<Downloaded>,
}

impl GrowingSource {
    /// The download as an image of `size` bytes (its final size).
    pub fn image(self, size: u64) -> GrowingImage {
        GrowingImage {
            segments: self.segments,
            size,
            progress: self.progress,
            helper: CommonStorageHelper::default(),
        }
    }
}

/// The converter's end: the download seen as a read-only storage object of its final size.
#[derive(Debug)]
pub struct GrowingImage {
    segments: Arc<Segments>,
    size: u64,
    progress: watch::Receiver<Downloaded>,
    helper: CommonStorageHelper,
}

/// A new in-memory download that may grow to `budget` bytes (see [`memory_budget`]).
pub fn growing(budget: u64) -> GrowingWriter {
    GrowingWriter {
        segments: Arc::default(),
        current: Vec::new(),
        total: 0,
        published: 0,
        budget,
        progress: watch::channel(Downloaded::default()).0,
    }
}

/// What a download held in memory may use: `MemAvailable` less a reserve for everything else
/// (unlimited when `/proc/meminfo` cannot be read).
pub fn memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| crate::inventory::meminfo_kib(&m, "MemAvailable"))
        .map_or(u64::MAX, |kib| {
            kib.saturating_mul(1024).saturating_sub(RESERVE)
        })
}

impl GrowingWriter {
    /// The reading end.
    pub fn source(&self) -> GrowingSource {
        GrowingSource {
            segments: self.segments.clone(),
            progress: self.progress.subscribe(),
        }
    }

    /// Progress as published so far.
    pub fn subscribe(&self) -> watch::Receiver<Downloaded> {
        self.progress.subscribe()
    }

    /// Bytes appended so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Append downloaded bytes; full segments become readable at once. Fails when the
    /// download outgrows its memory budget.
    pub fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.total + data.len() as u64 > self.budget {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "the image is larger than the {} bytes of free memory",
                    self.budget
                ),
            ));
        }
        self.total += data.len() as u64;
        while !data.is_empty() {
            if self.current.capacity() == 0 {
                self.current
                    .try_reserve_exact(SEGMENT)
                    .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
            }
            let take = (SEGMENT - self.current.len()).min(data.len());
            self.current.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.current.len() == SEGMENT {
                self.publish();
            }
        }
        Ok(())
    }

    /// Publish the last partial segment and how the download ended.
    pub fn finish(&mut self, result: Result<(), String>) {
        if !self.current.is_empty() {
            self.publish();
        }
        self.progress.send_modify(|p| p.finished = Some(result));
    }

    fn publish(&mut self) {
        let segment = Arc::new(std::mem::take(&mut self.current));
        self.published += segment.len() as u64;
        (self.segments.0.write().unwrap_or_else(|p| p.into_inner())).push(segment);
        let bytes = self.published;
        self.progress.send_modify(|p| p.bytes = bytes);
    }
}

impl fmt::Display for GrowingImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image download ({} bytes)", self.size)
    }
}

impl GrowingImage {
    /// Wait until the first `end` bytes have arrived.
    async fn wait_for(&self, end: u64) -> io::Result<()> {
        let mut rx = self.progress.clone();
        loop {
            {
                let p = rx.borrow_and_update();
                if p.bytes >= end {
                    return Ok(());
                }
                match &p.finished {
                    Some(Ok(())) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the image ended after {} bytes; {end} were needed", p.bytes),
                        ));
                    }
                    Some(Err(reason)) => {
                        return Err(io::Error::other(format!("the download failed: {reason}")));
                    }
                    None => {}
                }
            }
            rx.changed()
                .await
                .map_err(|_| io::Error::other("the download stopped without a result"))?;
        }
    }

    /// Copy from `offset` into `dst`; zeros past the final size (imago may read a whole
    /// cluster at the end of the file).
    fn copy_out(&self, mut offset: u64, dst: &mut [u8]) {
        let all = self.segments.0.read().unwrap_or_else(|p| p.into_inner());
        let mut dst = dst;
        while !dst.is_empty() {
            let index = (offset / SEGMENT as u64) as usize;
            let within = (offset % SEGMENT as u64) as usize;
            let Some(src) = all.get(index).and_then(|s| s.get(within..)) else {
                dst.fill(0);
                return;
            };
            let take = src.len().min(dst.len());
            if take == 0 {
                dst.fill(0);
                return;
            }
            dst[..take].copy_from_slice(&src[..take]);
            dst = &mut dst[take..];
            offset += take as u64;
        }
    }
}

// imago's storage interface has `unsafe fn`s (their callers promise the buffers stay valid
// until the I/O completes); this type only copies into them before returning.
#[allow(unsafe_code)]
impl Storage for GrowingImage {
    async fn open(_opts: StorageOpenOptions) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an image download cannot be opened by name",
        ))
    }

    fn mem_align(&self) -> usize {
        1
    }

    fn req_align(&self) -> usize {
        1
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    async unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(bufv.len()).min(self.size);
        self.wait_for(end).await?;
        let mut at = offset;
        for mut slice in bufv.into_inner() {
            self.copy_out(at, &mut slice);
            at += slice.len() as u64;
        }
        Ok(())
    }

    async unsafe fn pure_writev(&self, _bufv: IoVector<'_>, _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the downloaded image is read-only",
        ))
    }

    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    async unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use imago::StorageExt;

    #[tokio::test]
    async fn reads_wait_for_the_download_and_report_its_failure() {
        let mut w = growing(u64::MAX);
        let image = w.source().image(8);
        let reader = async {
            let mut buf = vec![0u8; 4];
            image.read(&mut buf[..], 2).await.map(|_| buf)
        };
        let writer = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            w.append(b"abcdefgh").unwrap();
            w.finish(Ok(()));
        };
        let (read, ()) = tokio::join!(reader, writer);
        assert_eq!(read.unwrap(), b"cdef");

        let mut w = growing(u64::MAX);
        let image = w.source().image(16);
        w.append(b"abcdefgh").unwrap();
        w.finish(Err("connection reset".into()));
        let mut buf = [0u8; 4];
        let err = image.read(&mut buf[..], 10).await.unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        let mut buf = [0u8; 4];
        image.read(&mut buf[..], 0).await.unwrap();
        assert_eq!(&buf, b"abcd");
    }

    #[tokio::test]
    async fn reads_across_segments_see_the_bytes_in_order() {
        let data: Vec<u8> = (0..SEGMENT * 2 + 777).map(|i| (i % 251) as u8).collect();
        let mut w = growing(u64::MAX);
        let image = w.source().image(data.len() as u64);
        for piece in data.chunks(100_003) {
            w.append(piece).unwrap();
        }
        // Before the end only whole segments are readable.
        assert_eq!(w.subscribe().borrow().bytes, 2 * SEGMENT as u64);
        w.finish(Ok(()));
        let at = SEGMENT as u64 - 5;
        let mut buf = vec![0u8; SEGMENT + 700];
        image.read(&mut buf[..], at).await.unwrap();
        assert!(buf[..] == data[at as usize..at as usize + buf.len()]);
    }

    #[test]
    fn a_download_larger_than_its_budget_is_refused() {
        let mut w = growing(10);
        w.append(b"0123456789").unwrap();
        let err = w.append(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        assert!(err.to_string().contains("10 bytes of free memory"), "{err}");
        assert!(memory_budget() > 0);
    }
}
