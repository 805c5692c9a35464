//! One run per output folder: `mmrl train` holds `<output>/mmrl.lock` (the
//! process id, host and start time) while it runs, so a second run on the
//! same folder refuses instead of interleaving its checkpoints and results
//! with the first's. The file is created exclusively; it is removed when
//! the run ends (also on an error). A lock left by a process that no longer
//! exists on this host (killed, machine rebooted) is taken over with a
//! notice; one from another host (a shared file system) is refused with the
//! command that removes it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The lock file's name in the output folder.
pub const LOCK_FILE: &str = "mmrl.lock";

/// Who holds a folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl Holder {
    fn me() -> Holder {
        Holder {
            pid: std::process::id(),
            host: host_name(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// Whether the holder is known to be gone: a process of this host that
    /// no longer exists (Linux: no `/proc/<pid>`). Unknown elsewhere.
    fn is_gone(&self) -> bool {
        self.host == host_name()
            && Path::new("/proc/self").exists()
            && !Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The held lock of an output folder; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Takes `dir`'s lock (creating `dir`), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| mmrl_data::Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        // Two tries: the second after removing a stale lock.
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    let text = serde_json::to_string(&Holder::me()).expect("holders serialise");
                    f.write_all(text.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| mmrl_data::Error::io(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let holder: Option<Holder> = serde_json::from_str(&text).ok();
                    match holder {
                        Some(h) if h.is_gone() => {
                            println!(
                                "{}: taking over the lock of process {} (no longer running)",
                                dir.display(),
                                h.pid
                            );
                            std::fs::remove_file(&path)
                                .map_err(|e| mmrl_data::Error::io(&path, e))?;
                        }
                        _ => {
                            return Err(Error::RunLocked {
                                path: path.clone(),
                                holder: match holder {
                                    Some(h) => format!("process {} on {}", h.pid, h.host),
                                    None => "another process".into(),
                                },
                            })
                        }
                    }
                }
                Err(e) => return Err(mmrl_data::Error::io(&path, e).into()),
            }
        }
        Err(Error::RunLocked {
            path,
            holder: "another process".into(),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mmrl-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_held_folder_is_refused_and_freed_on_drop() {
        let dir = temp("held");
        let lock = RunLock::acquire(&dir).unwrap();
        let held: Holder =
            serde_json::from_str(&std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap()).unwrap();
        assert_eq!(held.pid, std::process::id());
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        assert!(e.contains(LOCK_FILE), "{e}");
        drop(lock);
        assert!(!dir.join(LOCK_FILE).exists());
        RunLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_holders_lock_is_taken_over() {
        if !Path::new("/proc/self").exists() {
            eprintln!("skipped: no /proc to tell whether a process exists");
            return;
        }
        let dir = temp("stale");
        std::fs::create_dir_all(&dir).unwrap();
        // A process id above Linux's pid_max never exists.
        let dead = Holder {
            pid: 4_194_304 + 1,
            host: host_name(),
            started: 0,
        };
        std::fs::write(dir.join(LOCK_FILE), serde_json::to_string(&dead).unwrap()).unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        drop(lock);
        // Another host's lock cannot be checked: refused.
        let remote = Holder {
            host: "elsewhere".into(),
            ..dead
        };
        std::fs::write(dir.join(LOCK_FILE), serde_json::to_string(&remote).unwrap()).unwrap();
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(e.contains("on elsewhere"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
