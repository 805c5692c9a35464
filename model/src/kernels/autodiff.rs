//! The kernels on the autodiff backend: the inner backend's kernel forward,
//! and its backward recorded in the graph.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{FloatDType, TensorMetadata};

use super::ClipBackend;

/// `t` in `dtype` (itself when it is already).
fn cast<B: ClipBackend>(t: FloatTensor<B>, dtype: FloatDType) -> FloatTensor<B> {
    if FloatDType::from(t.dtype()) == dtype {
        t
    } else {
        B::float_cast(t, dtype)
    }
}

impl<B: ClipBackend, C: CheckpointStrategy> ClipBackend for Autodiff<B, C> {
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Linear;

        /// `x` (for the weight's gradient), the weight (for `x`'s) and the
        /// dtypes each gradient is given in.
        #[derive(Debug, Clone)]
        struct State {
            x: Option<NodeId>,
            w: Option<NodeId>,
            dtypes: [FloatDType; 3],
        }

        impl<B: ClipBackend> Backward<B, 3> for Linear {
            type State = State;

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let State { x, w, dtypes } = ops.state;
                let [dtype_x, dtype_w, dtype_b] = dtypes;
                let x: Option<B::FloatTensorPrimitive> =
                    x.map(|id| checkpointer.retrieve_node_output(id));
                let w: Option<B::FloatTensorPrimitive> =
                    w.map(|id| checkpointer.retrieve_node_output(id));
                let grad = grads.consume::<B>(&ops.node);
                let [px, pw, pb] = ops.parents;
                if let Some(node) = pb {
                    let n = grad.shape()[1];
                    let db = B::float_reshape(B::float_sum_dim(grad.clone(), 0), [n].into());
                    grads.register::<B>(node.id, cast::<B>(db, dtype_b));
                }
                if let Some(node) = pw {
                    let x = x.expect("the input is kept when the weight needs a gradient");
                    let (x, g) = (cast::<B>(x, dtype_w), cast::<B>(grad.clone(), dtype_w));
                    let dw = B::float_matmul(B::float_transpose(x), g);
                    grads.register::<B>(node.id, dw);
                }
                if let Some(node) = px {
                    let w = w.expect("the weight is kept when the input needs a gradient");
                    // In the weight's dtype when it differs (a bf16 frozen
                    // weight: as autocast computes it), returned in x's.
                    let dx = if dtype_x == dtype_w {
                        B::float_matmul(grad, B::float_transpose(w))
                    } else {
                        B::fused_linear(grad, B::float_transpose(w), None)
                    };
                    grads.register::<B>(node.id, dx);
                }
            }
        }

        let Some(bias) = bias else {
            // No bias: the product alone, with its own backward (and the
            // casts', for a weight in another dtype).
            if x.dtype() == weight.dtype() {
                return <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_matmul(x, weight);
            }
            return super::composed::fused_linear::<Self>(x, weight, None);
        };
        let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
        let dtypes = [x.dtype(), weight.dtype(), bias.dtype()].map(FloatDType::from);
        match Linear
            .prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = State {
                    x: w_tracked.then(|| prep.checkpoint(&x)),
                    w: x_tracked.then(|| prep.checkpoint(&weight)),
                    dtypes,
                };
                let y = B::fused_linear(x.primitive, weight.primitive, Some(bias.primitive));
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_linear(
                x.primitive,
                weight.primitive,
                Some(bias.primitive),
            )),
        }
    }

    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuickGelu;

        impl<B: ClipBackend> Backward<B, 1> for QuickGelu {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let x: B::FloatTensorPrimitive = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::quick_gelu_backward(x, grad)
                });
            }
        }

        match QuickGelu
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::quick_gelu(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quick_gelu(x.primitive)),
        }
    }

    fn softmax_last(x: FloatTensor<Self>, causal: bool) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Softmax;

        impl<B: ClipBackend> Backward<B, 1> for Softmax {
            /// The softmax's output.
            type State = B::FloatTensorPrimitive;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let p = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::softmax_last_backward(p, grad)
                });
            }
        }

        match Softmax
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = B::softmax_last(x.primitive, causal);
                prep.finish(p.clone(), p)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax_last(x.primitive, causal)),
        }
    }

    fn attention_core(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Attention;

        impl<B: ClipBackend> Backward<B, 3> for Attention {
            /// q, k, v and the attention probabilities.
            type State = [B::FloatTensorPrimitive; 4];

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [q, k, v, p] = ops.state;
                let grad = grads.consume::<B>(&ops.node);
                let [dq, dk, dv] = B::attention_core_backward(q, k, v, p, grad);
                for (parent, d) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(node) = parent {
                        grads.register::<B>(node.id, d);
                    }
                }
            }
        }

        match Attention
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, p) = B::attention_core_with_probs(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    causal,
                );
                prep.finish([q.primitive, k.primitive, v.primitive, p], out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention_core(
                q.primitive,
                k.primitive,
                v.primitive,
                causal,
            )),
        }
    }
}
