//! Methods that adapt CLIP. Each is a module holding its own parameters plus
//! the frozen [`Clip`](crate::clip::Clip), and hooks into CLIP's one
//! transformer through [`BlockHook`](crate::clip::BlockHook).

pub mod checkpoint;
pub mod coop;
pub mod coop_io;
pub mod mmrl;
pub mod mmrl_io;
