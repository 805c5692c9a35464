//! The one list of methods. `train`, `eval`, `predict`, `demo` and `report`
//! reach a method only through it, by name. Adding a method is one entry in
//! the `registry!` line at the bottom.

use burn::backend::Flex;
use burn::module::AutodiffModule;
use mmrl_model::methods::comma::Comma;
use mmrl_model::methods::coop::Coop;
use mmrl_model::methods::mm_adapter::MmAdapter;
use mmrl_model::methods::mmrl::Mmrl;
use mmrl_model::methods::zeroshot::ZeroShot;
use mmrl_model::methods::Method;

use crate::loss::MethodLoss;
use crate::{Error, Result};
use mmrl_model::{ClipAutodiffBackend, ClipBackend};

/// Work done with one method for scoring (no training): generic over the
/// method, run by [`with_method`].
pub trait MethodVisitor<B: ClipBackend> {
    type Out;
    fn visit<M: Method<B>>(self) -> Self::Out;
}

/// Work done with one method on a training (autodiff) backend: run by
/// [`train_with`]. The method's inner-backend twin scores and precomputes.
pub trait TrainVisitor<B: ClipAutodiffBackend> {
    type Out;
    fn visit<M>(self) -> Self::Out
    where
        M: MethodLoss<B> + AutodiffModule<B>,
        M::InnerModule: MethodLoss<B::InnerBackend, Config = M::Config>;
}

fn unknown(name: &str) -> Error {
    Error::UnknownMethod {
        name: name.into(),
        known: names().join(", "),
    }
}

macro_rules! registry {
    ($($method:ident),+ $(,)?) => {
        /// Every method's name, in registry order.
        pub fn names() -> Vec<&'static str> {
            vec![$(<$method<Flex> as Method<Flex>>::NAME),+]
        }

        /// Every method's name and one-line summary.
        pub fn summaries() -> Vec<(&'static str, &'static str)> {
            vec![$((
                <$method<Flex> as Method<Flex>>::NAME,
                <$method<Flex> as Method<Flex>>::SUMMARY,
            )),+]
        }

        /// Runs `visitor` with the method called `name`.
        pub fn with_method<B: ClipBackend, V: MethodVisitor<B>>(name: &str, visitor: V) -> Result<V::Out> {
            $(if name == <$method<B> as Method<B>>::NAME {
                return Ok(visitor.visit::<$method<B>>());
            })+
            Err(unknown(name))
        }

        /// Runs `visitor` with the method called `name`, on a training backend.
        pub fn train_with<B: ClipAutodiffBackend, V: TrainVisitor<B>>(name: &str, visitor: V) -> Result<V::Out> {
            $(if name == <$method<B> as Method<B>>::NAME {
                return Ok(visitor.visit::<$method<B>>());
            })+
            Err(unknown(name))
        }
    };
}

registry!(ZeroShot, Coop, Mmrl, Comma, MmAdapter);

/// Checks a method name.
pub fn check(name: &str) -> Result<()> {
    if names().contains(&name) {
        Ok(())
    } else {
        Err(unknown(name))
    }
}
