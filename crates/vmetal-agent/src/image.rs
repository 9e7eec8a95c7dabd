//! Image writing: download, checksum (sha256/sha512, md5 only when asked), raw images streamed
//! straight to the device, qcow2 images converted with imago while they download into memory.
//!
//! Success is only declared after the checksum matched; on a mismatch the first MiB written
//! is zeroed again so a half image cannot boot.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use vmetal_api::agent::{CommandProgress, DeployCommand};
use vmetal_api::states::{ChecksumType, ImageFormat};

use crate::client::http_client;
use crate::error::{AgentError, redact_url};
use crate::growing::{Downloaded, GrowingImage, GrowingWriter, growing, memory_budget};
use crate::rawwrite::{ChunkHasher, RawWriter};

/// How much of a failed image's start is zeroed so that it cannot boot.
const WIPE: u64 = 1 << 20;
/// A download that delivers nothing for this long has stalled.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Checksum files larger than this are refused.
const MAX_CHECKSUM_FILE: usize = 1 << 20;
/// Report progress at most every this many bytes.
const PROGRESS_EVERY: u64 = 16 << 20;

/// What [`write_image`] put on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Bytes of disk content written (the raw image size, or the qcow2 virtual size).
    pub image_end: u64,
    /// Bytes downloaded.
    pub downloaded: u64,
    /// SHA-256 of the disk content written, hex, for raw images (the verified image checksum
    /// itself when that is SHA-256). `None` for qcow2: hashing the converted disk would be a
    /// second full pass over it, and the qcow2 file's own checksum was verified.
    pub written_sha256: Option<String>,
    /// The algorithm the image checksum was verified with (`sha256`, `sha512`, `md5`).
    pub checksum_algorithm: &'static str,
}

/// The algorithm and expected value of an image checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedChecksum {
    /// `md5`, `sha256` or `sha512`.
    pub algorithm: ChecksumType,
    /// Lower-case hex.
    pub hex: String,
}

/// A running digest of one of the supported algorithms.
enum Hasher {
    Md5(md5::Md5),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(t: ChecksumType) -> Self {
        match t {
            ChecksumType::Md5 => Hasher::Md5(md5::Md5::new()),
            ChecksumType::Sha512 => Hasher::Sha512(Sha512::new()),
            ChecksumType::Sha256 | ChecksumType::Auto => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex(&h.finalize()),
            Hasher::Sha256(h) => hex(&h.finalize()),
            Hasher::Sha512(h) => hex(&h.finalize()),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn algorithm_name(t: ChecksumType) -> &'static str {
    match t {
        ChecksumType::Md5 => "md5",
        ChecksumType::Sha512 => "sha512",
        ChecksumType::Sha256 | ChecksumType::Auto => "sha256",
    }
}

/// Download `cmd.image_url` onto `device` (a block device or disk file), verify its checksum
/// and report progress. The device is fsynced before returning.
pub async fn write_image(
    cmd: &DeployCommand,
    device: &Path,
    mut progress: impl FnMut(CommandProgress),
) -> Result<WriteReport, AgentError> {
    let url = redact_url(&cmd.image_url);
    let format = cmd.format.unwrap_or(ImageFormat::Raw);
    if !matches!(format, ImageFormat::Raw | ImageFormat::Qcow2) {
        return Err(AgentError::ImageFormat {
            url,
            reason: format!(
                "format {} is not supported by the vmetal agent; use raw or qcow2",
                serde_json::to_value(format)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_else(|| format!("{format:?}"))
            ),
        });
    }
    let client = http_client()?;
    let stall = cmd
        .download_stall_timeout_seconds
        .map_or(STALL_TIMEOUT, Duration::from_secs)
        .max(Duration::from_secs(1));
    let expected = resolve_checksum(&client, cmd).await?;
    let mut step = |step: &str, done: u64, total: Option<u64>| {
        progress(CommandProgress {
            id: cmd.id.clone(),
            step: step.into(),
            done_bytes: done,
            total_bytes: total,
        })
    };
    let resp = get(&client, &cmd.image_url).await?;
    let total = resp.content_length();
    let io = |op| move |e| AgentError::disk(device, op, e);
    let mut dev = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .await
        .map_err(io("opening"))?;
    let device_size = dev
        .seek(std::io::SeekFrom::End(0))
        .await
        .map_err(io("sizing"))?;
    dev.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(io("seeking"))?;

    match format {
        ImageFormat::Qcow2 => {
            drop(dev);
            let step = std::sync::Mutex::new(step);
            let (downloaded, actual, image_end) = qcow2_while_downloading(
                resp,
                &url,
                stall,
                expected.algorithm,
                total,
                device,
                device_size,
                &mut |d| (step.lock().unwrap_or_else(|p| p.into_inner()))("downloading", d, total),
                &mut |d, t| (step.lock().unwrap_or_else(|p| p.into_inner()))("writing", d, Some(t)),
            )
            .await?;
            if let Err(e) = verify(&url, &expected, &actual) {
                // The image was written while it arrived: never leave it bootable.
                wipe_start(device, image_end).await?;
                return Err(e);
            }
            Ok(WriteReport {
                image_end,
                downloaded,
                written_sha256: None,
                checksum_algorithm: algorithm_name(expected.algorithm),
            })
        }
        _ => {
            if let Some(t) = total.filter(|t| *t > device_size) {
                return Err(too_small(device, t, device_size));
            }
            drop(dev);
            let mut writer = RawWriter::start(
                device,
                device_size,
                Some(ImageHashes::new(expected.algorithm)),
            )?;
            let mut stream = resp.bytes_stream();
            let mut reported = 0u64;
            let streamed: Result<(), AgentError> = async {
                loop {
                    let next = tokio::time::timeout(stall, stream.next())
                        .await
                        .map_err(|_| stalled(&url, stall))?;
                    let Some(piece) = next else { return Ok(()) };
                    let piece = piece.map_err(|e| download_error(&url, reqwest_reason(&e)))?;
                    writer.push(&piece).await?;
                    let written = writer.written();
                    if written - reported >= PROGRESS_EVERY {
                        reported = written;
                        step("writing", written, total);
                    }
                }
            }
            .await;
            let finished = writer.finish().await;
            let (written, (image_hex, written_sha256)) = match (streamed, finished) {
                (Ok(()), Ok((written, Some(hashes)))) => (written, hashes),
                (Ok(()), Ok((_, None))) => {
                    wipe_start(device, WIPE).await?;
                    return Err(AgentError::disk(
                        device,
                        "hashing",
                        std::io::Error::other("the hash stage returned nothing"),
                    ));
                }
                (Err(e), _) | (Ok(()), Err(e)) => {
                    // Part of an image may have reached the disk: it must not boot.
                    wipe_start(device, WIPE).await?;
                    return Err(e);
                }
            };
            step("writing", written, total);
            if let Err(e) = verify(&url, &expected, &image_hex) {
                // Never leave a bootable half-verified image behind.
                wipe_start(device, written).await?;
                return Err(e);
            }
            Ok(WriteReport {
                image_end: written,
                downloaded: written,
                written_sha256: Some(written_sha256),
                checksum_algorithm: algorithm_name(expected.algorithm),
            })
        }
    }
}

/// The raw image's checksum in the user's algorithm, and the SHA-256 of what was written
/// (the same hash when the algorithm is SHA-256, computed once).
struct ImageHashes {
    image: Hasher,
    written: Option<Sha256>,
}

impl ImageHashes {
    fn new(algorithm: ChecksumType) -> Self {
        let image = Hasher::new(algorithm);
        let written = (!matches!(image, Hasher::Sha256(_))).then(Sha256::new);
        Self { image, written }
    }
}

impl ChunkHasher for ImageHashes {
    type Output = (String, String);

    fn update(&mut self, data: &[u8]) {
        self.image.update(data);
        if let Some(w) = &mut self.written {
            w.update(data);
        }
    }

    fn finish(self) -> (String, String) {
        let image = self.image.hex();
        let written = match self.written {
            Some(w) => hex(&w.finalize()),
            None => image.clone(),
        };
        (image, written)
    }
}

fn stalled(url: &str, stall: Duration) -> AgentError {
    download_error(
        url,
        format!(
            "no data for {} s; check the image server (or raise the controller's download stall timeout)",
            stall.as_secs()
        ),
    )
}

fn too_small(device: &Path, need: u64, have: u64) -> AgentError {
    AgentError::DiskTooSmall {
        device: device.to_path_buf(),
        reason: format!("the image needs {need} bytes but the disk has {have}"),
    }
}

fn download_error(url: &str, reason: String) -> AgentError {
    AgentError::ImageDownload {
        url: url.to_string(),
        reason,
    }
}

/// A reqwest error without its URL (which may carry credentials), with its causes.
fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// GET `url`, mapping connection failures and non-2xx statuses to [`AgentError::ImageDownload`].
async fn get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response, AgentError> {
    let shown = redact_url(url);
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| download_error(&shown, reqwest_reason(&e.without_url())))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(download_error(&shown, format!("HTTP {status}")));
    }
    Ok(resp)
}

/// The checksum to verify against: the value itself, or the matching line of a checksum file.
pub async fn resolve_checksum(
    client: &reqwest::Client,
    cmd: &DeployCommand,
) -> Result<ExpectedChecksum, AgentError> {
    let url = redact_url(&cmd.image_url);
    let raw = cmd.checksum.trim();
    let value = if raw.starts_with("http://") || raw.starts_with("https://") {
        let resp = get(client, raw).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| download_error(&redact_url(raw), reqwest_reason(&e.without_url())))?;
        if body.len() > MAX_CHECKSUM_FILE {
            return Err(AgentError::InvalidChecksum {
                url,
                reason: format!("checksum file {} is larger than 1 MiB", redact_url(raw)),
            });
        }
        pick_checksum_line(&String::from_utf8_lossy(&body), &cmd.image_url).ok_or_else(|| {
            AgentError::InvalidChecksum {
                url: url.clone(),
                reason: format!(
                    "checksum file {} has no line for {}",
                    redact_url(raw),
                    image_file_name(&cmd.image_url)
                ),
            }
        })?
    } else {
        raw.to_ascii_lowercase()
    };
    expected_checksum(&value, cmd.checksum_type)
        .map_err(|reason| AgentError::InvalidChecksum { url, reason })
}

/// Algorithm and value: explicit type wins; otherwise detected by length, never md5.
fn expected_checksum(value: &str, t: Option<ChecksumType>) -> Result<ExpectedChecksum, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the checksum is not a hex string".into());
    }
    let detected = ChecksumType::detect(value);
    let algorithm = match t {
        Some(ChecksumType::Auto) | None => match detected {
            Some(ChecksumType::Md5) => {
                return Err("an md5 checksum is only accepted with checksumType: md5".into());
            }
            Some(d) => d,
            None => {
                return Err(format!(
                    "a {}-digit checksum matches no algorithm",
                    value.len()
                ));
            }
        },
        Some(explicit) => {
            if detected != Some(explicit) {
                return Err(format!(
                    "checksumType {} needs {} hex digits, got {}",
                    algorithm_name(explicit),
                    match explicit {
                        ChecksumType::Md5 => 32,
                        ChecksumType::Sha512 => 128,
                        _ => 64,
                    },
                    value.len()
                ));
            }
            explicit
        }
    };
    Ok(ExpectedChecksum {
        algorithm,
        hex: value.to_ascii_lowercase(),
    })
}

/// The last path segment of a URL, without query or fragment.
fn image_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// The checksum for the image from a checksum file: `<hex>  <name>` (GNU, `*name` for binary
/// mode) or `ALG (name) = <hex>` (BSD) lines; a file with a single checksum is taken as is.
fn pick_checksum_line(body: &str, image_url: &str) -> Option<String> {
    let wanted = image_file_name(image_url);
    let mut all = Vec::new();
    for line in body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (hex, name) = if let Some((left, right)) = line.split_once(") = ") {
            let name = left.split_once(" (").map_or("", |(_, n)| n);
            (right.trim(), name)
        } else {
            let mut parts = line.splitn(2, char::is_whitespace);
            let hex = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("").trim().trim_start_matches('*');
            (hex, name)
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || hex.is_empty() {
            continue;
        }
        let name_file = name.rsplit('/').next().unwrap_or(name);
        if !name.is_empty() && name_file == wanted {
            return Some(hex.to_ascii_lowercase());
        }
        all.push(hex.to_ascii_lowercase());
    }
    (all.len() == 1).then(|| all.remove(0))
}

fn verify(url: &str, expected: &ExpectedChecksum, actual: &str) -> Result<(), AgentError> {
    if actual == expected.hex {
        return Ok(());
    }
    Err(AgentError::ChecksumMismatch {
        url: url.to_string(),
        algorithm: algorithm_name(expected.algorithm),
        expected: expected.hex.clone(),
        actual: actual.to_string(),
    })
}

/// Zero the first MiB (at most `written` bytes) of `device`: what was written must not boot.
async fn wipe_start(device: &Path, written: u64) -> Result<(), AgentError> {
    let io = |op| move |e| AgentError::disk(device, op, e);
    let mut dev = tokio::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .await
        .map_err(io("opening"))?;
    let zeros = vec![0u8; written.min(WIPE) as usize];
    dev.write_all(&zeros).await.map_err(io("wiping"))?;
    dev.sync_all().await.map_err(io("syncing"))
}

/// Download the body into memory, hashing it and making each piece readable by the
/// converter as it lands; returns the size and digest.
async fn download_into(
    resp: reqwest::Response,
    url: &str,
    stall: Duration,
    algorithm: ChecksumType,
    sink: &mut GrowingWriter,
    progress: &mut impl FnMut(u64),
) -> Result<(u64, String), AgentError> {
    let mut hash = Hasher::new(algorithm);
    let mut stream = resp.bytes_stream();
    let mut reported = 0u64;
    loop {
        let next = tokio::time::timeout(stall, stream.next())
            .await
            .map_err(|_| stalled(url, stall))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| download_error(url, reqwest_reason(&e)))?;
        hash.update(&chunk);
        sink.append(&chunk).map_err(|e| {
            download_error(
                url,
                format!("{e}; qcow2 images are held in memory while they convert: use a raw image (streamed to disk) or give the server more memory"),
            )
        })?;
        if sink.len() - reported >= PROGRESS_EVERY {
            reported = sink.len();
            progress(reported);
        }
    }
    progress(sink.len());
    Ok((sink.len(), hash.hex()))
}

/// Download a qcow2 image into memory and convert it onto `device` at the same time (the
/// converter's reads wait for the bytes they need). Returns the bytes downloaded, their digest
/// and the virtual size.
#[allow(clippy::too_many_arguments)]
async fn qcow2_while_downloading(
    resp: reqwest::Response,
    url: &str,
    stall: Duration,
    algorithm: ChecksumType,
    total: Option<u64>,
    device: &Path,
    device_size: u64,
    download_progress: &mut impl FnMut(u64),
    write_progress: &mut impl FnMut(u64, u64),
) -> Result<(u64, String, u64), AgentError> {
    let budget = memory_budget();
    fits_in_memory(url, total, budget)?;
    let mut sink = growing(budget);
    let rx = sink.subscribe();
    let source = sink.source();
    let (downloaded, converted) = {
        let download = async {
            let r = download_into(resp, url, stall, algorithm, &mut sink, download_progress).await;
            sink.finish(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            r
        };
        let convert = async {
            // Without a Content-Length the final size is only known at the end.
            let size = match total {
                Some(t) => t,
                None => wait_finished(rx.clone()).await,
            };
            let image = source.image(size);
            convert_off_thread(image, url, device, device_size, write_progress).await
        };
        tokio::pin!(download, convert);
        let mut downloaded = None;
        let mut converted = None;
        while downloaded.is_none() || converted.is_none() {
            tokio::select! {
                r = &mut download, if downloaded.is_none() => downloaded = Some(r),
                r = &mut convert, if converted.is_none() => {
                    // A converter failing on its own (a corrupt image) ends it all now; one
                    // failing because the download did waits for the download's error.
                    if let Err(e) = r {
                        if !matches!(rx.borrow().finished, Some(Err(_))) {
                            return Err(e);
                        }
                        converted = Some(Err(e));
                    } else {
                        converted = Some(r);
                    }
                }
            }
        }
        (downloaded, converted)
    };
    // Both have finished here: the converter writes nothing more.
    let (Some(downloaded), Some(converted)) = (downloaded, converted) else {
        return Err(download_error(url, "the download stopped".into()));
    };
    let (bytes, digest) = match downloaded {
        Ok(d) => d,
        Err(e) => {
            if converted.is_ok() {
                // Converted, yet the rest of the file never came: its checksum cannot be
                // verified, so what was written must not boot. (A failed converter wiped.)
                wipe_start(device, WIPE).await?;
            }
            return Err(e);
        }
    };
    let image_end = converted?;
    Ok((bytes, digest, image_end))
}
/// Refuse a qcow2 download whose announced size exceeds the memory it would be held in.
fn fits_in_memory(url: &str, size: Option<u64>, budget: u64) -> Result<(), AgentError> {
    match size {
        Some(t) if t > budget => Err(download_error(
            url,
            format!(
                "the qcow2 image ({t} bytes) does not fit in the {budget} bytes of free memory it converts from; use a raw image (streamed to disk) or give the server more memory"
            ),
        )),
        _ => Ok(()),
    }
}

/// The final size once the download has finished (what arrived, if it failed: the converter
/// then fails on a read and the download's error is reported).
async fn wait_finished(mut rx: tokio::sync::watch::Receiver<Downloaded>) -> u64 {
    loop {
        {
            let p = rx.borrow_and_update();
            if p.finished.is_some() {
                return p.bytes;
            }
        }
        if rx.changed().await.is_err() {
            return 0;
        }
    }
}

/// Run [`qcow2_to_device`] on a blocking thread with its own small runtime (imago's futures
/// are not `Send`), relaying progress.
async fn convert_off_thread(
    image: GrowingImage,
    url: &str,
    device: &Path,
    device_size: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<u64, AgentError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let (url_owned, dev) = (url.to_string(), device.to_path_buf());
    let job = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AgentError::disk(&dev, "starting the converter for", e))?;
        rt.block_on(qcow2_to_device(
            image,
            &url_owned,
            &dev,
            device_size,
            &mut |d, t| {
                let _ = tx.send((d, t));
            },
        ))
    });
    tokio::pin!(job);
    loop {
        tokio::select! {
            r = &mut job => {
                while let Ok((d, t)) = rx.try_recv() {
                    progress(d, t);
                }
                return r.unwrap_or_else(|e| Err(AgentError::ImageFormat {
                    url: url.to_string(),
                    reason: format!("the qcow2 converter failed: {e}"),
                }));
            }
            Some((d, t)) = rx.recv() => progress(d, t),
        }
    }
}

/// Convert the qcow2 image arriving in `storage` to raw on `device`; returns the virtual size.
/// Zero and unallocated ranges are zeroed by the device or punched out of a disk file (written
/// as zeros only where neither works), never read back. On failure the start is wiped.
async fn qcow2_to_device(
    storage: GrowingImage,
    url: &str,
    device: &Path,
    device_size: u64,
    progress: &mut impl FnMut(u64, u64),
) -> Result<u64, AgentError> {
    use imago::qcow2::Qcow2;
    use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping, StorageExt};

    let bad = |reason: String| AgentError::ImageFormat {
        url: url.to_string(),
        reason,
    };
    let src_size = imago::Storage::size(&storage).unwrap_or(0);
    let mut magic = [0u8; 4];
    if src_size < 4 || storage.read(&mut magic[..], 0).await.is_err() || magic != *b"QFI\xfb" {
        return Err(bad(
            "format qcow2 was given but the image is not a qcow2 file".into(),
        ));
    }
    // Implicit opens (backing files, external data files) would read local files named by
    // an untrusted image: refuse them.
    let qcow2 = Qcow2::<GrowingImage>::builder(storage)
        .open(DenyImplicitOpenGate::default())
        .await
        .map_err(|e| bad(format!("not a usable qcow2 image: {e}")))?;
    let image = FormatAccess::new(qcow2);
    let size = image.size();
    if size > device_size {
        return Err(too_small(device, size, device_size));
    }
    // Writing runs on its own thread; nothing is hashed (the qcow2 file's checksum is).
    let mut writer = RawWriter::<ImageHashes>::start(device, device_size, None)?;
    let copied = async {
        let mut buf = vec![0u8; crate::rawwrite::CHUNK];
        let mut offset = 0u64;
        let mut reported = 0u64;
        while offset < size {
            let want = (size - offset).min(buf.len() as u64);
            let (mapping, len) = image
                .get_mapping(offset, want)
                .await
                .map_err(|e| bad(format!("corrupt qcow2 mapping at offset {offset}: {e}")))?;
            let len = len.min(want) as usize;
            let zero = match mapping {
                Mapping::Eof { .. } => break,
                Mapping::Zero { .. } => true,
                _ => false,
            };
            if len == 0 {
                return Err(bad(format!("qcow2 mapping of length 0 at offset {offset}")));
            }
            if zero {
                writer.push_zeros(len as u64).await?;
            } else {
                image
                    .read(&mut buf[..len], offset)
                    .await
                    .map_err(|e| bad(format!("cannot read qcow2 data at offset {offset}: {e}")))?;
                writer.push(&buf[..len]).await?;
            }
            offset += len as u64;
            if offset - reported >= PROGRESS_EVERY {
                reported = offset;
                progress(writer.written(), size);
            }
        }
        Ok(())
    }
    .await;
    let finished = match copied {
        Ok(()) => writer.finish().await,
        Err(e) => {
            drop(writer); // waits for the chunks already queued
            Err(e)
        }
    };
    match finished {
        Ok((written, _)) => {
            progress(written, size);
            Ok(size)
        }
        Err(e) => {
            // Part of the image may be on the disk (a cut download, a corrupt cluster): it
            // must not boot.
            wipe_start(device, WIPE).await?;
            Err(e)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use vmetal_api::agent::AgentErrorKind;

    const SHA256_A: &str = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb";

    #[test]
    fn checksum_algorithm_comes_from_type_or_length() {
        let c = expected_checksum(SHA256_A, None).unwrap();
        assert_eq!(c.algorithm, ChecksumType::Sha256);
        let md5 = "0cc175b9c0f1b6a831c399e269772661";
        assert!(
            expected_checksum(md5, None)
                .unwrap_err()
                .contains("checksumType: md5")
        );
        assert!(expected_checksum(md5, Some(ChecksumType::Auto)).is_err());
        assert_eq!(
            expected_checksum(md5, Some(ChecksumType::Md5))
                .unwrap()
                .algorithm,
            ChecksumType::Md5
        );
        assert!(
            expected_checksum(md5, Some(ChecksumType::Sha256))
                .unwrap_err()
                .contains("64 hex")
        );
        assert!(expected_checksum("xyz", None).is_err());
        assert!(expected_checksum(&"a".repeat(40), None).is_err());
    }

    #[test]
    fn checksum_files_pick_the_image_line() {
        let body = format!(
            "{}  other.img\n{SHA256_A} *images/disk.qcow2\n",
            "b".repeat(64)
        );
        assert_eq!(
            pick_checksum_line(&body, "http://h/x/disk.qcow2?sig=1").as_deref(),
            Some(SHA256_A)
        );
        assert_eq!(pick_checksum_line(&body, "http://h/none.img"), None);
        let single = format!("{SHA256_A}\n");
        assert_eq!(
            pick_checksum_line(&single, "http://h/any.img").as_deref(),
            Some(SHA256_A)
        );
        let bsd = format!("SHA256 (disk.img) = {SHA256_A}\n");
        assert_eq!(
            pick_checksum_line(&bsd, "http://h/disk.img").as_deref(),
            Some(SHA256_A)
        );
    }

    #[test]
    fn hashers_agree_with_known_digests() {
        let mut h = Hasher::new(ChecksumType::Sha256);
        h.update(b"a");
        assert_eq!(h.hex(), SHA256_A);
        let mut h = Hasher::new(ChecksumType::Md5);
        h.update(b"a");
        assert_eq!(h.hex(), "0cc175b9c0f1b6a831c399e269772661");
        let mut h = Hasher::new(ChecksumType::Sha512);
        h.update(b"");
        assert!(h.hex().starts_with("cf83e1357eefb8bd"));
    }

    #[tokio::test]
    async fn unsupported_formats_are_named() {
        let cmd = DeployCommand {
            id: "d".into(),
            image_url: "http://user:pw@127.0.0.1:9/x.vmdk".into(),
            checksum: SHA256_A.into(),
            checksum_type: None,
            format: Some(ImageFormat::Vmdk),
            root_device_hints: None,
            config_drive: None,
            download_stall_timeout_seconds: None,
        };
        let err = write_image(&cmd, Path::new("/nonexistent"), |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.kind(), vmetal_api::agent::AgentErrorKind::ImageFormat);
        let msg = err.to_string();
        assert!(msg.contains("vmdk") && !msg.contains("pw@"), "{msg}");
        let cmd = DeployCommand {
            format: Some(ImageFormat::LiveIso),
            ..cmd
        };
        let err = write_image(&cmd, Path::new("/nonexistent"), |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("live-iso"), "{err}");
    }

    /// Serve `body` once per connection, announcing `announced` bytes and sending only `send`.
    async fn lying_server(body: Vec<u8>, announced: usize, send: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut req = vec![0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut req).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n"
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body[..send]).await;
                let _ = sock.shutdown().await;
            }
        });
        format!("http://{addr}/image.qcow2")
    }

    /// 24 MiB of raw content (a pattern, with a zero hole) and its qcow2 conversion.
    fn qcow2_fixture(dir: &Path) -> (Vec<u8>, Vec<u8>) {
        let mut raw = vec![0u8; 24 << 20];
        for (i, b) in raw.iter_mut().enumerate() {
            if !(8 << 20..12 << 20).contains(&i) {
                *b = (i * 7 % 251) as u8;
            }
        }
        let raw_path = dir.join("img.raw");
        std::fs::write(&raw_path, &raw).unwrap();
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw_path)
            .arg(dir.join("img.qcow2"))
            .output()
            .expect("qemu-img (package qemu-utils) is required");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (raw, std::fs::read(dir.join("img.qcow2")).unwrap())
    }

    fn sha256_hex(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    #[test]
    fn a_qcow2_larger_than_free_memory_is_refused_with_both_sizes() {
        fits_in_memory("http://i/a.qcow2", Some(100), 100).unwrap();
        fits_in_memory("http://i/a.qcow2", None, 100).unwrap();
        let err = fits_in_memory("http://i/a.qcow2", Some(101), 100).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("(101 bytes)") && msg.contains("100 bytes of free memory"),
            "{msg}"
        );
        assert!(msg.contains("use a raw image"), "{msg}");
    }

    #[tokio::test]
    async fn qcow2_converts_while_downloading_and_reports_a_cut_download_as_a_download_error() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, qcow) = qcow2_fixture(dir.path());
        let device = dir.path().join("disk");
        let deploy = |url: String, checksum: String| DeployCommand {
            id: "d".into(),
            image_url: url,
            checksum,
            checksum_type: Some(ChecksumType::Sha256),
            format: Some(ImageFormat::Qcow2),
            root_device_hints: None,
            config_drive: None,
            download_stall_timeout_seconds: None,
        };

        // Whole image: the disk holds the raw content.
        std::fs::write(&device, vec![0xffu8; 32 << 20]).unwrap();
        let url = lying_server(qcow.clone(), qcow.len(), qcow.len()).await;
        let report = write_image(&deploy(url, sha256_hex(&qcow)), &device, |_| {})
            .await
            .unwrap();
        assert_eq!(report.image_end, raw.len() as u64);
        assert_eq!(report.downloaded, qcow.len() as u64);
        let disk = std::fs::read(&device).unwrap();
        assert!(disk[..raw.len()] == raw[..], "the disk holds the image");
        assert_eq!(
            report.written_sha256, None,
            "converted output is not hashed again"
        );

        // The connection drops after 60%: a download error, not a format error.
        let url = lying_server(qcow.clone(), qcow.len(), qcow.len() * 6 / 10).await;
        let err = write_image(&deploy(url, sha256_hex(&qcow)), &device, |_| {})
            .await
            .unwrap_err();
        failed_and_wiped(&err, AgentErrorKind::ImageDownload, &device);

        // Right bytes, wrong checksum: a checksum error, and what was written cannot boot.
        let url = lying_server(qcow.clone(), qcow.len(), qcow.len()).await;
        let err = write_image(&deploy(url, SHA256_A.into()), &device, |_| {})
            .await
            .unwrap_err();
        failed_and_wiped(&err, AgentErrorKind::ChecksumMismatch, &device);

        // The file has bytes the converter never needs and the connection drops in them: the
        // disk is complete, but the checksum cannot be verified, so it must not boot either.
        let mut padded = qcow.clone();
        padded.extend_from_slice(&[0x5a; 2 << 20]);
        let url = lying_server(padded.clone(), padded.len(), qcow.len() + (1 << 20)).await;
        std::fs::write(&device, vec![0xffu8; 32 << 20]).unwrap();
        let err = write_image(&deploy(url, sha256_hex(&padded)), &device, |_| {})
            .await
            .unwrap_err();
        failed_and_wiped(&err, AgentErrorKind::ImageDownload, &device);
        let disk = std::fs::read(&device).unwrap();
        assert!(
            disk[1 << 20..raw.len()] == raw[1 << 20..],
            "the conversion finished before the cut"
        );
    }

    /// The error is of `kind` and the disk's first MiB is zero: what was written cannot boot.
    fn failed_and_wiped(err: &AgentError, kind: AgentErrorKind, device: &Path) {
        assert_eq!(err.kind(), kind, "{err}");
        let disk = std::fs::read(device).unwrap();
        assert!(disk[..1 << 20].iter().all(|b| *b == 0), "first MiB wiped");
    }
}
