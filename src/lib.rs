//! `mmrl`: few-shot adaptation of CLIP on Burn. This crate only wires the
//! workspace together: the `mmrl` binary's commands and the backend choice.

pub use mmrl_data as data;
pub use mmrl_model as model;
pub use mmrl_train as train;

pub mod backend;
pub mod cli;
pub mod data_cmd;
pub mod demo_cmd;
pub mod devices;
pub mod eval_cmd;
pub mod train_cmd;
