//! The `jobpipe` command's own features against the local stack: the operations commands (`ops`), the
//! fault-injection run (`chaos`) and the benchmarks' execution environment (`bench`).

use std::path::PathBuf;

mod bench;
mod capacity;
mod chaos;
mod fairness;
mod ops;
mod webhooks;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}
