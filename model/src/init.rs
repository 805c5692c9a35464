//! The methods' trainable parameters, drawn on the host: one seed gives the
//! same initial model on every backend.
//!
//! Burn's `Tensor::random` draws from the backend's own generator: flex uses
//! a ChaCha12 stream, wgpu and CUDA draw on the device with generators of
//! their own, so `--seed 1 --device wgpu` would start from other weights than
//! `--seed 1 --device cpu` (measured: the first training loss of the same
//! MMRL run differed by 22 %). The reference code builds its models on the
//! CPU and moves them to the GPU afterwards, so its initialisation does not
//! depend on the device either. Every method therefore draws its parameters
//! here, from one host generator seeded once per run ([`seed`]), and uploads
//! them.
//!
//! The generator is ChaCha12 seeded with `seed_from_u64`, the stream behind
//! rand's `StdRng` that flex draws from, and values are drawn with
//! `TensorData::random` as flex draws them: on the CPU backend a run starts
//! from exactly the weights it started from when the methods drew on the
//! backend. Burn's `LinearConfig::init` draws lazily on the backend; methods
//! use [`linear`] instead, which draws PyTorch's default `nn.Linear`
//! initialisation eagerly.

use std::cell::RefCell;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use rand::rngs::ChaCha12Rng;
use rand::SeedableRng;

thread_local! {
    /// The host generator, one per thread (runs that initialise on several
    /// threads at once, as the demo's, never interleave their draws);
    /// seed 0 until [`seed`] is called on the thread.
    static RNG: RefCell<Option<ChaCha12Rng>> = const { RefCell::new(None) };
}

/// Seeds this thread's host generator (a run seeds it once, before its
/// method's `init`, on the thread that calls `init`).
pub fn seed(seed: u64) {
    RNG.with_borrow_mut(|rng| *rng = Some(ChaCha12Rng::seed_from_u64(seed)));
}

/// A tensor of `shape` drawn from `distribution` on the host, uploaded to
/// `device`.
pub fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    distribution: Distribution,
    device: &B::Device,
) -> Tensor<B, D> {
    let data = RNG.with_borrow_mut(|rng| {
        let rng = rng.get_or_insert_with(|| ChaCha12Rng::seed_from_u64(0));
        TensorData::random::<f32, _, _>(shape, distribution, rng)
    });
    Tensor::from_data(data, device)
}

/// A `Linear(d_in, d_out)` as PyTorch initialises `nn.Linear` (and Burn's
/// `LinearConfig` does): weight and bias uniform in ±1/√d_in (kaiming-uniform
/// with a = √5). Weight `[d_in, d_out]` (Burn's layout), drawn before the bias.
pub fn linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    let bound = 1.0 / (d_in as f64).sqrt();
    let u = Distribution::Uniform(-bound, bound);
    Linear {
        weight: Param::from_tensor(random([d_in, d_out], u, device)),
        bias: Some(Param::from_tensor(random([d_out], u, device))),
    }
}

/// A `Linear(d_in, d_out)` whose weight is xavier-uniform (±√(6/(d_in+d_out)),
/// as `nn.MultiheadAttention`'s input projection) and whose bias is zero.
pub fn linear_xavier_zero_bias<B: Backend>(
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Linear<B> {
    let bound = (6.0 / (d_in + d_out) as f64).sqrt();
    Linear {
        weight: Param::from_tensor(random(
            [d_in, d_out],
            Distribution::Uniform(-bound, bound),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::rngs::StdRng;

    /// The host draws are the stream flex's `Tensor::random` draws after
    /// `Flex::seed` (rand's `StdRng` from `seed_from_u64`, values through
    /// `TensorData::random`): CPU runs keep their initial weights. Compared
    /// with that recipe rather than with flex itself, whose process-wide
    /// generator the other tests of this binary draw from at the same time.
    #[test]
    fn host_draws_are_flexs_stream() {
        let device = Default::default();
        seed(7);
        let a = random::<Flex, 2>([3, 5], Distribution::Normal(0.0, 0.02), &device);
        let b = random::<Flex, 1>([4], Distribution::Uniform(-0.5, 0.5), &device);
        let mut std = StdRng::seed_from_u64(7);
        let want_a =
            TensorData::random::<f32, _, _>([3, 5], Distribution::Normal(0.0, 0.02), &mut std);
        let want_b =
            TensorData::random::<f32, _, _>([4], Distribution::Uniform(-0.5, 0.5), &mut std);
        assert_eq!(a.into_data(), want_a);
        assert_eq!(b.into_data(), want_b);
        // Reseeding restarts the stream; another seed gives other values.
        seed(7);
        let again = random::<Flex, 2>([3, 5], Distribution::Normal(0.0, 0.02), &device);
        seed(8);
        let other = random::<Flex, 2>([3, 5], Distribution::Normal(0.0, 0.02), &device);
        assert_eq!(again.clone().into_data(), want_a);
        assert_ne!(other.into_data(), again.into_data());
    }

    #[test]
    fn linear_bounds_follow_pytorch() {
        let device = Default::default();
        seed(1);
        let l = linear::<Flex>(16, 300, &device);
        let w = l.weight.val().into_data().to_vec::<f32>().unwrap();
        let b = l.bias.unwrap().val().into_data().to_vec::<f32>().unwrap();
        let (lo, hi) = w
            .iter()
            .fold((0f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
        // 4800 uniform draws in ±1/4 come within 1 % of both ends.
        assert!(
            (-0.25..-0.245).contains(&lo) && (0.245..=0.25).contains(&hi),
            "{lo} {hi}"
        );
        assert_eq!(b.len(), 300);
        assert!(b.iter().all(|x| x.abs() <= 0.25));
        let x = linear_xavier_zero_bias::<Flex>(16, 48, &device);
        let xw = x.weight.val().into_data().to_vec::<f32>().unwrap();
        let bound = (6.0f32 / 64.0).sqrt();
        assert!(xw.iter().all(|v| v.abs() <= bound));
        assert!(xw.iter().any(|v| v.abs() > 0.9 * bound));
        assert!(x
            .bias
            .unwrap()
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|&v| v == 0.0));
    }
}
