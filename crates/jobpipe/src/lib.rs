//! The `jobpipe` command's library: the operations commands against a local or deployed stack (`ops`),
//! the load run (`load`), the fault-injection run (`chaos`), the benchmarks (`bench`) and the IAM
//! mutation run (`iam_mutations`). The local stack
//! itself (`jobpipe dev`, `jobpipe invoke`) is `jobpipe-emulator`'s.

pub mod bench;
pub mod capacity;
pub mod chaos;
pub mod iam_mutations;
pub mod load;
pub mod ops;
