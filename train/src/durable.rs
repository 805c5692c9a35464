//! Writes during training that fail cleanly. Burn 0.21's own writers panic
//! or tear files when the disk fills up, a folder vanishes or permissions
//! change: its file metric logger `expect`s every write (a panic on the
//! event thread, exit 101), and its MessagePack checkpoint recorder writes
//! in place through a `BufWriter` whose last flush error is dropped (a
//! checkpoint cut short, reported as saved). The two replacements here
//! write the same files, in the same layouts, and report the first failure
//! to one [`WriteFailure`] slot and to the Learner's interrupter, so the
//! run stops at the next batch and the trainer returns an error naming the
//! file and the cause, from which `--resume` continues once it is fixed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::prelude::Backend;
use burn::record::{FileRecorder, FullPrecisionSettings, Recorder, RecorderError};
use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::Interrupter;
use serde::de::DeserializeOwned;
use serde::Serialize;

use mmrl_data::dataset::split_file::write_atomic_with;

/// The first write that failed during a run.
#[derive(Debug)]
pub struct Failed {
    pub path: PathBuf,
    pub source: std::io::Error,
    /// The epoch whose metric log or checkpoint failed: its checkpoint
    /// files, whichever were written, are not to be trusted.
    pub epoch: Option<usize>,
}

/// Where the writers of one run report their first failure, and the
/// interrupter that stops the run when one happens.
#[derive(Clone, Default)]
pub struct WriteFailure {
    slot: Arc<Mutex<Option<Failed>>>,
    interrupter: Option<Interrupter>,
}

impl std::fmt::Debug for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteFailure").finish_non_exhaustive()
    }
}

impl WriteFailure {
    /// A slot that stops `interrupter` on the first failure.
    pub fn new(interrupter: Interrupter) -> Self {
        WriteFailure {
            slot: Arc::default(),
            interrupter: Some(interrupter),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failed>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure (only the first is kept) and stops the run.
    pub fn report(&self, path: &Path, source: std::io::Error, epoch: Option<usize>) {
        let msg = format!("cannot write {}: {source}", path.display());
        {
            let mut slot = self.lock();
            if slot.is_none() {
                *slot = Some(Failed {
                    path: path.to_path_buf(),
                    source,
                    epoch,
                });
            }
        }
        if let Some(i) = &self.interrupter {
            i.stop(Some(&msg));
        }
    }

    /// Whether a write has failed.
    pub fn failed(&self) -> bool {
        self.lock().is_some()
    }

    /// The first failure, if any.
    pub fn take(&self) -> Option<Failed> {
        self.lock().take()
    }
}

/// Burn's MessagePack checkpoint format (`NamedMpkFileRecorder`, full
/// precision: files either recorder reads), written atomically: a crash or
/// a full disk leaves the previous file or none, never a cut one. A failed
/// save also reports to the run's [`WriteFailure`].
#[derive(Clone, Debug, Default)]
pub struct AtomicMpkRecorder {
    failure: WriteFailure,
}

impl AtomicMpkRecorder {
    pub fn new(failure: WriteFailure) -> Self {
        AtomicMpkRecorder { failure }
    }
}

impl<B: Backend> FileRecorder<B> for AtomicMpkRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

impl<B: Backend> Recorder<B> for AtomicMpkRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        let path = file.with_extension("mpk");
        let written = write_atomic_with(&path, |f| {
            let mut w = FirstIoError {
                inner: std::io::BufWriter::new(f),
                error: None,
            };
            match rmp_serde::encode::write_named(&mut w, &item) {
                // The encoder wraps the file's error in its own words.
                Err(e) => Err(w.error.take().unwrap_or_else(|| std::io::Error::other(e))),
                Ok(()) => w.inner.flush(),
            }
        });
        match written {
            Ok(()) => Ok(()),
            Err(mmrl_data::Error::Write {
                path: failed,
                source,
            }) => {
                let msg = format!("cannot write {}: {source}", failed.display());
                // `<kind>-<epoch>.mpk`: that epoch's checkpoint is incomplete.
                let epoch = path
                    .file_stem()
                    .and_then(|s| s.to_str()?.rsplit('-').next()?.parse().ok());
                self.failure.report(&failed, source, epoch);
                Err(RecorderError::Unknown(msg))
            }
            Err(e) => Err(RecorderError::Unknown(e.to_string())),
        }
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        file.set_extension("mpk");
        let bytes = std::fs::read(&*file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                RecorderError::FileNotFound(format!("{}: {e}", file.display()))
            }
            _ => RecorderError::Unknown(format!("cannot read {}: {e}", file.display())),
        })?;
        rmp_serde::from_slice(&bytes)
            .map_err(|e| RecorderError::DeserializeError(format!("{}: {e}", file.display())))
    }
}

/// A writer that keeps the first I/O error it passes on (the cause, for
/// the message), as the operating system's error where it was one.
struct FirstIoError<W> {
    inner: W,
    error: Option<std::io::Error>,
}

impl<W: Write> FirstIoError<W> {
    fn keep<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if self.error.is_none() {
                self.error = Some(match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(e.kind(), e.to_string()),
                });
            }
        }
        r
    }
}

impl<W: Write> Write for FirstIoError<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.keep(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush();
        self.keep(r)
    }
}

/// Burn's metric logs in Burn's layout (`<dir>/<split>/epoch-N/<Metric>.log`,
/// one serialised entry per line; read back by Burn's metric store, the
/// early stopper and the results), written without panicking: the first
/// failure goes to the run's [`WriteFailure`] and nothing more is written.
pub struct MetricFiles {
    dir: PathBuf,
    files: HashMap<String, (PathBuf, File)>,
    definitions: HashMap<MetricId, MetricDefinition>,
    last_epoch: Option<usize>,
    failure: WriteFailure,
    /// Disconnected when the logger is dropped (see [`Self::closed`]).
    _open: std::sync::mpsc::Sender<()>,
    /// The epochs a resumed run starts after (see [`Self::resumed_after`]).
    resumed_after: usize,
    /// Splits whose first epoch summary has arrived.
    summarised: std::collections::HashSet<String>,
}

impl MetricFiles {
    /// The logger, and what tells when it is done: Burn's metric store
    /// writes on its own thread, which can still be writing the last lines
    /// when the Learner returns; `recv` on the receiver returns once the
    /// logger is dropped, every line written.
    pub fn new(
        dir: impl Into<PathBuf>,
        failure: WriteFailure,
    ) -> (Self, std::sync::mpsc::Receiver<()>) {
        let (open, closed) = std::sync::mpsc::channel();
        let logger = MetricFiles {
            dir: dir.into(),
            files: HashMap::new(),
            definitions: HashMap::new(),
            last_epoch: None,
            failure,
            _open: open,
            resumed_after: 0,
            summarised: Default::default(),
        };
        (logger, closed)
    }

    /// For a run resumed after epoch `n`. Burn's metric store numbers the
    /// epochs of each split from 1 until its first epoch summary (which
    /// carries the real number), so a resumed run's first epoch arrives as
    /// epoch 1: written there, it overwrote epoch 1's logs and left its own
    /// missing (the results and the early stopper read them). Until a
    /// split's first summary its epochs are shifted by `n`.
    pub fn resumed_after(mut self, n: usize) -> Self {
        self.resumed_after = n;
        self
    }

    /// Waits (up to a minute) until the logger behind `closed` is dropped.
    pub fn closed(closed: &std::sync::mpsc::Receiver<()>) {
        let _ = closed.recv_timeout(std::time::Duration::from_secs(60));
    }

    fn path(&self, name: &str, epoch: usize, split: &Split) -> PathBuf {
        let mut dir = self.dir.join(split.to_string());
        if let Split::Test(Some(tag)) = split {
            dir = dir.join(tag.trim().replace(' ', "-").to_lowercase());
        }
        dir.join(format!("epoch-{epoch}"))
            .join(format!("{}.log", name.replace(' ', "_")))
    }

    fn write(&mut self, name: &str, line: &str, epoch: usize, split: &Split) {
        let key = format!("{name}_{split}");
        if !self.files.contains_key(&key) {
            let path = self.path(name, epoch, split);
            let opened = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| File::create(&path));
            match opened {
                Ok(f) => {
                    self.files.insert(key.clone(), (path, f));
                }
                Err(e) => return self.failure.report(&path, e, Some(epoch)),
            }
        }
        let (path, f) = self.files.get_mut(&key).expect("opened above");
        if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
            let path = path.clone();
            self.failure.report(&path, e, Some(epoch));
        }
    }
}

impl MetricLogger for MetricFiles {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let epoch = if self.summarised.contains(&split.to_string()) {
            epoch
        } else {
            epoch + self.resumed_after
        };
        if self.last_epoch != Some(epoch) {
            self.files.clear();
            self.last_epoch = Some(epoch);
        }
        let entries = update
            .entries
            .iter()
            .chain(update.entries_numeric.iter().map(|n| &n.entry));
        for entry in entries {
            if self.failure.failed() {
                return;
            }
            let Some(name) = self
                .definitions
                .get(&entry.metric_id)
                .map(|d| d.name.clone())
            else {
                continue;
            };
            self.write(&name, &entry.serialized_entry.serialized, epoch, split);
        }
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        let text = std::fs::read_to_string(self.path(name, epoch, split)).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(NumericEntry::deserialize)
            .collect()
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.definitions
            .insert(definition.metric_id.clone(), definition);
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.summarised.insert(summary.split.to_string());
        self.files.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::record::NamedMpkFileRecorder;

    type B = burn::backend::Flex;

    fn weights(l: &Linear<B>) -> Vec<f32> {
        l.weight.val().into_data().to_vec().unwrap()
    }

    /// Checkpoints written by Burn's recorder load through ours and the
    /// other way round (runs resumed across the change), and a failed save
    /// leaves no file, reports the path and the OS error, and stops the run.
    #[test]
    fn same_format_as_burns_recorder_and_failures_are_reported() {
        let device = Default::default();
        let dir = std::env::temp_dir().join(format!("mmrl-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Linear<B> = LinearConfig::new(3, 2).init(&device);
        let want = weights(&a); // (parameters are initialised lazily)
        let burns = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        a.clone().save_file(dir.join("burn"), &burns).unwrap();
        a.clone()
            .save_file(dir.join("ours"), &AtomicMpkRecorder::default())
            .unwrap();
        let fresh = || LinearConfig::new(3, 2).init::<B>(&device);
        let from_burn = fresh()
            .load_file(dir.join("burn"), &AtomicMpkRecorder::default(), &device)
            .unwrap();
        let from_ours = fresh()
            .load_file(dir.join("ours"), &burns, &device)
            .unwrap();
        assert_eq!(weights(&from_burn), want);
        assert_eq!(weights(&from_ours), want);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");

        // /dev/full: every write fails with ENOSPC.
        #[cfg(target_os = "linux")]
        {
            let interrupter = Interrupter::new();
            let failure = WriteFailure::new(interrupter.clone());
            let full = dir.join("full");
            std::fs::create_dir_all(&full).unwrap();
            let (mut logs, closed) = MetricFiles::new(&full, failure.clone());
            // A log file that cannot be written to.
            let log = full.join("train/epoch-1/Loss.log");
            std::fs::create_dir_all(log.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/dev/full", &log).unwrap();
            logs.write("Loss", "1.5,2", 1, &Split::Train);
            assert!(interrupter.should_stop());
            let f = failure.take().unwrap();
            assert_eq!((f.path, f.epoch), (log, Some(1)));
            assert_eq!(f.source.raw_os_error(), Some(libc::ENOSPC));
            assert!(interrupter.get_message().unwrap().contains("Loss.log"));
            drop(logs);
            MetricFiles::closed(&closed); // returns at once: the logger is gone
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
