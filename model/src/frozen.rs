//! [`Frozen`]: a module held by a method but outside its parameters.

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// A frozen sub-module (CLIP under an adaptation method): it moves between
/// devices and between the autodiff and inner backends with its parent, but
/// visitors, mappers and records do not see it. So the optimizer never
/// touches it, `num_params` counts only what is trained, and a record (a
/// Learner checkpoint) holds only the trained parameters — kilobytes, not
/// CLIP's hundreds of megabytes. Build it from a module whose parameters
/// are already `no_grad`.
#[derive(Clone, Debug)]
pub struct Frozen<M>(pub M);

impl<M> Frozen<M> {
    /// Wraps `module` (call `no_grad()` on it first).
    pub fn new(module: M) -> Self {
        Frozen(module)
    }
}

impl<M> std::ops::Deref for Frozen<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.0
    }
}

impl<B: Backend, M: Module<B>> Module<B> for Frozen<M> {
    type Record = EmptyRecord;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.0.collect_devices(devices)
    }

    fn fork(self, device: &B::Device) -> Self {
        Frozen(self.0.fork(device))
    }

    fn to_device(self, device: &B::Device) -> Self {
        Frozen(self.0.to_device(device))
    }

    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}

    fn map<Mm: ModuleMapper<B>>(self, _mapper: &mut Mm) -> Self {
        self
    }

    fn load_record(self, _record: Self::Record) -> Self {
        self
    }

    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AutodiffModule<B> for Frozen<M> {
    type InnerModule = Frozen<M::InnerModule>;

    fn valid(&self) -> Self::InnerModule {
        Frozen(self.0.valid())
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        Frozen(M::from_inner(module.0))
    }
}

impl<M> ModuleDisplayDefault for Frozen<M> {
    fn content(&self, content: Content) -> Option<Content> {
        content.add_formatted(&"(frozen)").optional()
    }
}

impl<M> ModuleDisplay for Frozen<M> {}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    #[derive(Module, Debug)]
    struct Head<B: Backend> {
        trained: Linear<B>,
        frozen: Frozen<Linear<B>>,
    }

    #[test]
    fn a_frozen_module_is_outside_params_and_records_but_still_runs() {
        let dev = Default::default();
        let m = Head::<B> {
            trained: LinearConfig::new(3, 2).init(&dev),
            frozen: Frozen::new(LinearConfig::new(3, 4).init(&dev).no_grad()),
        };
        assert_eq!(Module::num_params(&m), 3 * 2 + 2);
        let x = Tensor::<B, 2>::ones([1, 3], &dev);
        let y = m.frozen.forward(x.clone());
        let inner = m.valid();
        let y_inner = inner.frozen.forward(x.inner());
        y.inner().into_data().assert_eq(&y_inner.into_data(), true);
        let back = Head::<B>::from_inner(inner);
        assert_eq!(back.frozen.weight.dims(), [3, 4]);
    }
}
