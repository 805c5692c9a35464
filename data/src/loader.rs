//! A data loader for image classification that keeps the model busy: worker
//! threads decode and transform whole batches ahead of the consumer, and the
//! batches still come out in a fixed order.
//!
//! Three modes, the first two as Dassl builds its loaders:
//! - [`LoaderMode::Train`]: each [`DataLoader::iter`] call is one epoch. The
//!   order is a Fisher–Yates permutation drawn from [`order_rng`]`(seed, epoch)`,
//!   `drop_last = len ≥ batch_size` (a set smaller than the batch gives one
//!   short batch), and image `i` is augmented with [`sample_rng`]`(seed, epoch, i)`.
//!   Order and augmentation therefore depend only on (seed, epoch, index): a run
//!   resumed with [`ImageLoader::with_start_epoch`] sees the same batches as an
//!   uninterrupted one, whatever the number of workers.
//! - [`LoaderMode::Eval`]: sequential, no drop; CLIP's test transform
//!   ([`resize_and_crop`] + [`normalize_chw`]).
//! - [`LoaderMode::Fixed`]: training without augmentation: the order and
//!   batches of `Train`, the images of `Eval`.
//!
//! Tensors are built on the consumer's thread, on the loader's device.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::prelude::*;
use image::RgbImage;

use crate::augment::{order_rng, sample_rng, shuffle, TrainTransform};
use crate::error::{Error, Result};
use crate::preprocess::{load_rgb8, normalize_chw, resize_and_crop, PreprocessConfig};

/// One labelled image file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Class index.
    pub label: usize,
}

/// What the loader does with each image.
#[derive(Debug, Clone, PartialEq)]
pub enum LoaderMode {
    /// Shuffled each epoch, augmented with `transform`, `drop_last` as Dassl.
    Train {
        /// The random crop, flip and normalisation.
        transform: TrainTransform,
        /// Seed of the shuffling and augmentation streams.
        seed: u64,
    },
    /// In order, all items, CLIP's test transform (resize, center crop, normalise).
    Eval {
        /// Resize, crop and normalisation.
        config: PreprocessConfig,
    },
    /// Training without augmentation (the Multi-Modal Adapter's reference):
    /// shuffled each epoch and `drop_last` as `Train`, each image with CLIP's
    /// test transform, so an image is the same in every epoch.
    Fixed {
        /// Resize, crop and normalisation.
        config: PreprocessConfig,
        /// Seed of the shuffling stream.
        seed: u64,
    },
}

impl LoaderMode {
    /// Side of the square output images.
    pub fn image_size(&self) -> usize {
        match self {
            LoaderMode::Train { transform, .. } => transform.size,
            LoaderMode::Eval { config } | LoaderMode::Fixed { config, .. } => config.crop_size,
        }
    }
}

/// A batch of images with their labels.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Normalised images.
    ///
    /// # Shapes
    /// `[batch, 3, size, size]`
    pub images: Tensor<B, 4>,
    /// Class indices, `[batch]`.
    pub labels: Tensor<B, 1, Int>,
    /// Position of each image in the sample list given to [`ImageLoader::new`]
    /// (a [slice](DataLoader::slice) keeps its parent's numbering).
    pub indices: Vec<usize>,
}

/// Decoded images, per position in the root sample list: the full decoded
/// image in train mode, the final crop in eval mode.
type Cache = Arc<Vec<OnceLock<Arc<RgbImage>>>>;

/// State shared by a loader and its [`to_device`](DataLoader::to_device) and
/// [`slice`](DataLoader::slice) copies.
#[derive(Default)]
struct Shared {
    error: Mutex<Option<Error>>,
    skipped: Mutex<Vec<PathBuf>>,
}

/// Multi-threaded image loader implementing Burn's [`DataLoader`].
///
/// ```ignore
/// let loader = ImageLoader::<B>::new(samples, LoaderMode::Train {
///     transform: TrainTransform::mmrl(224), seed: 1 }, 32, 4, device)
///     .with_start_epoch(resume_epoch)
///     .with_cache(true);
/// for batch in loader.iter() { /* one epoch */ }
/// if let Some(e) = loader.take_error() { return Err(e.into()); }
/// ```
pub struct ImageLoader<B: Backend> {
    /// The list given to `new`; this loader reads `start..start + len` of it.
    samples: Arc<Vec<Sample>>,
    start: usize,
    len: usize,
    mode: Arc<LoaderMode>,
    batch_size: usize,
    num_workers: usize,
    device: B::Device,
    /// The epoch the next `iter()` runs (train mode).
    epoch: Arc<AtomicU64>,
    cache: Option<Cache>,
    skip_bad: bool,
    shared: Arc<Shared>,
}

impl<B: Backend> Clone for ImageLoader<B> {
    fn clone(&self) -> Self {
        Self {
            samples: self.samples.clone(),
            start: self.start,
            len: self.len,
            mode: self.mode.clone(),
            batch_size: self.batch_size,
            num_workers: self.num_workers,
            device: self.device.clone(),
            epoch: self.epoch.clone(),
            cache: self.cache.clone(),
            skip_bad: self.skip_bad,
            shared: self.shared.clone(),
        }
    }
}

impl<B: Backend> ImageLoader<B> {
    /// A loader over `samples`. `batch_size` 0 counts as 1. `num_workers`
    /// decoding threads (0 and 1 both mean one background thread); up to
    /// `2 × max(num_workers, 1)` batches are prepared ahead of the consumer.
    /// Training starts at epoch 0, without cache, stopping at the first bad image.
    pub fn new(
        samples: Vec<Sample>,
        mode: LoaderMode,
        batch_size: usize,
        num_workers: usize,
        device: B::Device,
    ) -> Self {
        let len = samples.len();
        Self {
            samples: Arc::new(samples),
            start: 0,
            len,
            mode: Arc::new(mode),
            batch_size: batch_size.max(1),
            num_workers,
            device,
            epoch: Arc::new(AtomicU64::new(0)),
            cache: None,
            skip_bad: false,
            shared: Arc::default(),
        }
    }

    /// The first `iter()` runs epoch `epoch` (0-based), for resuming: the
    /// batches are those an uninterrupted loader gives in that epoch.
    pub fn with_start_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Arc::new(AtomicU64::new(epoch));
        self
    }

    /// Keep decoded images in memory, so later epochs skip decoding. Train
    /// mode keeps each full decoded image (`3·W·H` bytes each: about 560 kB
    /// for a 500×375 photo, so 0.9 GB for 1 600 images) and gives
    /// bit-identical batches to a loader without cache; eval mode keeps the
    /// final crop (`3·size²` bytes, 150 kB at 224).
    pub fn with_cache(mut self, on: bool) -> Self {
        self.cache =
            on.then(|| Arc::new((0..self.samples.len()).map(|_| OnceLock::new()).collect()));
        self
    }

    /// Skip images that cannot be read or decoded (with a `log::warn!` and a
    /// smaller batch; see [`skipped`](Self::skipped)) instead of ending the
    /// epoch with an error (see [`take_error`](Self::take_error)).
    pub fn skip_bad_images(mut self, on: bool) -> Self {
        self.skip_bad = on;
        self
    }

    /// The error that ended the last iteration early (it names the file), if
    /// any; taking it clears it. Check it after each epoch: an iterator that
    /// meets a bad image stops as if the epoch were over.
    pub fn take_error(&self) -> Option<Error> {
        lock(&self.shared.error).take()
    }

    /// Files skipped so far (with [`skip_bad_images`](Self::skip_bad_images)),
    /// in the order the batches reached the consumer, once per time skipped.
    pub fn skipped(&self) -> Vec<PathBuf> {
        lock(&self.shared.skipped).clone()
    }

    /// The epoch the next `iter()` runs (train mode).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Number of samples this loader reads.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the loader has no samples.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Images per batch (the last eval batch may be smaller).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The mode this loader was built with.
    pub fn mode(&self) -> &LoaderMode {
        &self.mode
    }

    /// The batches of `epoch`, as positions in the sample list given to
    /// [`new`](Self::new): shuffled and `drop_last` in train mode, in order in
    /// eval mode (where `epoch` is ignored).
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let bs = self.batch_size;
        match &*self.mode {
            LoaderMode::Train { seed, .. } | LoaderMode::Fixed { seed, .. } => {
                let mut order: Vec<usize> = (self.start..self.start + self.len).collect();
                shuffle(&mut order, &mut order_rng(*seed, epoch));
                if self.len >= bs {
                    order.chunks_exact(bs).map(<[usize]>::to_vec).collect()
                } else if self.len > 0 {
                    vec![order]
                } else {
                    Vec::new()
                }
            }
            LoaderMode::Eval { .. } => (self.start..self.start + self.len)
                .collect::<Vec<_>>()
                .chunks(bs)
                .map(<[usize]>::to_vec)
                .collect(),
        }
    }

    /// Iterates over `epoch` without touching the epoch counter.
    pub fn iter_epoch(&self, epoch: u64) -> ImageLoaderIter<'_, B> {
        let batches = self.batch_indices(epoch);
        let workers = self.num_workers.max(1).min(batches.len().max(1));
        let job = Arc::new(Job {
            samples: self.samples.clone(),
            mode: self.mode.clone(),
            cache: self.cache.clone(),
            skip_bad: self.skip_bad,
            epoch,
            batches,
            window: 2 * self.num_workers.max(1),
            control: Control::default(),
        });
        let (tx, rx) = mpsc::channel();
        let handles = (0..workers)
            .map(|w| {
                let (job, tx) = (job.clone(), tx.clone());
                std::thread::Builder::new()
                    .name(format!("mmrl-loader-{w}"))
                    .spawn(move || work(&job, &tx))
                    .expect("cannot start a data loader thread")
            })
            .collect();
        ImageLoaderIter {
            loader: self,
            job,
            rx,
            workers: handles,
            pending: BTreeMap::new(),
            next: 0,
            items_processed: 0,
            items_total: self.num_items(),
            finished: false,
        }
    }
}

impl<B: Backend> DataLoader<B, ImageBatch<B>> for ImageLoader<B> {
    /// One epoch; in train mode each call advances the epoch counter.
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ImageBatch<B>> + 'a> {
        let epoch = match &*self.mode {
            LoaderMode::Train { .. } | LoaderMode::Fixed { .. } => {
                self.epoch.fetch_add(1, Ordering::SeqCst)
            }
            LoaderMode::Eval { .. } => 0,
        };
        Box::new(self.iter_epoch(epoch))
    }

    /// Items per epoch, after `drop_last`.
    fn num_items(&self) -> usize {
        match &*self.mode {
            LoaderMode::Train { .. } | LoaderMode::Fixed { .. } if self.len >= self.batch_size => {
                self.len / self.batch_size * self.batch_size
            }
            _ => self.len,
        }
    }

    /// The same loader (epoch counter, cache and error state shared) on `device`.
    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    /// Samples `start..end` of this loader's list, same mode. The slice keeps
    /// the parent's sample numbering (so augmentation and cache are shared) and
    /// has its own epoch counter, starting at the parent's current epoch.
    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, ImageBatch<B>>> {
        let end = end.min(self.len);
        let start = start.min(end);
        Arc::new(Self {
            start: self.start + start,
            len: end - start,
            epoch: Arc::new(AtomicU64::new(self.epoch())),
            ..self.clone()
        })
    }
}

/// A batch prepared by a worker: normalised pixels and labels of the images
/// that loaded, and the files skipped.
struct Decoded {
    images: Vec<f32>,
    labels: Vec<i64>,
    indices: Vec<usize>,
    skipped: Vec<PathBuf>,
}

/// One epoch's work, shared by its worker threads.
struct Job {
    samples: Arc<Vec<Sample>>,
    mode: Arc<LoaderMode>,
    cache: Option<Cache>,
    skip_bad: bool,
    epoch: u64,
    batches: Vec<Vec<usize>>,
    /// Batches that may be claimed beyond the last one handed out.
    window: usize,
    control: Control,
}

/// Which batch a worker takes next, and the stop signal.
#[derive(Default)]
struct Control {
    /// (next batch to claim, batches handed to the consumer)
    state: Mutex<(usize, usize)>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Control {
    /// The next batch to prepare, waiting while `window` batches are ahead of
    /// the consumer; `None` when all are claimed or the iterator stopped.
    fn claim(&self, total: usize, window: usize) -> Option<usize> {
        let mut state = lock(&self.state);
        loop {
            if self.stop.load(Ordering::SeqCst) || state.0 >= total {
                return None;
            }
            if state.0 < state.1 + window {
                state.0 += 1;
                return Some(state.0 - 1);
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn consumed(&self, batches: usize) {
        lock(&self.state).1 = batches;
        self.wake.notify_all();
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Taking the lock orders this with a worker between its check and its wait.
        drop(lock(&self.state));
        self.wake.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Message = (usize, Result<Decoded>);

/// A worker: claims batches until none is left or the iterator is dropped.
fn work(job: &Job, tx: &mpsc::Sender<Message>) {
    while let Some(b) = job.control.claim(job.batches.len(), job.window) {
        let Some(result) = prepare_batch(job, b) else {
            return;
        };
        if tx.send((b, result)).is_err() {
            return;
        }
    }
}

/// Decodes and transforms batch `b`; `None` if stopped meanwhile.
fn prepare_batch(job: &Job, b: usize) -> Option<Result<Decoded>> {
    let items = &job.batches[b];
    let numel = 3 * job.mode.image_size().pow(2);
    let mut out = Decoded {
        images: Vec::with_capacity(items.len() * numel),
        labels: Vec::with_capacity(items.len()),
        indices: Vec::with_capacity(items.len()),
        skipped: Vec::new(),
    };
    for &i in items {
        if job.control.stopped() {
            return None;
        }
        let sample = &job.samples[i];
        // A decoder that panics on a malformed file is a bad image, not a crash.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| prepare_item(job, i)))
            .unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the decoder panicked".into());
                Err(Error::Image {
                    path: sample.path.clone(),
                    msg,
                })
            });
        match result {
            Ok(pixels) => {
                out.images.extend_from_slice(&pixels);
                out.labels.push(sample.label as i64);
                out.indices.push(i);
            }
            Err(e) if job.skip_bad => {
                log::warn!("skipping an unreadable training image: {e}");
                out.skipped.push(sample.path.clone());
            }
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(out))
}

/// `[3, size, size]` for sample `i`.
fn prepare_item(job: &Job, i: usize) -> Result<Vec<f32>> {
    let path = &job.samples[i].path;
    let cached = |make: &dyn Fn() -> Result<RgbImage>| -> Result<Arc<RgbImage>> {
        let Some(cell) = job.cache.as_ref().map(|c| &c[i]) else {
            return make().map(Arc::new);
        };
        if let Some(img) = cell.get() {
            return Ok(img.clone());
        }
        let img = Arc::new(make()?);
        Ok(cell.get_or_init(|| img).clone())
    };
    match &*job.mode {
        LoaderMode::Train { transform, seed } => {
            let img = cached(&|| load_nonempty(path))?;
            let mut rng = sample_rng(*seed, job.epoch, i as u64);
            Ok(transform.apply(&img, &mut rng))
        }
        LoaderMode::Eval { config } | LoaderMode::Fixed { config, .. } => {
            let crop = cached(&|| Ok(resize_and_crop(&load_nonempty(path)?, config)))?;
            Ok(normalize_chw(&crop, config))
        }
    }
}

fn load_nonempty(path: &Path) -> Result<RgbImage> {
    let img = load_rgb8(path)?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Image {
            path: path.into(),
            msg: "the image has no pixels".into(),
        });
    }
    Ok(img)
}

/// One epoch of an [`ImageLoader`]. Dropping it stops and joins the workers.
pub struct ImageLoaderIter<'a, B: Backend> {
    loader: &'a ImageLoader<B>,
    job: Arc<Job>,
    rx: mpsc::Receiver<Message>,
    workers: Vec<JoinHandle<()>>,
    /// Batches that arrived before their turn.
    pending: BTreeMap<usize, Result<Decoded>>,
    /// The batch to hand out next.
    next: usize,
    items_processed: usize,
    items_total: usize,
    finished: bool,
}

impl<B: Backend> ImageLoaderIter<'_, B> {
    fn to_batch(&self, d: Decoded) -> ImageBatch<B> {
        let n = d.indices.len();
        let s = self.job.mode.image_size();
        let device = &self.loader.device;
        ImageBatch {
            images: Tensor::from_data(TensorData::new(d.images, [n, 3, s, s]), device),
            labels: Tensor::from_data(TensorData::new(d.labels, [n]), device),
            indices: d.indices,
        }
    }

    /// Stops the workers and waits for them; re-raises a worker's panic if
    /// `propagate` (the consumer lost a batch).
    fn shut_down(&mut self, propagate: bool) {
        self.finished = true;
        self.job.control.stop();
        for handle in self.workers.drain(..) {
            if let Err(panic) = handle.join() {
                if propagate {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

impl<B: Backend> Iterator for ImageLoaderIter<'_, B> {
    type Item = ImageBatch<B>;

    fn next(&mut self) -> Option<ImageBatch<B>> {
        loop {
            if self.finished || self.next >= self.job.batches.len() {
                self.shut_down(false);
                return None;
            }
            let result = match self.pending.remove(&self.next) {
                Some(r) => r,
                None => match self.rx.recv() {
                    Ok((b, r)) => {
                        self.pending.insert(b, r);
                        continue;
                    }
                    Err(mpsc::RecvError) => {
                        // Every worker is gone and batch `next` never came.
                        self.shut_down(true);
                        panic!("the data loader's workers stopped before the epoch ended");
                    }
                },
            };
            self.items_processed += self.job.batches[self.next].len();
            self.next += 1;
            self.job.control.consumed(self.next);
            match result {
                Ok(d) => {
                    if !d.skipped.is_empty() {
                        lock(&self.loader.shared.skipped).extend(d.skipped.iter().cloned());
                    }
                    if d.indices.is_empty() {
                        continue;
                    }
                    return Some(self.to_batch(d));
                }
                Err(e) => {
                    lock(&self.loader.shared.error).get_or_insert(e);
                    self.shut_down(false);
                    return None;
                }
            }
        }
    }
}

impl<B: Backend> DataLoaderIterator<ImageBatch<B>> for ImageLoaderIter<'_, B> {
    fn progress(&self) -> Progress {
        Progress::new(self.items_processed, self.items_total)
    }
}

impl<B: Backend> Drop for ImageLoaderIter<'_, B> {
    fn drop(&mut self) {
        self.shut_down(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::preprocess_file;
    use std::time::{Duration, Instant};

    type B = burn_flex::Flex;

    /// A fresh directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mmrl-loader-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `n` distinct 64×48 images (PNG and JPEG alternately), labels `i % 3`.
    fn write_images(dir: &Path, n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let img = RgbImage::from_fn(64, 48, |x, y| {
                    image::Rgb([
                        (x * 4 + i as u32 * 7) as u8,
                        (y * 5 + i as u32 * 13) as u8,
                        ((x ^ y) * 3 + i as u32) as u8,
                    ])
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                let path = dir.join(format!("img{i:03}.{ext}"));
                img.save(&path).unwrap();
                Sample { path, label: i % 3 }
            })
            .collect()
    }

    fn train() -> LoaderMode {
        LoaderMode::Train {
            transform: TrainTransform::mmrl(32),
            seed: 1,
        }
    }

    fn eval() -> LoaderMode {
        LoaderMode::Eval {
            config: PreprocessConfig::for_image_size(32),
        }
    }

    /// (pixels, labels, indices) per batch.
    type Plain = Vec<(Vec<f32>, Vec<i64>, Vec<usize>)>;

    fn epoch(loader: &ImageLoader<B>) -> Plain {
        plain(loader.iter())
    }

    fn plain(iter: Box<dyn DataLoaderIterator<ImageBatch<B>> + '_>) -> Plain {
        iter.map(|b| {
            let [n, c, h, w] = b.images.dims();
            assert_eq!((c, h, w), (3, 32, 32));
            assert_eq!(n, b.indices.len());
            (
                b.images.into_data().to_vec::<f32>().unwrap(),
                b.labels
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap(),
                b.indices,
            )
        })
        .collect()
    }

    fn indices(p: &Plain) -> Vec<Vec<usize>> {
        p.iter().map(|b| b.2.clone()).collect()
    }

    #[test]
    fn workers_and_cache_do_not_change_the_batches() {
        let dir = temp_dir("workers");
        let samples = write_images(&dir, 10);
        let make = |workers, cache| {
            ImageLoader::<B>::new(samples.clone(), train(), 3, workers, Default::default())
                .with_cache(cache)
        };
        let reference = make(1, false);
        let expected = [epoch(&reference), epoch(&reference)];
        // drop_last: 10 items, batch 3 → 3 batches, 9 items.
        assert_eq!(expected[0].len(), 3);
        assert_eq!(reference.num_items(), 9);
        assert!(expected[0].iter().all(|b| b.2.len() == 3));
        for (workers, cache) in [(0, false), (2, false), (3, true), (2, true), (1, true)] {
            let loader = make(workers, cache);
            for (e, want) in expected.iter().enumerate() {
                assert!(
                    &epoch(&loader) == want,
                    "workers {workers} cache {cache} epoch {e}"
                );
            }
        }
        // Labels follow the samples.
        for (_, labels, idx) in &expected[0] {
            let want: Vec<i64> = idx.iter().map(|&i| (i % 3) as i64).collect();
            assert_eq!(labels, &want);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Without augmentation: shuffled and `drop_last` as in training, and
    /// each image exactly the evaluation loader's.
    #[test]
    fn fixed_mode_shuffles_but_never_augments() {
        let dir = temp_dir("fixed");
        let samples = write_images(&dir, 8);
        let config = PreprocessConfig::for_image_size(32);
        let fixed = ImageLoader::<B>::new(
            samples.clone(),
            LoaderMode::Fixed {
                config: config.clone(),
                seed: 1,
            },
            3,
            2,
            Default::default(),
        );
        let train = ImageLoader::<B>::new(samples.clone(), train(), 3, 2, Default::default());
        let by_index = |e: &Plain| -> BTreeMap<usize, Vec<f32>> {
            e.iter()
                .flat_map(|(px, _, idx)| {
                    let n = px.len() / idx.len();
                    idx.iter()
                        .enumerate()
                        .map(move |(k, &i)| (i, px[k * n..(k + 1) * n].to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (e0, e1) = (epoch(&fixed), epoch(&fixed));
        assert_eq!(indices(&e0), indices(&epoch(&train)), "the training order");
        assert_ne!(indices(&e0), indices(&e1), "each epoch reshuffles");
        assert_eq!(e0.len(), 2, "drop_last");
        let eval = ImageLoader::<B>::new(
            samples,
            LoaderMode::Eval { config },
            8,
            1,
            Default::default(),
        );
        let want = by_index(&epoch(&eval));
        for (i, px) in by_index(&e0).into_iter().chain(by_index(&e1)) {
            assert_eq!(px, want[&i], "image {i}");
        }
    }

    #[test]
    fn order_and_augmentation_depend_only_on_seed_and_epoch() {
        let dir = temp_dir("resume");
        let samples = write_images(&dir, 8);
        let fresh = || ImageLoader::<B>::new(samples.clone(), train(), 4, 2, Default::default());
        let a = fresh();
        let (e0, e1) = (epoch(&a), epoch(&a));
        assert_eq!(a.epoch(), 2);
        assert_ne!(indices(&e0), indices(&e1), "each epoch reshuffles");
        assert!(epoch(&fresh()) == e0, "same seed and epoch, same batches");
        let resumed = fresh().with_start_epoch(1);
        assert!(epoch(&resumed) == e1, "resuming at epoch 1 gives epoch 1");
        assert!(plain(Box::new(a.iter_epoch(0))) == e0);
        let other_seed = ImageLoader::<B>::new(
            samples.clone(),
            LoaderMode::Train {
                transform: TrainTransform::mmrl(32),
                seed: 2,
            },
            4,
            2,
            Default::default(),
        );
        assert!(epoch(&other_seed) != e0);
        // Every image once per epoch.
        let mut seen: Vec<usize> = indices(&e0).concat();
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn drop_last_as_dassl() {
        let dir = temp_dir("droplast");
        let samples = write_images(&dir, 7);
        let sizes = |mode: LoaderMode, n: usize, bs: usize| {
            let loader =
                ImageLoader::<B>::new(samples[..n].to_vec(), mode, bs, 2, Default::default());
            let got: Vec<usize> = epoch(&loader).iter().map(|b| b.2.len()).collect();
            assert_eq!(got.iter().sum::<usize>(), loader.num_items());
            got
        };
        assert_eq!(sizes(train(), 7, 3), vec![3, 3]);
        assert_eq!(sizes(train(), 6, 3), vec![3, 3]);
        // Smaller than one batch: one short batch.
        assert_eq!(sizes(train(), 2, 4), vec![2]);
        assert_eq!(sizes(train(), 0, 4), Vec::<usize>::new());
        assert_eq!(sizes(eval(), 7, 3), vec![3, 3, 1]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn eval_mode_is_clips_test_transform_in_order() {
        let dir = temp_dir("eval");
        let samples = write_images(&dir, 7);
        let config = PreprocessConfig::for_image_size(32);
        let expected: Vec<f32> = samples
            .iter()
            .flat_map(|s| preprocess_file(&s.path, &config).unwrap())
            .collect();
        for (workers, cache) in [(1, false), (3, true)] {
            let loader =
                ImageLoader::<B>::new(samples.clone(), eval(), 3, workers, Default::default())
                    .with_cache(cache);
            for _ in 0..2 {
                let got = epoch(&loader);
                assert_eq!(indices(&got), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
                let pixels: Vec<f32> = got.iter().flat_map(|b| b.0.clone()).collect();
                assert!(pixels == expected, "workers {workers} cache {cache}");
            }
            assert_eq!(loader.epoch(), 0, "eval does not count epochs");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_cache_spares_later_epochs_the_files() {
        let dir = temp_dir("cache");
        // A multiple of the batch size: epoch 0 decodes every image.
        let samples = write_images(&dir, 6);
        for mode in [train(), eval()] {
            let cached =
                ImageLoader::<B>::new(samples.clone(), mode.clone(), 2, 2, Default::default())
                    .with_cache(true);
            let plain_loader =
                ImageLoader::<B>::new(samples.clone(), mode, 2, 2, Default::default());
            let first = epoch(&cached);
            assert!(first == epoch(&plain_loader));
            let second_plain = epoch(&plain_loader);
            for s in &samples {
                std::fs::rename(&s.path, s.path.with_extension("moved")).unwrap();
            }
            assert!(epoch(&cached) == second_plain, "epoch 1 from the cache");
            assert!(cached.take_error().is_none());
            for s in &samples {
                std::fs::rename(s.path.with_extension("moved"), &s.path).unwrap();
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_image_stops_with_an_error_naming_it_or_is_skipped() {
        let dir = temp_dir("bad");
        let mut samples = write_images(&dir, 7);
        let bad = dir.join("broken.jpg");
        std::fs::write(&bad, b"\xFF\xD8\xFF\xE0 not really a jpeg").unwrap();
        samples[4].path = bad.clone();
        samples[5].path = dir.join("missing.png");

        let loader = ImageLoader::<B>::new(samples.clone(), eval(), 2, 2, Default::default());
        let got = epoch(&loader);
        // Batches before the bad one arrive, then the epoch ends.
        assert_eq!(indices(&got), vec![vec![0, 1], vec![2, 3]]);
        let err = loader.take_error().expect("an error").to_string();
        assert!(err.contains("broken.jpg"), "{err}");
        assert!(loader.take_error().is_none(), "taking clears it");

        let skipping = ImageLoader::<B>::new(samples.clone(), eval(), 2, 2, Default::default())
            .skip_bad_images(true);
        let got = epoch(&skipping);
        assert_eq!(indices(&got), vec![vec![0, 1], vec![2, 3], vec![6]]);
        assert_eq!(
            skipping.skipped(),
            vec![bad.clone(), dir.join("missing.png")]
        );
        assert!(skipping.take_error().is_none());

        // Training with skipping: the rest of the epoch arrives.
        let training =
            ImageLoader::<B>::new(samples, train(), 3, 2, Default::default()).skip_bad_images(true);
        let planned: Vec<Vec<usize>> = training
            .batch_indices(0)
            .into_iter()
            .map(|b| b.into_iter().filter(|&i| i != 4 && i != 5).collect())
            .filter(|b: &Vec<usize>| !b.is_empty())
            .collect();
        assert_eq!(indices(&epoch(&training)), planned);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dropping_an_iterator_mid_epoch_stops_the_workers() {
        let dir = temp_dir("drop");
        let samples = write_images(&dir, 4);
        // 4 files repeated: 400 items, 200 batches.
        let many: Vec<Sample> = (0..400).map(|i| samples[i % 4].clone()).collect();
        let loader = ImageLoader::<B>::new(many, train(), 2, 3, Default::default());
        let t = Instant::now();
        {
            let mut it = loader.iter();
            assert!(it.next().is_some());
            assert!(it.progress().items_processed == 2);
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            t.elapsed()
        );
        // The loader still works, at the next epoch.
        assert_eq!(loader.epoch(), 1);
        let mut it = loader.iter();
        assert!(it.next().is_some());
        drop(it);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn progress_slice_and_to_device() {
        let dir = temp_dir("slice");
        let samples = write_images(&dir, 9);
        let loader = ImageLoader::<B>::new(samples, eval(), 2, 2, Default::default());
        let mut it = loader.iter();
        while it.next().is_some() {}
        let p = it.progress();
        assert_eq!((p.items_processed, p.items_total), (9, 9));
        drop(it);

        let part = loader.slice(2, 7);
        assert_eq!(part.num_items(), 5);
        let got = plain(part.iter());
        assert_eq!(indices(&got), vec![vec![2, 3], vec![4, 5], vec![6]]);
        let full = epoch(&loader);
        assert!(got[0].0 == full[1].0, "same pixels for the same images");
        let sub = part.slice(1, 10);
        assert_eq!(indices(&plain(sub.iter())), vec![vec![3, 4], vec![5, 6]]);

        // to_device shares the epoch counter (train mode).
        let dir2 = temp_dir("slice-train");
        let train_loader =
            ImageLoader::<B>::new(write_images(&dir2, 4), train(), 2, 1, Default::default());
        let moved = train_loader.to_device(&Default::default());
        let _ = plain(moved.iter());
        assert_eq!(train_loader.epoch(), 1);
        let e1 = plain(moved.iter());
        assert!(plain(Box::new(train_loader.iter_epoch(1))) == e1);
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }
}
