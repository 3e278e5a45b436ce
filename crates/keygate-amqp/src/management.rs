//! A small client of RabbitMQ's management HTTP API: the calls keygate needs and no more.
//!
//! Every name goes into the path percent-encoded, whatever the slug rules already allow, so no
//! name can ever address another resource. Deletes treat 404 as done: every call is safe to
//! repeat, which is what makes feed operations idempotent and retries harmless.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{AmqpConfig, Operator, Permissions};
use crate::error::AmqpError;

/// The hashing RabbitMQ applies to the `password_hash` keygate sends.
const HASHING: &str = "rabbit_password_hashing_sha256";
/// The tag keygate puts on the users it makes, so the drift check and a re-provision can tell
/// them from users made by hand.
pub(crate) const USER_TAG: &str = "keygate";
/// Vhost descriptions keygate writes start with this, then the client id.
pub(crate) const VHOST_MARK: &str = "keygate feed of client ";

/// Tries of one call the broker answers with a 5xx.
const SERVER_ERROR_ATTEMPTS: u64 = 3;

/// A broker user as listed.
#[derive(Clone, Debug, Deserialize)]
pub struct BrokerUser {
    pub name: String,
    #[serde(default, deserialize_with = "text")]
    pub password_hash: String,
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
}

/// A vhost as listed.
#[derive(Clone, Debug, Deserialize)]
pub struct BrokerVhost {
    pub name: String,
    #[serde(default, deserialize_with = "text")]
    pub description: String,
}

/// Permissions of a user in a vhost as listed.
#[derive(Clone, Debug, Deserialize)]
pub struct BrokerPermission {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// A string the broker may send as `null` (a vhost listed while another client creates it).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Tags come as a list (3.9+) or a comma-separated string (older brokers).
fn tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => s
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    })
}

fn seg(name: &str) -> String {
    utf8_percent_encode(name, NON_ALPHANUMERIC).to_string()
}

/// The management API of one broker (or any node of a cluster).
#[derive(Clone, Debug)]
pub struct Management {
    http: reqwest::Client,
    base: String,
    operator: Operator,
}

impl Management {
    /// # Errors
    /// [`AmqpError::BrokerUnreachable`] when the HTTP client cannot be built.
    pub fn new(config: &AmqpConfig) -> Result<Management, AmqpError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // The management API is on the operator's network; an HTTP_PROXY meant for the
            // outside world must not see the operator's credentials.
            .no_proxy()
            .build()
            .map_err(|e| AmqpError::BrokerUnreachable {
                url: config.management_url.clone(),
                reason: e.to_string(),
            })?;
        Ok(Management {
            http,
            base: config.management_url.clone(),
            operator: config.operator.clone(),
        })
    }

    /// The management API's address, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        step: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<reqwest::Response>, AmqpError> {
        let url = format!("{}/api/{path}", self.base);
        // RabbitMQ answers 500 when two operations on one vhost cross (a node granting while
        // another deletes); every call here is idempotent, so a short retry is safe.
        let mut attempt = 0;
        let response = loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .basic_auth(&self.operator.user, Some(&self.operator.password));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| AmqpError::BrokerUnreachable {
                    url: self.base.clone(),
                    // Without the URL: reqwest's text would repeat it, never the credentials.
                    reason: e.without_url().to_string(),
                })?;
            attempt += 1;
            if !response.status().is_server_error() || attempt >= SERVER_ERROR_ATTEMPTS {
                break response;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
        };
        let status = response.status();
        if status.is_success() {
            return Ok(Some(response));
        }
        if status == StatusCode::NOT_FOUND && (method == Method::GET || method == Method::DELETE) {
            return Ok(None);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(AmqpError::OperatorRefused(status.as_u16()));
        }
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(text);
        Err(AmqpError::Broker {
            step: step.to_owned(),
            status: status.as_u16(),
            message: message.chars().take(300).collect(),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
        path: &str,
    ) -> Result<Option<T>, AmqpError> {
        match self.call(step, Method::GET, path, None).await? {
            None => Ok(None),
            Some(r) => {
                let unreadable = |e: &dyn std::fmt::Display| AmqpError::Broker {
                    step: step.to_owned(),
                    status: 200,
                    message: format!("unreadable answer: {e}"),
                };
                let body = r.bytes().await.map_err(|e| unreadable(&e))?;
                // serde_json's own error names the line and column, where reqwest's says only
                // "error decoding response body".
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| unreadable(&e))
            }
        }
    }

    /// A listing, entry by entry: an entry the broker lists half-made (a vhost or user another
    /// client is creating or deleting at that moment) is skipped with a warning instead of
    /// failing the whole drift check; the next check sees it whole or gone.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
        path: &str,
    ) -> Result<Vec<T>, AmqpError> {
        let entries: Vec<Value> = self.get(step, path).await?.unwrap_or_default();
        Ok(entries
            .into_iter()
            .filter_map(|entry| match T::deserialize(entry) {
                Ok(item) => Some(item),
                Err(error) => {
                    tracing::warn!(step, %error, "broker listed an entry keygate cannot read; skipped");
                    None
                }
            })
            .collect())
    }

    /// Checks that the API answers and accepts the operator.
    ///
    /// # Errors
    /// [`AmqpError::BrokerUnreachable`], [`AmqpError::OperatorRefused`].
    pub async fn overview(&self) -> Result<(), AmqpError> {
        self.call("overview", Method::GET, "overview", None)
            .await
            .map(|_| ())
    }

    /// # Errors
    /// A broker failure.
    pub async fn vhost(&self, name: &str) -> Result<Option<BrokerVhost>, AmqpError> {
        self.get("read vhost", &format!("vhosts/{}", seg(name)))
            .await
    }

    /// # Errors
    /// A broker failure.
    pub async fn vhosts(&self) -> Result<Vec<BrokerVhost>, AmqpError> {
        self.list("list vhosts", "vhosts").await
    }

    /// Creates a vhost (or updates its description); idempotent.
    ///
    /// # Errors
    /// A broker failure.
    pub async fn put_vhost(&self, name: &str, client_id: &str) -> Result<(), AmqpError> {
        let body = json!({ "description": format!("{VHOST_MARK}{client_id}"), "tags": USER_TAG });
        self.call(
            "create vhost",
            Method::PUT,
            &format!("vhosts/{}", seg(name)),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// Deletes a vhost and everything in it; its connections are closed by the broker.
    ///
    /// # Errors
    /// A broker failure (a missing vhost is no failure).
    pub async fn delete_vhost(&self, name: &str) -> Result<(), AmqpError> {
        self.call(
            "delete vhost",
            Method::DELETE,
            &format!("vhosts/{}", seg(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// # Errors
    /// A broker failure.
    pub async fn user(&self, name: &str) -> Result<Option<BrokerUser>, AmqpError> {
        self.get("read user", &format!("users/{}", seg(name))).await
    }

    /// # Errors
    /// A broker failure.
    pub async fn users(&self) -> Result<Vec<BrokerUser>, AmqpError> {
        self.list("list users", "users").await
    }

    /// Creates a user or sets its password hash; idempotent.
    ///
    /// # Errors
    /// A broker failure.
    pub async fn put_user(&self, name: &str, password_hash: &str) -> Result<(), AmqpError> {
        let body = json!({
            "password_hash": password_hash,
            "hashing_algorithm": HASHING,
            "tags": USER_TAG,
        });
        self.call(
            "create user",
            Method::PUT,
            &format!("users/{}", seg(name)),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// # Errors
    /// A broker failure (a missing user is no failure).
    pub async fn delete_user(&self, name: &str) -> Result<(), AmqpError> {
        self.call(
            "delete user",
            Method::DELETE,
            &format!("users/{}", seg(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// # Errors
    /// A broker failure.
    pub async fn permissions(
        &self,
        vhost: &str,
        user: &str,
    ) -> Result<Option<BrokerPermission>, AmqpError> {
        self.get(
            "read permissions",
            &format!("permissions/{}/{}", seg(vhost), seg(user)),
        )
        .await
    }

    /// # Errors
    /// A broker failure.
    pub async fn put_permissions(
        &self,
        vhost: &str,
        user: &str,
        p: &Permissions,
    ) -> Result<(), AmqpError> {
        let body = json!({ "configure": p.configure, "write": p.write, "read": p.read });
        self.call(
            "grant permissions",
            Method::PUT,
            &format!("permissions/{}/{}", seg(vhost), seg(user)),
            Some(body),
        )
        .await
        .map(|_| ())
    }

    /// # Errors
    /// A broker failure (missing permissions are no failure).
    pub async fn delete_permissions(&self, vhost: &str, user: &str) -> Result<(), AmqpError> {
        self.call(
            "clear permissions",
            Method::DELETE,
            &format!("permissions/{}/{}", seg(vhost), seg(user)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Sets (`Some`) or clears (`None`) one per-vhost limit (`max-connections`, `max-queues`).
    ///
    /// # Errors
    /// A broker failure.
    pub async fn set_vhost_limit(
        &self,
        vhost: &str,
        limit: &str,
        value: Option<u32>,
    ) -> Result<(), AmqpError> {
        let path = format!("vhost-limits/{}/{}", seg(vhost), seg(limit));
        match value {
            Some(v) => self
                .call(
                    "set vhost limit",
                    Method::PUT,
                    &path,
                    Some(json!({ "value": v })),
                )
                .await
                .map(|_| ()),
            None => self
                .call("clear vhost limit", Method::DELETE, &path, None)
                .await
                .map(|_| ()),
        }
    }

    /// Closes every open connection of a user, on every node. RabbitMQ finds them through its
    /// connection tracking, not the statistics database, so a connection opened a moment ago
    /// is closed too.
    ///
    /// # Errors
    /// A broker failure.
    pub async fn close_user_connections(&self, user: &str) -> Result<(), AmqpError> {
        self.call(
            "close connections",
            Method::DELETE,
            &format!("connections/username/{}", seg(user)),
            None,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_strings_read_as_empty() {
        let vhost: BrokerVhost =
            serde_json::from_str(r#"{"name":"v","description":null}"#).unwrap();
        assert_eq!(vhost.description, "");
        let user: BrokerUser =
            serde_json::from_str(r#"{"name":"u","password_hash":null,"tags":null}"#).unwrap();
        assert_eq!(user.password_hash, "");
        assert!(user.tags.is_empty());
        let user: BrokerUser = serde_json::from_str(r#"{"name":"u","tags":"a,b"}"#).unwrap();
        assert_eq!(user.tags, ["a", "b"]);
    }
}
