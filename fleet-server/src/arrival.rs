//! Verification that follows an upload while it arrives (decision 0016).
//!
//! A FLAC file comes in chunk by chunk, one request each. Rather than read
//! the whole file again once it is complete (its SHA-256, then a decode to
//! its end for the waveform preview), a follower thread per file reads the
//! staged file as its chunks become durable: it hashes what it reads and
//! feeds it to a libFLAC decoder drawing the preview. When the last chunk
//! lands both are nearly done, and the completion waits only for the tail
//! instead of a full pass over the file.
//!
//! Invariants:
//! - A follower reads only bytes below the file's durable offset (what
//!   `uploads::patch_file` has written, fsynced and recorded). Those bytes
//!   never change while the upload lives; an upload that is discarded
//!   (its offset back to 0) has its follower closed first.
//! - A follower's verdict is a shortcut, never a weaker check: the
//!   completion takes it only when it covers every byte of the file, its
//!   SHA-256 is the node's and the file decoded to its end. In any other
//!   case (no follower, as after a restart of the server or beyond the
//!   bound; a follower that gave up; any failure) the completion checks the
//!   file from disk as it always did, so only a bad upload pays twice.
//! - Bounded: at most [`MAX_FOLLOWED`] followers (threads) at once; a file
//!   beyond that is checked at its completion. A follower that sees no new
//!   byte for [`IDLE`] ends (an upload window closed, a node gone); the next
//!   chunk starts a new one, which reads the staged file from its start. One
//!   that ended on a verdict (a file that does not decode) is kept and not
//!   started again, so a bad upload is read twice at most.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rakkr_protocol::JobId;
use rakkr_store::Waveform;
use sha2::Digest;

/// Followers (threads) at once.
pub const MAX_FOLLOWED: usize = 8;

/// Followers kept at most, ended ones included (uploads abandoned after a
/// verdict); beyond it the ended ones are dropped.
const MAX_KEPT: usize = 1_024;

/// How long a follower waits for a new byte before it ends.
pub const IDLE: Duration = Duration::from_secs(300);

/// What a follower found, once it read the whole file.
#[derive(Debug)]
pub struct Verdict {
    /// Bytes read and hashed.
    pub bytes: u64,
    /// SHA-256 (hex) of those bytes.
    pub sha256: String,
    /// The first bytes of the file (its type).
    pub head: Vec<u8>,
    /// The preview, or why the file does not decode.
    pub waveform: Result<Waveform, String>,
}

#[derive(Default)]
struct Progress {
    /// Bytes of the file that are durable and may be read.
    durable: u64,
    /// The file's length: reading ends there.
    length: u64,
    /// The upload was discarded or the server is stopping.
    closed: bool,
}

/// One file's follower: where the upload stands, and the thread reading it.
struct Follow {
    progress: Mutex<Progress>,
    moved: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<Verdict>>>,
    /// It ended because no byte came for [`IDLE`] (not on a verdict): a new
    /// one may follow the file when bytes come again.
    idled: std::sync::atomic::AtomicBool,
}

impl Follow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.moved.notify_all();
    }

    fn ended(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|t| t.is_finished())
    }
}

/// What a follower's reads have seen so far.
struct Tally {
    hasher: sha2::Sha256,
    head: Vec<u8>,
    bytes: u64,
}

/// The staged file as a `Read` that waits for bytes to become durable and
/// hashes what it hands out. Ends (0) at the file's length.
struct Arrival {
    follow: Arc<Follow>,
    file: std::fs::File,
    tally: Arc<Mutex<Tally>>,
}

impl Read for Arrival {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self
            .tally
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .bytes;
        let available = {
            let mut p = self.follow.lock();
            loop {
                if p.closed {
                    return Err(std::io::Error::other("the upload was discarded"));
                }
                if p.durable > at || at >= p.length {
                    break p.durable.min(p.length).saturating_sub(at);
                }
                let (next, waited) = self
                    .follow
                    .moved
                    .wait_timeout(p, IDLE)
                    .unwrap_or_else(|p| p.into_inner());
                p = next;
                if waited.timed_out() && p.durable <= at && at < p.length {
                    self.follow
                        .idled
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no new byte for {IDLE:?}"),
                    ));
                }
            }
        };
        if available == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = std::io::Read::read(&mut self.file, &mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the staged file is shorter than its durable offset",
            ));
        }
        let mut t = self
            .tally
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        if t.head.len() < 16 {
            let take = n.min(16 - t.head.len());
            t.head.extend_from_slice(&buf[..take]);
        }
        t.hasher.update(&buf[..n]);
        t.bytes += n as u64;
        Ok(n)
    }
}

/// Read the whole upload through `arrival`, decoding it for the preview.
/// libFLAC reads until the source ends, so a clean decode has read (and
/// hashed) every byte; a failed one says so and is not trusted.
fn follow(arrival: Arrival) -> Verdict {
    let tally = arrival.tally.clone();
    let waveform = crate::waveform::of_flac(rakkr_flac::FlacReader::from_read(
        "the arriving upload",
        arrival,
    ));
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    Verdict {
        bytes: t.bytes,
        sha256: rakkr_protocol::digest::hex(&t.hasher.clone().finalize()),
        head: t.head.clone(),
        waveform,
    }
}

/// The files being followed.
#[derive(Default)]
pub struct Followers {
    live: Mutex<HashMap<(JobId, String), Arc<Follow>>>,
}

impl Followers {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<(JobId, String), Arc<Follow>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first `durable` bytes of the `length`-byte upload staged at
    /// `path` are written and synced: let its follower read on, or start one
    /// (when there is room) that reads the file from its start.
    pub fn advanced(&self, job: JobId, name: &str, path: &Path, durable: u64, length: u64) {
        let mut live = self.live();
        let key = (job, name.to_owned());
        if let Some(f) = live.get(&key) {
            let idled = f.idled.load(std::sync::atomic::Ordering::SeqCst);
            if !f.ended() || !idled {
                // Running, or ended on its verdict (a file that does not
                // decode): that stands, and the completion checks the file
                // from disk; a new follower would read it all again for
                // every chunk.
                let mut p = f.lock();
                p.durable = durable;
                p.length = length;
                drop(p);
                f.moved.notify_all();
                return;
            }
            live.remove(&key);
        }
        // The bound is on threads: ended followers (their verdicts kept
        // until their files complete) do not count.
        if live.values().filter(|f| !f.ended()).count() >= MAX_FOLLOWED {
            return;
        }
        if live.len() >= MAX_KEPT {
            live.retain(|_, f| !f.ended());
        }
        let Ok(file) = std::fs::File::open(path) else {
            return;
        };
        let f = Arc::new(Follow {
            progress: Mutex::new(Progress {
                durable,
                length,
                closed: false,
            }),
            moved: Condvar::new(),
            thread: Mutex::new(None),
            idled: std::sync::atomic::AtomicBool::new(false),
        });
        let arrival = Arrival {
            follow: f.clone(),
            file,
            tally: Arc::new(Mutex::new(Tally {
                hasher: sha2::Sha256::new(),
                head: Vec::new(),
                bytes: 0,
            })),
        };
        let spawned = std::thread::Builder::new()
            .name("rakkr-arrival".into())
            .spawn(move || follow(arrival));
        match spawned {
            Ok(thread) => {
                *f.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
                live.insert(key, f);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread to follow an upload; it is checked when complete")
            }
        }
    }

    /// The upload is discarded (it starts again from nothing): its follower
    /// stops.
    pub fn discard(&self, job: JobId, name: &str) {
        if let Some(f) = self.live().remove(&(job, name.to_owned())) {
            f.close();
        }
    }

    /// The `length`-byte upload is complete: its follower's verdict, once it
    /// has read to the end, or `None` when no follower ran to the end.
    pub fn finish(&self, job: JobId, name: &str, length: u64) -> Option<Verdict> {
        let f = self.live().remove(&(job, name.to_owned()))?;
        if f.lock().durable < length {
            // It missed a chunk: it would wait for bytes that are there.
            f.close();
            return None;
        }
        let thread = f.thread.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        thread.join().ok()
    }
}

impl Followers {
    /// Stop every follower (the server stops).
    pub fn close_all(&self) {
        for f in self.live().values() {
            f.close();
        }
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        self.close_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FLAC file of a few seconds of a 2-channel tone, as bytes.
    fn flac_bytes(dir: &Path) -> Vec<u8> {
        let path = dir.join("source.flac");
        crate::waveform::tone_flac(&path, 3);
        std::fs::read(path).unwrap()
    }

    /// Stage `bytes` at `path` in `chunk`-byte pieces, telling `followers`
    /// after each, as `patch_file` does.
    fn arrive(followers: &Followers, job: JobId, path: &Path, bytes: &[u8], chunk: usize) {
        let mut written = 0;
        for piece in bytes.chunks(chunk) {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            f.write_all(piece).unwrap();
            written += piece.len() as u64;
            followers.advanced(job, "f.flac", path, written, bytes.len() as u64);
        }
    }

    #[test]
    fn a_follower_reaches_the_verdict_a_check_from_disk_reaches() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = flac_bytes(dir.path());
        let followers = Followers::default();
        let job = JobId::new(1_000);
        let staged = dir.path().join("staged.flac");
        arrive(&followers, job, &staged, &bytes, 7_919);
        let v = followers
            .finish(job, "f.flac", bytes.len() as u64)
            .expect("a verdict");
        assert_eq!(v.bytes, bytes.len() as u64);
        assert_eq!(v.sha256, rakkr_protocol::digest::sha256_hex(&bytes));
        assert_eq!(&v.head[..4], b"fLaC");
        assert_eq!(
            v.waveform.unwrap(),
            crate::waveform::of_file(&staged, "flac").unwrap()
        );
        assert!(followers.live().is_empty());
    }

    #[test]
    fn a_damaged_file_gets_a_verdict_against_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = flac_bytes(dir.path());
        // In the audio (the header's padding would not matter).
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        let length = bytes.len() as u64;
        let followers = Followers::default();
        let job = JobId::new(1_000);
        let staged = dir.path().join("staged.flac");
        let key = (job, "f.flac".to_owned());
        // The follower ends on the damaged frame.
        std::fs::write(&staged, &bytes).unwrap();
        followers.advanced(job, "f.flac", &staged, length, length);
        let first = followers.live().get(&key).cloned().unwrap();
        let t0 = std::time::Instant::now();
        while !first.ended() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(first.ended());
        // A chunk sent again: no new follower reads the file again (as one
        // would for every later chunk of a long file).
        followers.advanced(job, "f.flac", &staged, length, length);
        assert!(Arc::ptr_eq(&first, followers.live().get(&key).unwrap()));
        let v = followers.finish(job, "f.flac", length).expect("a verdict");
        assert!(v.waveform.is_err(), "a CRC failure is not a preview");
        assert!(v.bytes < length);
    }

    #[test]
    fn a_follower_that_missed_bytes_or_was_discarded_gives_no_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = flac_bytes(dir.path());
        let length = bytes.len() as u64;
        let followers = Followers::default();
        let job = JobId::new(1_000);
        let staged = dir.path().join("staged.flac");
        std::fs::write(&staged, &bytes[..1000]).unwrap();
        followers.advanced(job, "f.flac", &staged, 1000, length);
        // The rest is on disk, but the follower was not told: it must not
        // wait for it.
        std::fs::write(&staged, &bytes).unwrap();
        assert!(followers.finish(job, "f.flac", length).is_none());

        followers.advanced(job, "f.flac", &staged, 1000, length);
        let f = followers
            .live()
            .get(&(job, "f.flac".to_owned()))
            .cloned()
            .unwrap();
        followers.discard(job, "f.flac");
        let thread = f.thread.lock().unwrap().take().unwrap();
        let v = thread.join().unwrap();
        assert!(
            v.waveform.as_ref().is_err_and(|e| e.contains("discarded")),
            "{:?}",
            v.waveform
        );
        assert!(followers.finish(job, "f.flac", length).is_none());
    }

    #[test]
    fn followers_are_bounded_and_a_file_beyond_the_bound_is_left_to_its_completion() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = flac_bytes(dir.path());
        let length = bytes.len() as u64;
        let followers = Followers::default();
        let staged = dir.path().join("staged.flac");
        std::fs::write(&staged, &bytes[..100]).unwrap();
        let jobs: Vec<JobId> = (0..=MAX_FOLLOWED)
            .map(|i| JobId::new(1_000 + i as u64))
            .collect();
        for &job in &jobs {
            followers.advanced(job, "f.flac", &staged, 100, length);
        }
        assert_eq!(followers.live().len(), MAX_FOLLOWED);
        assert!(
            followers
                .finish(jobs[MAX_FOLLOWED], "f.flac", length)
                .is_none()
        );
        // Dropping the followers closes them: every thread ends.
        let threads: Vec<_> = followers
            .live()
            .values()
            .map(|f| f.thread.lock().unwrap().take().unwrap())
            .collect();
        drop(followers);
        for t in threads {
            assert!(t.join().unwrap().waveform.is_err());
        }
    }
}
