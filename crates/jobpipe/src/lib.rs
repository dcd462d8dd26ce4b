//! The local stack: `jobpipe dev` runs the whole pipeline on one machine without Docker, driven by
//! template.yaml; `jobpipe invoke` runs one function once.

pub mod bedrock;
pub mod bench;
pub mod chaos;
pub mod dev;
pub mod faults;
mod font;
pub mod gateway;
pub mod invoke;
pub mod load;
pub mod ops;
pub mod resources;
pub mod runtime;
pub mod sources;
pub mod template;
