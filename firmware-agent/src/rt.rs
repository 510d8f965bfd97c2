//! Real-time scheduling and memory locking for the capture path.
//!
//! The capture thread asks for `SCHED_FIFO` so a busy worker, encoder or network
//! cannot delay the next ALSA read past the device buffer. The agent binary asks
//! for `mlockall` so no page the capture path touches is ever swapped out or
//! faulted in lazily. Both need privileges (CAP_SYS_NICE / CAP_IPC_LOCK, or
//! matching rlimits); when denied, the agent runs anyway and says so in its
//! status, because recording with ordinary scheduling beats not recording.

#![allow(unsafe_code)]

/// `SCHED_FIFO` priority for capture threads, in the range JACK and PipeWire
/// use for their audio threads.
pub const CAPTURE_PRIORITY: i32 = 70;

/// Ask for `SCHED_FIFO` at [`CAPTURE_PRIORITY`] for the calling thread.
/// Returns whether it was granted. Makes one syscall; never allocates.
pub fn promote_current_thread() -> bool {
    let param = libc::sched_param {
        sched_priority: CAPTURE_PRIORITY,
    };
    // SAFETY: pthread_self() is always valid for the calling thread, and
    // `param` is a fully initialised sched_param that outlives the call.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    rc == 0
}

/// Lock the process's current and future memory into RAM. Returns the error
/// text when denied.
pub fn lock_memory() -> Result<(), String> {
    // SAFETY: mlockall takes only flags and has no memory-safety preconditions.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// CLOCK_MONOTONIC now, the clock ALSA's status timestamps use (what
/// `Instant` reads, but as a value comparable with them). vDSO: no syscall,
/// no allocation.
pub fn monotonic_now() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
