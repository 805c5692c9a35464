//! Few-shot subsets and base/novel classes, as Dassl and CoOp make them
//! (`DatasetBase.generate_fewshot_dataset`, `OxfordPets.subsample_classes`
//! in Dassl and CoOp's `datasets/oxford_pets.py`), with CPython's RNG so that the same
//! seed draws the same images.

use crate::pyrandom::PyRandom;

/// Draws up to `shots` items per label: items are grouped by label in order
/// of first appearance; a group with at least `shots` items gives
/// `random.sample(group, shots)` (in sample order), a smaller one all of its
/// items (Dassl keeps them; the caller may warn). Returns indices into `labels`.
pub fn fewshot_indices(labels: &[usize], shots: usize, rng: &mut PyRandom) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::new();
    let mut groups: std::collections::HashMap<usize, Vec<usize>> = Default::default();
    for (i, &label) in labels.iter().enumerate() {
        groups
            .entry(label)
            .or_insert_with(|| {
                order.push(label);
                Vec::new()
            })
            .push(i);
    }
    let mut out = Vec::new();
    for label in order {
        let group = &groups[&label];
        if group.len() >= shots {
            out.extend(rng.sample(group.len(), shots).into_iter().map(|j| group[j]));
        } else {
            out.extend(group.iter().copied());
        }
    }
    out
}

/// Dassl's train and val draws for one seed: `random.seed(seed)`, `shots`
/// per class from train, then `min(shots, 4)` per class from val on the same
/// stream. Returns indices into each list.
pub fn dassl_fewshot(
    train_labels: &[usize],
    val_labels: &[usize],
    shots: usize,
    seed: i128,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = PyRandom::new(seed);
    let train = fewshot_indices(train_labels, shots, &mut rng);
    let val = fewshot_indices(val_labels, shots.min(4), &mut rng);
    (train, val)
}

/// Which classes a base-to-novel run keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subsample {
    /// Every class, labels unchanged.
    All,
    /// The first ceil(n/2) of the sorted labels.
    Base,
    /// The rest.
    Novel,
}

/// The selected labels, sorted, from the labels present in the (few-shot)
/// train split; an item's new label is its label's position in this list.
pub fn subsample_labels(train_labels: &[usize], which: Subsample) -> Vec<usize> {
    let mut labels: Vec<usize> = train_labels.to_vec();
    labels.sort_unstable();
    labels.dedup();
    let m = labels.len().div_ceil(2);
    match which {
        Subsample::All => labels,
        Subsample::Base => labels[..m].to_vec(),
        Subsample::Novel => labels[m..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_novel_halves_round_up_the_base() {
        let labels = [4, 0, 2, 1, 3, 2];
        assert_eq!(subsample_labels(&labels, Subsample::Base), vec![0, 1, 2]);
        assert_eq!(subsample_labels(&labels, Subsample::Novel), vec![3, 4]);
        assert_eq!(
            subsample_labels(&labels, Subsample::All),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn small_classes_keep_everything() {
        let labels = [0, 1, 0, 1, 1, 2];
        let mut rng = PyRandom::new(1);
        let idx = fewshot_indices(&labels, 2, &mut rng);
        // Class 2 has one item: kept; classes 0 and 1 give two each.
        assert_eq!(idx.len(), 5);
        assert!(idx.contains(&5));
    }
}
