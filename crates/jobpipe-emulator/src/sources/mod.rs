//! Event sources as Lambda runs them: the SQS event source mapping (batching window, maximum
//! concurrency, partial batch responses), the DynamoDB stream mapping with its filters, and schedules.

mod filter;
mod schedule;
mod sqs;
mod stream;

pub use filter::{EventFilter, passes};
pub use schedule::{run_schedule, scheduled_event};
pub use sqs::{SqsMapping, SqsRound, sqs_record};
pub use stream::{StreamMapping, stream_record};
