//! The specialised kernels of the default CPU backend, flex (f32, and the
//! linear with a bf16 weight; other dtypes take the composed forms).

use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::{composed, vecmath, ClipBackend};

/// Element-wise work is split into tasks of this many values (64 KiB).
const CHUNK: usize = 16 * 1024;
/// Products of at least this many multiply-adds run on every core (flex's own threshold).
const PARALLEL_GEMM: usize = 192 * 192 * 192;

/// Whether the specialised kernels run: yes, unless the environment sets
/// `MMRL_CPU_KERNELS=composed` (read once), which runs the composed forms
/// instead, to compare speed or to rule the kernels out when chasing a bug.
pub fn specialised() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MMRL_CPU_KERNELS").map_or(true, |v| v != "composed"))
}

impl ClipBackend for Flex {
    fn fused_linear(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        let stored = weight.dtype();
        let fits = x.dtype() == DType::F32
            && matches!(stored, DType::F32 | DType::BF16)
            && bias.as_ref().is_none_or(|b| b.dtype() == stored);
        if !fits || !specialised() {
            return composed::fused_linear::<Flex>(x, weight, bias);
        }
        if stored == DType::F32 {
            return linear_f32(x, weight, bias);
        }
        // A bf16 weight (frozen CLIP, `Precision::Bf16`), as bf16 tensor
        // cores run it: `x` rounded to bf16, the exact products summed in f32
        // with the bias, the result rounded to bf16 once; all in f32 storage
        // (the weight widened per call: flex 0.21's own bf16 product widens
        // both operands, and the casts around it cost more than the product).
        let x = rounded_to_bf16(x);
        let y = linear_f32(x, widened(weight), bias.map(widened));
        rounded_to_bf16(y)
    }

    fn quick_gelu(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || !specialised() {
            return composed::quick_gelu::<Flex>(x);
        }
        elementwise(x, vecmath::quick_gelu_inplace, vecmath::quick_gelu_to)
    }

    fn quick_gelu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || !specialised() {
            return composed::quick_gelu_backward::<Flex>(x, grad);
        }
        let x = x.to_contiguous();
        let mut g = owned_contiguous(grad);
        let xs = values(&x);
        let gs: &mut [f32] = g.storage_mut();
        gs.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(g, x)| vecmath::quick_gelu_grad_slice(x, g));
        g
    }

    fn softmax_last(x: FlexTensor, causal: bool) -> FlexTensor {
        let shape = x.shape();
        let dims = shape.num_dims();
        let last = shape[dims - 1];
        let square = dims >= 2 && shape[dims - 2] == last;
        if x.dtype() != DType::F32 || last == 0 || (causal && !square) || !specialised() {
            return composed::softmax_last::<Flex>(x, causal);
        }
        let mut y = owned_contiguous(x);
        let rows: &mut [f32] = y.storage_mut();
        let rows_per_task = (CHUNK / last).max(1);
        rows.par_chunks_mut(rows_per_task * last)
            .enumerate()
            .for_each(|(i, r)| vecmath::softmax_rows(r, last, i * rows_per_task, causal));
        y
    }

    fn softmax_last_backward(p: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = p.shape();
        let last = shape[shape.num_dims() - 1];
        if p.dtype() != DType::F32 || grad.dtype() != DType::F32 || last == 0 || !specialised() {
            return composed::softmax_last_backward::<Flex>(p, grad);
        }
        let p = p.to_contiguous();
        let mut g = owned_contiguous(grad);
        let ps = values(&p);
        let gs: &mut [f32] = g.storage_mut();
        let per_task = (CHUNK / last).max(1) * last;
        gs.par_chunks_mut(per_task)
            .zip(ps.par_chunks(per_task))
            .for_each(|(g, p)| vecmath::softmax_grad_rows(p, g, last));
        g
    }

    fn attention_core(q: FlexTensor, k: FlexTensor, v: FlexTensor, causal: bool) -> FlexTensor {
        if !attention_fits(&q, &k, &v) || !specialised() {
            return composed::attention_core::<Flex>(q, k, v, causal);
        }
        attention_f32(q, k, v, causal, false).0
    }

    fn attention_core_with_probs(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        causal: bool,
    ) -> (FlexTensor, FlexTensor) {
        if !attention_fits(&q, &k, &v) || !specialised() {
            return composed::attention_core_with_probs::<Flex>(q, k, v, causal);
        }
        let (out, p) = attention_f32(q, k, v, causal, true);
        (out, p.expect("probabilities were asked for"))
    }

    fn attention_core_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        p: FlexTensor,
        grad: FlexTensor,
    ) -> [FlexTensor; 3] {
        let f32s = p.dtype() == DType::F32 && grad.dtype() == DType::F32;
        if !attention_fits(&q, &k, &v) || !f32s || grad.shape() != q.shape() || !specialised() {
            return composed::attention_core_backward::<Flex>(q, k, v, p, grad);
        }
        attention_backward_f32(q, k, v, p, grad)
    }
}

/// q, k and v of one `[batch, heads, seq, head_dim]` shape, in f32.
fn attention_fits(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> bool {
    q.shape() == k.shape()
        && q.shape() == v.shape()
        && q.shape().num_dims() == 4
        && [q, k, v].iter().all(|t| t.dtype() == DType::F32)
}

/// Whether this call may overwrite `t`'s storage: contiguous, the whole
/// buffer, and not shared.
fn writable(t: &FlexTensor) -> bool {
    let n = t.shape().num_elements();
    t.is_unique()
        && t.is_contiguous()
        && t.layout().contiguous_offsets() == Some((0, n))
        && t.bytes().len() == n * 4
}

/// The values of a contiguous tensor, in order (its layout may start past
/// the storage's first element).
fn values(t: &FlexTensor) -> &[f32] {
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .expect("a contiguous layout");
    &t.storage::<f32>()[start..end]
}

/// `t` if this call may overwrite it, else a contiguous copy.
fn owned_contiguous(t: FlexTensor) -> FlexTensor {
    if writable(&t) {
        t
    } else {
        let shape = t.shape();
        let data: Vec<f32> = values(&t.to_contiguous()).to_vec();
        FlexTensor::from_data(TensorData::new(data, shape))
    }
}

/// A matrix view for `gemm`: its first element and its row and column strides.
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// The f32 storage of `t` with its layout's offset and strides, made
/// contiguous first if a stride is negative or zero (flips, broadcasts).
fn strided(t: FlexTensor) -> (FlexTensor, Vec<isize>) {
    let t = if t.layout().has_positive_strides() && t.layout().strides().iter().all(|&s| s > 0) {
        t
    } else {
        t.to_contiguous()
    };
    let strides = t.layout().strides().to_vec();
    (t, strides)
}

fn base_ptr(t: &FlexTensor) -> *const f32 {
    let data: &[f32] = t.storage();
    // SAFETY: the layout's offset lies inside the storage.
    unsafe { data.as_ptr().add(t.layout().start_offset()) }
}

/// `dst = (read_dst ? dst : 0) + beta · lhs · rhs` for `m × k` by `k × n`.
///
/// # Safety
/// Every view must address `m × k`, `k × n` and `m × n` valid elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    read_dst: bool,
    lhs: &View,
    rhs: &View,
    beta: f32,
    parallel: bool,
) {
    let parallelism = if parallel && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_GEMM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            read_dst,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0f32,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// An f32 tensor's values rounded to bf16 (to nearest, ties to even), kept
/// in f32.
fn rounded_to_bf16(t: FlexTensor) -> FlexTensor {
    let round = |x: f32| burn::tensor::bf16::from_f32(x).to_f32();
    elementwise(
        t,
        |v| v.iter_mut().for_each(|x| *x = round(*x)),
        |s, o| o.iter_mut().zip(s).for_each(|(o, s)| *o = round(*s)),
    )
}

/// An element-wise map of an f32 tensor, threaded over chunks: in place
/// (`inplace`) when this call may overwrite `x`, else (the autodiff graph
/// keeps it) into a new buffer in one pass (`to(src, dst)`).
fn elementwise(
    x: FlexTensor,
    inplace: impl Fn(&mut [f32]) + Sync + Send,
    to: impl Fn(&[f32], &mut [f32]) + Sync + Send,
) -> FlexTensor {
    if writable(&x) {
        let mut y = x;
        let values: &mut [f32] = y.storage_mut();
        values.par_chunks_mut(CHUNK).for_each(inplace);
        return y;
    }
    let shape = x.shape();
    let x = x.to_contiguous();
    let src = values(&x);
    let mut out = vec![0.0f32; src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| to(s, o));
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// A bf16 tensor as an f32 one (exact), contiguous.
fn widened(t: FlexTensor) -> FlexTensor {
    let shape = t.shape();
    let t = t.to_contiguous();
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .expect("a contiguous layout");
    let src = &t.storage::<burn::tensor::bf16>()[start..end];
    let mut out = vec![0.0f32; src.len()];
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, s)| *o = s.to_f32()));
    FlexTensor::from_data(TensorData::new(out, shape))
}

fn linear_f32(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    let [m, k] = dims2(&x);
    let [kw, n] = dims2(&weight);
    assert_eq!(
        k, kw,
        "fused_linear: x has {k} features, the weight expects {kw}"
    );
    let (x, xs) = strided(x);
    let (w, ws) = strided(weight);
    let mut out: Vec<f32>;
    let read_dst = match &bias {
        Some(b) => {
            let b = b.to_contiguous();
            let b: &[f32] = &b.storage::<f32>()[b.layout().start_offset()..][..n];
            out = Vec::with_capacity(m * n);
            // SAFETY: every element is written by the copy below before it is read.
            #[allow(clippy::uninit_vec)]
            unsafe {
                out.set_len(m * n)
            };
            out.par_chunks_mut(n * (CHUNK / n).max(1))
                .for_each(|rows| rows.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(b)));
            true
        }
        None => {
            out = vec![0.0; m * n];
            false
        }
    };
    let lhs = View {
        ptr: base_ptr(&x),
        rs: xs[0],
        cs: xs[1],
    };
    let rhs = View {
        ptr: base_ptr(&w),
        rs: ws[0],
        cs: ws[1],
    };
    // SAFETY: shapes checked above; `out` holds m × n values.
    unsafe {
        gemm_f32(
            m,
            n,
            k,
            out.as_mut_ptr(),
            n as isize,
            read_dst,
            &lhs,
            &rhs,
            1.0,
            true,
        )
    };
    FlexTensor::from_data(TensorData::new(out, [m, n]))
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let s = t.shape();
    assert_eq!(
        s.num_dims(),
        2,
        "fused_linear takes rank-2 tensors, got {s:?}"
    );
    [s[0], s[1]]
}

/// A raw pointer the attention tasks share across threads: an input, read
/// only while they run, or an output, where each task writes a disjoint set
/// of elements. The buffers outlive the tasks.
#[derive(Clone, Copy)]
struct Shared<P>(P);
// SAFETY: see the type's documentation.
unsafe impl<P> Send for Shared<P> {}
unsafe impl<P> Sync for Shared<P> {}
impl<P: Copy> Shared<P> {
    fn get(self) -> P {
        self.0
    }
}
type SharedIn = Shared<*const f32>;

/// One (batch, head) block of a `[batch, heads, seq, head_dim]` tensor as a
/// `[seq, head_dim]` matrix view (or its transpose).
fn block(p: SharedIn, s: &[isize], b: isize, h: isize, transposed: bool) -> View {
    // SAFETY: (b, h) is inside the tensor's first two dimensions.
    let ptr = unsafe { p.get().offset(b * s[0] + h * s[1]) };
    if transposed {
        View {
            ptr,
            rs: s[3],
            cs: s[2],
        }
    } else {
        View {
            ptr,
            rs: s[2],
            cs: s[3],
        }
    }
}

/// A `[batch, seq, heads, head_dim]` buffer, viewed as `[batch, heads, seq, head_dim]`.
fn heads_view(data: Vec<f32>, [batch, heads, seq, head_dim]: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, [batch, seq, heads, head_dim]))
        .permute(&[0, 2, 1, 3])
}

/// The attention core, one task per (batch, head); with `keep_probs`, also
/// the probabilities `[batch, heads, seq, seq]`.
fn attention_f32(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    causal: bool,
    keep_probs: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = q.shape();
    let dims @ [batch, heads, seq, head_dim] = [shape[0], shape[1], shape[2], shape[3]];
    let (q, qs) = strided(q);
    let (k, ks) = strided(k);
    let (v, vs) = strided(v);
    let (qp, kp, vp) = (
        Shared(base_ptr(&q)),
        Shared(base_ptr(&k)),
        Shared(base_ptr(&v)),
    );
    let scale = 1.0 / (head_dim as f32).sqrt();
    // The output in [batch, seq, heads, head_dim] order.
    let mut out = vec![0.0f32; batch * seq * heads * head_dim];
    let op = Shared(out.as_mut_ptr());
    let row = (heads * head_dim) as isize;
    let task = |t: usize, scores: &mut [f32]| {
        let (b, h) = ((t / heads) as isize, (t % heads) as isize);
        let (qv, kt, vv) = (
            block(qp, &qs, b, h, false),
            block(kp, &ks, b, h, true),
            block(vp, &vs, b, h, false),
        );
        // SAFETY: the views address [seq, head_dim] blocks of q, k, v;
        // `scores` holds seq × seq values; this task's output block
        // (batch b, head h) is written by no other task.
        unsafe {
            gemm_f32(
                seq,
                seq,
                head_dim,
                scores.as_mut_ptr(),
                seq as isize,
                false,
                &qv,
                &kt,
                scale,
                false,
            );
            vecmath::softmax_rows(scores, seq, 0, causal);
            let p = View {
                ptr: scores.as_ptr(),
                rs: seq as isize,
                cs: 1,
            };
            let dst = op
                .get()
                .offset(b * seq as isize * row + h * head_dim as isize);
            gemm_f32(seq, head_dim, seq, dst, row, false, &p, &vv, 1.0, false);
        }
    };
    let probs = if keep_probs {
        let mut probs = vec![0.0f32; batch * heads * seq * seq];
        probs
            .par_chunks_mut(seq * seq)
            .enumerate()
            .for_each(|(t, scores)| task(t, scores));
        Some(FlexTensor::from_data(TensorData::new(
            probs,
            [batch, heads, seq, seq],
        )))
    } else {
        (0..batch * heads)
            .into_par_iter()
            .for_each_init(|| vec![0.0f32; seq * seq], |scores, t| task(t, scores));
        None
    };
    (heads_view(out, dims), probs)
}

/// The attention core's gradients, one task per (batch, head): `dv = pᵀ g`,
/// `ds = p ⊙ (g vᵀ − rowsum(p ⊙ g vᵀ))`, `dq = ds k / √d`, `dk = dsᵀ q / √d`,
/// each written in `[batch, seq, heads, head_dim]` order.
fn attention_backward_f32(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    p: FlexTensor,
    grad: FlexTensor,
) -> [FlexTensor; 3] {
    let shape = q.shape();
    let dims @ [batch, heads, seq, head_dim] = [shape[0], shape[1], shape[2], shape[3]];
    let (q, qs) = strided(q);
    let (k, ks) = strided(k);
    let (v, vs) = strided(v);
    let (g, gs) = strided(grad);
    let p = p.to_contiguous();
    let probs = values(&p);
    let (qp, kp, vp, gp) = (
        Shared(base_ptr(&q)),
        Shared(base_ptr(&k)),
        Shared(base_ptr(&v)),
        Shared(base_ptr(&g)),
    );
    let scale = 1.0 / (head_dim as f32).sqrt();
    let n = batch * seq * heads * head_dim;
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let (dqp, dkp, dvp) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    let row = (heads * head_dim) as isize;
    (0..batch * heads).into_par_iter().for_each_init(
        || vec![0.0f32; seq * seq],
        |ds, t| {
            let (b, h) = ((t / heads) as isize, (t % heads) as isize);
            let pb = &probs[t * seq * seq..][..seq * seq];
            let p_t = View {
                ptr: pb.as_ptr(),
                rs: 1,
                cs: seq as isize,
            };
            let gv = block(gp, &gs, b, h, false);
            let at = b * seq as isize * row + h * head_dim as isize;
            // SAFETY: the views address this (b, h)'s blocks; `ds` holds
            // seq × seq values; the three output blocks of (b, h) are written
            // by no other task.
            unsafe {
                // dv = pᵀ g
                gemm_f32(
                    seq,
                    head_dim,
                    seq,
                    dvp.get().offset(at),
                    row,
                    false,
                    &p_t,
                    &gv,
                    1.0,
                    false,
                );
                // ds = softmax'(p) · (g vᵀ)
                let vt = block(vp, &vs, b, h, true);
                gemm_f32(
                    seq,
                    seq,
                    head_dim,
                    ds.as_mut_ptr(),
                    seq as isize,
                    false,
                    &gv,
                    &vt,
                    1.0,
                    false,
                );
                vecmath::softmax_grad_rows(pb, ds, seq);
                // dq = ds k / √d, dk = dsᵀ q / √d
                let ds_view = View {
                    ptr: ds.as_ptr(),
                    rs: seq as isize,
                    cs: 1,
                };
                let ds_t = View {
                    ptr: ds.as_ptr(),
                    rs: 1,
                    cs: seq as isize,
                };
                let kv = block(kp, &ks, b, h, false);
                gemm_f32(
                    seq,
                    head_dim,
                    seq,
                    dqp.get().offset(at),
                    row,
                    false,
                    &ds_view,
                    &kv,
                    scale,
                    false,
                );
                let qv = block(qp, &qs, b, h, false);
                gemm_f32(
                    seq,
                    head_dim,
                    seq,
                    dkp.get().offset(at),
                    row,
                    false,
                    &ds_t,
                    &qv,
                    scale,
                    false,
                );
            }
        },
    );
    [
        heads_view(dq, dims),
        heads_view(dk, dims),
        heads_view(dv, dims),
    ]
}
