//! Errors from AWS calls, classified by whether retrying can help.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// Whether a failed operation may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retryability {
    /// Throttling, timeouts, 5xx, network: the same call can succeed later.
    Retryable,
    /// Validation, missing resources, permissions: retrying repeats the failure.
    Permanent,
}

/// The `code` of an error in data read back rather than in a call (`AwsError::corrupt`).
pub const CORRUPT_DATA: &str = "CorruptData";

/// An AWS call (DynamoDB, SQS, S3, API Gateway) that failed, or data it returned that cannot be read
/// (`corrupt`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({code}): {message}")]
pub struct AwsError {
    pub operation: String,
    pub code: String,
    pub message: String,
    pub retryability: Retryability,
}

impl AwsError {
    pub fn is_retryable(&self) -> bool {
        self.retryability == Retryability::Retryable
    }

    /// An error found in data we read back (a corrupt item, say): retrying will not fix it.
    pub fn corrupt(operation: impl Into<String>, message: impl Into<String>) -> Self {
        AwsError {
            operation: operation.into(),
            code: CORRUPT_DATA.into(),
            message: message.into(),
            retryability: Retryability::Permanent,
        }
    }

    /// Classifies any smithy SDK error: transport failures, timeouts, throttling and 5xx are retryable.
    pub fn from_sdk<E>(operation: impl Into<String>, err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let operation = operation.into();
        match &err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => AwsError {
                operation,
                code: "Transport".into(),
                message: format!("{}", DisplayChain(&err)),
                retryability: Retryability::Retryable,
            },
            SdkError::ResponseError(_) => AwsError {
                operation,
                code: "BadResponse".into(),
                message: format!("{}", DisplayChain(&err)),
                retryability: Retryability::Retryable,
            },
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("Unknown").to_string();
                let message = service.err().message().unwrap_or("").to_string();
                let server_fault = service.raw().status().is_server_error();
                let retryability = if is_retryable_code(&code) || server_fault {
                    Retryability::Retryable
                } else {
                    Retryability::Permanent
                };
                AwsError { operation, code, message, retryability }
            }
            _ => AwsError {
                operation,
                code: "Sdk".into(),
                message: format!("{}", DisplayChain(&err)),
                retryability: Retryability::Permanent,
            },
        }
    }
}

fn is_retryable_code(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "ThrottledException"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "SlowDown"
            | "InternalServerError"
            | "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "TransactionConflictException"
            | "KMS.ThrottlingException"
    )
}

/// Prints an error followed by its sources, so one log line explains the whole failure.
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
