//! The report: a versioned, serializable model of what was outstanding when
//! recording ended (`model`), and its renderings: the human summary (`text`),
//! folded stacks and flamegraphs (`flame`).

pub mod build;
pub mod diff;
pub mod flame;
pub mod html;
pub mod model;
pub mod origin;
pub mod outputs;
pub mod pprof;
#[cfg(test)]
pub(crate) mod sample;
pub mod select;
pub mod split;
pub mod text;

pub use model::Report;
