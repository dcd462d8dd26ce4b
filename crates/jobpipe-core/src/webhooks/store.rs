//! The webhooks table: per tenant (`tenant`, the partition key), its endpoints (`entry = endpoint#<id>`),
//! its signing secrets (`entry = secrets`) and its dead letters (`entry = dead#<webhookId>#<target>`, kept
//! `DEAD_LETTER_DAYS` by TTL). A tenant's entries are one Query; listing every tenant's dead letters is an
//! operator's Scan of a table that holds only these.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};

use super::signing::{ROTATION_OVERLAP_MS, SigningSecrets};
use super::{Delivery, WebhookEvent};
use crate::clock::{Millis, to_rfc3339};
use crate::error::AwsError;

/// Every attribute name of the webhooks table, written only here.
pub mod attr {
    pub const TENANT: &str = "tenant";
    pub const ENTRY: &str = "entry";
    pub const ENDPOINT_PREFIX: &str = "endpoint#";
    pub const SECRETS_ENTRY: &str = "secrets";
    pub const DEAD_PREFIX: &str = "dead#";
    pub const URL: &str = "url";
    pub const EVENTS: &str = "events";
    pub const DESCRIPTION: &str = "description";
    pub const CREATED_AT: &str = "createdAt";
    pub const CURRENT: &str = "current";
    pub const PREVIOUS: &str = "previous";
    pub const PREVIOUS_UNTIL: &str = "previousUntil";
    pub const DELIVERY: &str = "delivery";
    pub const LAST_STATUS: &str = "lastStatus";
    pub const LAST_ERROR: &str = "lastError";
    pub const DEAD_AT: &str = "deadAt";
    pub const EXPIRES_AT: &str = "expiresAt";
}

/// Endpoints one tenant may register.
pub const MAX_ENDPOINTS: usize = 10;

/// How long a dead letter is kept for an operator to redeliver.
pub const DEAD_LETTER_DAYS: i64 = 14;

/// A registered endpoint, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Endpoint {
    /// `ep_...`.
    pub endpoint_id: String,
    pub url: String,
    /// The events delivered to it.
    pub events: Vec<WebhookEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub created_at: String,
}

/// A delivery given up on, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub delivery: Delivery,
    pub last_status: Option<u16>,
    pub last_error: String,
    pub dead_at: Millis,
}

impl DeadLetter {
    /// Its id among a tenant's dead letters: `<webhookId>:<target>`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.delivery.webhook_id, self.delivery.target)
    }

    fn entry(&self) -> String {
        format!("{}{}#{}", attr::DEAD_PREFIX, self.delivery.webhook_id, self.delivery.target)
    }
}

/// A rotation not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationRefused {
    /// The previous rotation's old secret stays valid until then (epoch ms).
    Overlapping { until: Millis },
    /// Another rotation changed the secret at the same moment.
    Concurrent,
}

/// An endpoint not added: the tenant has `MAX_ENDPOINTS` already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyEndpoints;

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Clone)]
pub struct WebhookStore {
    client: Client,
    table: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

fn conditional_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(error: &E) -> bool {
    error.code() == Some("ConditionalCheckFailedException")
}

impl WebhookStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        WebhookStore { client, table: table.into() }
    }

    fn key(&self, tenant: &str, entry: &str) -> Item {
        HashMap::from([(attr::TENANT.to_string(), s(tenant)), (attr::ENTRY.to_string(), s(entry))])
    }

    /// A tenant's entries whose `entry` starts with `prefix` (every page, through the SDK's paginator).
    async fn query(&self, tenant: &str, prefix: &str) -> Result<Vec<Item>, AwsError> {
        self.client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#t = :t AND begins_with(#e, :p)")
            .expression_attribute_names("#t", attr::TENANT)
            .expression_attribute_names("#e", attr::ENTRY)
            .expression_attribute_values(":t", s(tenant))
            .expression_attribute_values(":p", s(prefix))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| AwsError::from_sdk("Query (webhooks)", e))
    }

    /// A tenant's endpoints, oldest first.
    pub async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, AwsError> {
        let items = self.query(tenant, attr::ENDPOINT_PREFIX).await?;
        // One unreadable endpoint must not cost the tenant's others (or its jobs' callbacks) their deliveries.
        let mut endpoints: Vec<(i64, Endpoint)> = items
            .iter()
            .filter_map(|item| {
                endpoint_from_item(item)
                    .inspect_err(|error| tracing::error!(%error, tenant, "skipping an unreadable webhook endpoint"))
                    .ok()
            })
            .collect();
        endpoints.sort_by_key(|(created, endpoint)| (*created, endpoint.endpoint_id.clone()));
        Ok(endpoints.into_iter().map(|(_, endpoint)| endpoint).collect())
    }

    /// Registers an endpoint (a new id each time), unless the tenant has `MAX_ENDPOINTS`.
    pub async fn add_endpoint(
        &self,
        tenant: &str,
        url: &str,
        events: &[WebhookEvent],
        description: Option<&str>,
        now: Millis,
    ) -> Result<Result<Endpoint, TooManyEndpoints>, AwsError> {
        if self.endpoints(tenant).await?.len() >= MAX_ENDPOINTS {
            return Ok(Err(TooManyEndpoints));
        }
        let endpoint_id = format!("ep_{}", uuid::Uuid::now_v7().simple());
        let mut item = self.key(tenant, &format!("{}{endpoint_id}", attr::ENDPOINT_PREFIX));
        item.insert(attr::URL.into(), s(url));
        let mut events = events.to_vec();
        events.sort();
        events.dedup();
        // A string set: DynamoDB refuses one with duplicates, hence the dedup first.
        item.insert(attr::EVENTS.into(), AttributeValue::Ss(events.iter().map(|e| e.as_str().to_string()).collect()));
        item.insert(attr::CREATED_AT.into(), AttributeValue::N(now.to_string()));
        if let Some(description) = description {
            item.insert(attr::DESCRIPTION.into(), s(description));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#e)")
            .expression_attribute_names("#e", attr::ENTRY)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("PutItem (webhook endpoint)", e))?;
        Ok(Ok(Endpoint {
            endpoint_id,
            url: url.to_string(),
            events,
            description: description.map(String::from),
            created_at: to_rfc3339(now),
        }))
    }

    /// Removes an endpoint; `false` when the tenant has none by that id.
    pub async fn remove_endpoint(&self, tenant: &str, endpoint_id: &str) -> Result<bool, AwsError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self.key(tenant, &format!("{}{endpoint_id}", attr::ENDPOINT_PREFIX))))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteItem (webhook endpoint)", e))?;
        Ok(out.attributes().is_some_and(|old| !old.is_empty()))
    }

    /// A tenant's signing secrets, if it has any yet.
    pub async fn secrets(&self, tenant: &str) -> Result<Option<SigningSecrets>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(self.key(tenant, attr::SECRETS_ENTRY)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("GetItem (webhook secrets)", e))?;
        out.item().map(secrets_from_item).transpose()
    }

    /// A tenant's signing secrets, made on first need (concurrent first needs agree on one).
    pub async fn secrets_or_create(&self, tenant: &str) -> Result<SigningSecrets, AwsError> {
        if let Some(secrets) = self.secrets(tenant).await? {
            return Ok(secrets);
        }
        let current = SigningSecrets::generate();
        let mut item = self.key(tenant, attr::SECRETS_ENTRY);
        item.insert(attr::CURRENT.into(), s(&current));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#e)")
            .expression_attribute_names("#e", attr::ENTRY)
            .send()
            .await;
        match put {
            Ok(_) => Ok(SigningSecrets { current, previous: None }),
            Err(err) if err.as_service_error().is_some_and(conditional_failed) => self
                .secrets(tenant)
                .await?
                .ok_or_else(|| AwsError::corrupt("webhook secrets", "created elsewhere, then gone")),
            Err(err) => Err(AwsError::from_sdk("PutItem (webhook secrets)", err)),
        }
    }

    /// Makes a new current secret; the one it replaces signs too for `ROTATION_OVERLAP_MS`. Refused while
    /// an earlier rotation's overlap lasts (the secret it kept valid was promised its whole overlap), and
    /// when another rotation changed the secret at the same moment.
    pub async fn rotate(&self, tenant: &str, now: Millis) -> Result<Result<SigningSecrets, RotationRefused>, AwsError> {
        let old = self.secrets_or_create(tenant).await?;
        if let Some((_, until)) = old.previous
            && until > now
        {
            return Ok(Err(RotationRefused::Overlapping { until }));
        }
        let rotated = SigningSecrets {
            current: SigningSecrets::generate(),
            previous: Some((old.current.clone(), now + ROTATION_OVERLAP_MS)),
        };
        let (previous, until) = rotated.previous.clone().expect("set above");
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self.key(tenant, attr::SECRETS_ENTRY)))
            .update_expression("SET #c = :new, #p = :old, #u = :until")
            // Two rotations at once: one wins, the other is told to try again (rather than both
            // replacing the same secret and the loser's new secret never being valid).
            .condition_expression("#c = :old")
            .expression_attribute_names("#c", attr::CURRENT)
            .expression_attribute_names("#p", attr::PREVIOUS)
            .expression_attribute_names("#u", attr::PREVIOUS_UNTIL)
            .expression_attribute_values(":new", s(&rotated.current))
            .expression_attribute_values(":old", s(&previous))
            .expression_attribute_values(":until", AttributeValue::N(until.to_string()))
            .send()
            .await;
        match update {
            Ok(_) => Ok(Ok(rotated)),
            Err(err) if err.as_service_error().is_some_and(conditional_failed) => Ok(Err(RotationRefused::Concurrent)),
            Err(err) => Err(AwsError::from_sdk("UpdateItem (rotate webhook secret)", err)),
        }
    }

    /// Keeps a delivery given up on, for an operator (the same delivery dead again replaces it).
    pub async fn put_dead_letter(&self, dead: &DeadLetter) -> Result<(), AwsError> {
        let mut item = self.key(&dead.delivery.tenant, &dead.entry());
        let delivery =
            serde_json::to_string(&dead.delivery).map_err(|e| AwsError::corrupt("dead letter", e.to_string()))?;
        item.insert(attr::DELIVERY.into(), s(delivery));
        item.insert(attr::LAST_ERROR.into(), s(&dead.last_error));
        if let Some(status) = dead.last_status {
            item.insert(attr::LAST_STATUS.into(), AttributeValue::N(status.to_string()));
        }
        item.insert(attr::DEAD_AT.into(), AttributeValue::N(dead.dead_at.to_string()));
        let expires = dead.dead_at / 1000 + DEAD_LETTER_DAYS * 86_400;
        item.insert(attr::EXPIRES_AT.into(), AttributeValue::N(expires.to_string()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("PutItem (webhook dead letter)", e))?;
        Ok(())
    }

    /// Dead letters, oldest first: one tenant's (a Query), or every tenant's (a Scan).
    pub async fn dead_letters(&self, tenant: Option<&str>) -> Result<Vec<DeadLetter>, AwsError> {
        let items = match tenant {
            Some(tenant) => self.query(tenant, attr::DEAD_PREFIX).await?,
            None => self.scan_dead_letters().await?,
        };
        let mut letters: Vec<DeadLetter> = items.iter().map(dead_letter_from_item).collect::<Result<_, _>>()?;
        letters.sort_by_key(|letter| (letter.dead_at, letter.id()));
        Ok(letters)
    }

    async fn scan_dead_letters(&self) -> Result<Vec<Item>, AwsError> {
        self.client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(#e, :p)")
            .expression_attribute_names("#e", attr::ENTRY)
            .expression_attribute_values(":p", s(attr::DEAD_PREFIX))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| AwsError::from_sdk("Scan (webhook dead letters)", e))
    }

    /// Forgets a dead letter once it is redelivered: the one listed, not a newer one under the same key
    /// (the redelivery refused again at once); `false` when it was not the one listed any more.
    pub async fn remove_dead_letter(&self, dead: &DeadLetter) -> Result<bool, AwsError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(self.key(&dead.delivery.tenant, &dead.entry())))
            .condition_expression("#at = :at")
            .expression_attribute_names("#at", attr::DEAD_AT)
            .expression_attribute_values(":at", AttributeValue::N(dead.dead_at.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(conditional_failed) => Ok(false),
            Err(err) => Err(AwsError::from_sdk("DeleteItem (webhook dead letter)", err)),
        }
    }
}

fn endpoint_from_item(item: &Item) -> Result<(i64, Endpoint), AwsError> {
    let corrupt = |what: &str| AwsError::corrupt("reading a webhook endpoint", what.to_string());
    let entry = text(item, attr::ENTRY).ok_or_else(|| corrupt("no entry"))?;
    let endpoint_id = entry.strip_prefix(attr::ENDPOINT_PREFIX).ok_or_else(|| corrupt("not an endpoint"))?.to_string();
    let created = number(item, attr::CREATED_AT).unwrap_or(0);
    let mut events: Vec<WebhookEvent> = item
        .get(attr::EVENTS)
        .and_then(|v| v.as_ss().ok())
        .map(|names| names.iter().filter_map(|name| WebhookEvent::parse(name)).collect())
        .unwrap_or_default();
    events.sort();
    Ok((
        created,
        Endpoint {
            endpoint_id,
            url: text(item, attr::URL).ok_or_else(|| corrupt("no url"))?,
            events,
            description: text(item, attr::DESCRIPTION),
            created_at: to_rfc3339(created),
        },
    ))
}

fn secrets_from_item(item: &Item) -> Result<SigningSecrets, AwsError> {
    let current =
        text(item, attr::CURRENT).ok_or_else(|| AwsError::corrupt("reading webhook secrets", "no current secret"))?;
    let previous = match (text(item, attr::PREVIOUS), number(item, attr::PREVIOUS_UNTIL)) {
        (Some(previous), Some(until)) => Some((previous, until)),
        _ => None,
    };
    Ok(SigningSecrets { current, previous })
}

fn dead_letter_from_item(item: &Item) -> Result<DeadLetter, AwsError> {
    let corrupt = |what: String| AwsError::corrupt("reading a webhook dead letter", what);
    let delivery = text(item, attr::DELIVERY).ok_or_else(|| corrupt("no delivery".into()))?;
    Ok(DeadLetter {
        delivery: serde_json::from_str(&delivery).map_err(|e| corrupt(e.to_string()))?,
        last_status: number(item, attr::LAST_STATUS).and_then(|n| u16::try_from(n).ok()),
        last_error: text(item, attr::LAST_ERROR).unwrap_or_default(),
        dead_at: number(item, attr::DEAD_AT).unwrap_or(0),
    })
}
