//! Update expressions written with `attr` names: an `Update` collects one `UpdateItem`'s `SET` and
//! `REMOVE` clauses and the values they bind, and holds the shapes transitions share (finishing a job,
//! recording an error) once.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use super::attr;
use super::item::{n, s};
use crate::clock::Millis;
use crate::job::{ErrorInfo, JobStatus};

/// One `UpdateItem` of a job: its condition and bindings go on the request as they are added, its update
/// expression is assembled when it is sent.
pub(super) struct Update {
    request: UpdateItemFluentBuilder,
    set: Vec<String>,
    remove: Vec<&'static str>,
}

impl Update {
    pub fn new(request: UpdateItemFluentBuilder) -> Self {
        Update { request, set: Vec::new(), remove: Vec::new() }
    }

    /// The write happens only if `expression` holds.
    pub fn condition(mut self, expression: impl Into<String>) -> Self {
        self.request = self.request.condition_expression(expression);
        self
    }

    /// Binds `#placeholder` to an attribute name (DynamoDB reserves some names, such as `status`).
    pub fn name(mut self, placeholder: &str, name: &str) -> Self {
        self.request = self.request.expression_attribute_names(placeholder, name);
        self
    }

    /// Binds `:placeholder` to a value.
    pub fn value(mut self, placeholder: &str, value: AttributeValue) -> Self {
        self.request = self.request.expression_attribute_values(placeholder, value);
        self
    }

    /// `SET name = value`, `value` being an expression (`:now`, `if_not_exists(startedAt, :now)`).
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.set.push(format!("{name} = {value}"));
        self
    }

    pub fn remove(mut self, names: &[&'static str]) -> Self {
        self.remove.extend_from_slice(names);
        self
    }

    /// `SET #status = :processing` (and so on for every status).
    pub fn status(self, status: JobStatus) -> Self {
        let placeholder = format!(":{}", status.as_str());
        self.name("#status", attr::STATUS).set("#status", &placeholder).value(&placeholder, s(status.as_str()))
    }

    /// Records `error` in the `code` and `message` attributes: the job's error, or its last attempt's.
    pub fn record_error(self, code: &'static str, message: &'static str, error: &ErrorInfo) -> Self {
        self.set(code, ":code")
            .set(message, ":message")
            .value(":code", s(&error.code))
            .value(":message", s(&error.message))
    }

    /// Leaves the token of a finishing write that holds no lease (a cancel, a force-fail) on the job,
    /// where its own retry recognises it.
    pub fn sign(self, writer: &str) -> Self {
        self.set(attr::LEASE_TOKEN, ":writer").value(":writer", s(writer))
    }

    /// Ends the job in `status`: stamps `completedAt` and `updatedAt`, starts its TTL (`expires_at`), and
    /// removes what only an unfinished job has: its lease's expiry, its pending-dispatch check and its
    /// last attempt's error. The lease token stays, so a retried write can recognise itself.
    pub fn finish(mut self, status: JobStatus, now: Millis, expires_at: i64) -> Self {
        // The status leads the expression, before what the transition records (a result, an error).
        let recorded = std::mem::take(&mut self.set);
        let mut update = self.status(status);
        update.set.extend(recorded);
        update
            .set(attr::COMPLETED_AT, ":now")
            .set(attr::UPDATED_AT, ":now")
            .set(attr::EXPIRES_AT, ":ttl")
            .value(":now", n(now))
            .value(":ttl", n(expires_at))
            .remove(&[
                attr::LEASE_EXPIRES_AT,
                attr::LAST_ERROR_CODE,
                attr::LAST_ERROR_MESSAGE,
                attr::DISPATCH_SHARD,
                attr::DISPATCH_DUE_AT,
            ])
    }

    /// The write answers nothing: for callers that need no job back.
    pub fn returning_nothing(mut self) -> Self {
        self.request = self.request.return_values(ReturnValue::None);
        self
    }

    pub async fn send(self) -> Result<UpdateItemOutput, SdkError<UpdateItemError, HttpResponse>> {
        let expression = self.expression();
        self.request.update_expression(expression).send().await
    }

    fn expression(&self) -> String {
        let mut clauses = Vec::new();
        if !self.set.is_empty() {
            clauses.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            clauses.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        clauses.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        let config = aws_sdk_dynamodb::Config::builder().behavior_version_latest().build();
        Update::new(aws_sdk_dynamodb::Client::from_conf(config).update_item())
    }

    /// The expressions a fail and a release wrote before they shared these pieces, to the letter.
    #[test]
    fn a_failure_is_recorded_as_the_jobs_error_or_its_last_attempts() {
        let error = ErrorInfo { code: "boom".into(), message: "went wrong".into() };
        let fail = update().record_error(attr::ERROR_CODE, attr::ERROR_MESSAGE, &error).finish(JobStatus::Failed, 1, 2);
        assert_eq!(
            fail.expression(),
            "SET #status = :failed, errorCode = :code, errorMessage = :message, completedAt = :now, \
             updatedAt = :now, expiresAt = :ttl \
             REMOVE leaseExpiresAt, lastErrorCode, lastErrorMessage, dispatchShard, dispatchDueAt"
        );
        let release = update()
            .record_error(attr::LAST_ERROR_CODE, attr::LAST_ERROR_MESSAGE, &error)
            .set(attr::LEASE_EXPIRES_AT, ":released")
            .set(attr::UPDATED_AT, ":now");
        assert_eq!(
            release.expression(),
            "SET lastErrorCode = :code, lastErrorMessage = :message, leaseExpiresAt = :released, updatedAt = :now"
        );
        assert_eq!(update().remove(&[attr::DISPATCH_SHARD]).expression(), "REMOVE dispatchShard");
    }
}
