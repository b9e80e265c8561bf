//! The engine a task runs on, behind one trait; Docker (bollard) is the implementation.

pub mod docker;
pub mod engine;
