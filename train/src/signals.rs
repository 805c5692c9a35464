//! Ctrl-C and cluster pre-emption: the first SIGINT or SIGTERM asks the
//! run to stop at the next batch (training ends there, the last completed
//! epoch's checkpoint is what `--resume` continues from, and the run exits
//! with a message saying so); a second one stops the process at once.
//! Installed by `mmrl train` and `mmrl demo`; the trainer polls [`requested`].

use std::sync::atomic::{AtomicUsize, Ordering};

static REQUESTS: AtomicUsize = AtomicUsize::new(0);

/// Whether a stop was asked for.
pub fn requested() -> bool {
    REQUESTS.load(Ordering::SeqCst) > 0
}

/// Installs the SIGINT/SIGTERM handler (Unix; elsewhere the default
/// behaviour, an immediate stop, stays).
pub fn install() {
    #[cfg(unix)]
    // SAFETY: the handler only touches an atomic and calls the
    // async-signal-safe `write` and `_exit`.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    let first = REQUESTS.fetch_add(1, Ordering::SeqCst) == 0;
    let msg: &[u8] = if first {
        b"\nmmrl: stopping at the next batch (signal again to stop at once)\n"
    } else {
        b"\nmmrl: stopped\n"
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        if !first {
            libc::_exit(130);
        }
    }
}
