//! `echo`: returns its input as the result, with opt-in fault knobs for tests and benchmarks.
//!
//! `sleepMs` works for that long, `failTimes` fails retryably on that many attempts before succeeding,
//! `failPermanently` fails with a permanent error.

use std::time::Duration;

use serde_json::{Value, json};

use super::{BoxFuture, InputError, JobContext, JobKind, optional_bool, optional_uint};
use crate::job::JobError;

pub struct Echo;

const MAX_SLEEP_MS: u64 = 15 * 60 * 1000;
const MAX_FAIL_TIMES: u64 = 100;

struct Knobs {
    sleep_ms: u64,
    fail_times: u64,
    fail_permanently: bool,
}

fn knobs(input: &Value) -> Result<Knobs, InputError> {
    Ok(Knobs {
        sleep_ms: optional_uint(input, "sleepMs", MAX_SLEEP_MS)?.unwrap_or(0),
        fail_times: optional_uint(input, "failTimes", MAX_FAIL_TIMES)?.unwrap_or(0),
        fail_permanently: optional_bool(input, "failPermanently")?.unwrap_or(false),
    })
}

impl JobKind for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn validate(&self, input: &Value) -> Result<(), InputError> {
        knobs(input).map(|_| ())
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "description": "Any object; the job returns it as its result. Three optional fields are fault knobs.",
            "properties": {
                "sleepMs": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_SLEEP_MS,
                    "description": "Work this long before answering."},
                "failTimes": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_FAIL_TIMES,
                    "description": "Fail retryably on this many attempts, then succeed."},
                "failPermanently": {"type": ["boolean", "null"], "description": "Fail with a permanent error."}
            }
        })
    }

    fn run<'a>(&'a self, ctx: JobContext<'a>) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(async move {
            let knobs = knobs(ctx.input).map_err(|e| JobError::permanent("invalid_input", e.to_string()))?;
            if knobs.fail_permanently {
                return Err(JobError::permanent("echo_failed", "failPermanently was set"));
            }
            if u64::from(ctx.attempt) <= knobs.fail_times {
                return Err(JobError::retryable(
                    "echo_transient",
                    format!("attempt {} of {} set to fail by failTimes", ctx.attempt, knobs.fail_times),
                ));
            }
            if knobs.sleep_ms > 0 {
                let sleep = Duration::from_millis(knobs.sleep_ms);
                // Sleep in steps so progress moves, as a real long job's would.
                let steps = 4u32;
                for step in 1..=steps {
                    tokio::time::sleep(sleep / steps).await;
                    if step < steps {
                        ctx.progress.report((step * 100 / steps) as u8).await;
                    }
                }
            }
            Ok(ctx.input.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validates_the_knobs() {
        let check = |input: Value, expected: Result<(), &str>| {
            let got = Echo.validate(&input).map_err(|e| e.field);
            assert_eq!(got, expected.map_err(String::from), "{input}");
        };
        check(json!({}), Ok(()));
        check(json!({"anything": [1, 2], "sleepMs": 5, "failTimes": 2, "failPermanently": false}), Ok(()));
        check(json!({"sleepMs": null}), Ok(()));
        check(json!({"sleepMs": -1}), Err("input.sleepMs"));
        check(json!({"sleepMs": 1.5}), Err("input.sleepMs"));
        check(json!({"sleepMs": "5"}), Err("input.sleepMs"));
        check(json!({"sleepMs": MAX_SLEEP_MS + 1}), Err("input.sleepMs"));
        check(json!({"failTimes": 101}), Err("input.failTimes"));
        check(json!({"failPermanently": "yes"}), Err("input.failPermanently"));
    }
}
