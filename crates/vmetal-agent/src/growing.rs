//! An imago storage object over an image file that is still being downloaded: a read waits
//! until the download has passed the bytes it needs, so qcow2 conversion runs while the image
//! arrives instead of after it (Ironic downloads first, then converts).

use std::fmt;
use std::io;

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageOpenOptions};
use tokio::sync::watch;

/// How far the download is; sent by the downloader after each flushed write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written to the file and readable by others.
    pub bytes: u64,
    /// `None` while running; then `Ok` or why it failed.
    pub finished: Option<Result<(), String>>,
}

/// The file being downloaded, seen as a read-only storage object of its final size.
#[derive(Debug)]
pub struct GrowingFile {
    inner: imago::file::File,
    size: u64,
    progress: watch::Receiver<Downloaded>,
}

impl fmt::Display for GrowingFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image download ({} bytes)", self.size)
    }
}

impl GrowingFile {
    /// Open `path`, which the downloader writes to and reports on through `progress`; `size` is
    /// its final size (the response's Content-Length).
    pub async fn open(
        path: &std::path::Path,
        size: u64,
        progress: watch::Receiver<Downloaded>,
    ) -> io::Result<Self> {
        let inner = imago::file::File::open(StorageOpenOptions::new().filename(path)).await?;
        Ok(Self {
            inner,
            size,
            progress,
        })
    }

    /// Wait until the first `end` bytes are in the file.
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
}

// imago's storage interface has `unsafe fn`s (their callers promise the buffers stay valid
// until the I/O completes); this type forwards that promise to the file unchanged.
#[allow(unsafe_code)]
impl Storage for GrowingFile {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }

    async unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(bufv.len()).min(self.size);
        self.wait_for(end).await?;
        // SAFETY: the caller's guarantee for `bufv` is passed on as is.
        unsafe { self.inner.pure_readv(bufv, offset).await }
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
        // SAFETY: forwarded unchanged, see above.
        unsafe { self.inner.invalidate_cache().await }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        self.inner.get_storage_helper()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use imago::StorageExt;

    #[tokio::test]
    async fn reads_wait_for_the_download_and_report_its_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, b"").unwrap();
        let (tx, rx) = watch::channel(Downloaded::default());
        let file = GrowingFile::open(&path, 8, rx).await.unwrap();
        let reader = async {
            let mut buf = vec![0u8; 4];
            file.read(&mut buf[..], 2).await.map(|_| buf)
        };
        let writer = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            std::fs::write(&path, b"abcdefgh").unwrap();
            tx.send_modify(|p| p.bytes = 8);
        };
        let (read, ()) = tokio::join!(reader, writer);
        assert_eq!(read.unwrap(), b"cdef");

        let (tx, rx) = watch::channel(Downloaded::default());
        let file = GrowingFile::open(&path, 16, rx).await.unwrap();
        tx.send_modify(|p| {
            p.bytes = 8;
            p.finished = Some(Err("connection reset".into()));
        });
        let mut buf = [0u8; 4];
        let err = file.read(&mut buf[..], 10).await.unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        let mut buf = [0u8; 4];
        file.read(&mut buf[..], 0).await.unwrap();
        assert_eq!(&buf, b"abcd");
    }
}
