//! The NATS engine: subjects and inboxes are NATS's own; "no responders" comes from the server.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, PublishErrorKind, Request, RequestErrorKind, StatusCode};
use futures_util::StreamExt;

use crate::engine::{Answers, Engine, EngineError, InPlace, Msg, Subscription};
use crate::ClusterError;

#[derive(Clone)]
pub(crate) struct Nats {
    client: async_nats::Client,
}

impl Nats {
    /// Starts connecting to `url` (`nats://[USER:PASSWORD@]HOST:PORT`), in the background and
    /// again whenever the connection is lost; `connected` is told each time it is (re)made or
    /// lost.
    pub async fn connect(url: &str, connected: Arc<dyn Fn(bool) + Send + Sync>) -> Result<Nats, ClusterError> {
        let options = async_nats::ConnectOptions::new()
            .name("fedbroker")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                match event {
                    async_nats::Event::Connected => connected(true),
                    async_nats::Event::Disconnected => connected(false),
                    _ => {}
                }
                async move { tracing::info!("cluster engine: {event}") }
            });
        // Credentials go to the client apart from the address, so that no log line (the
        // client's own debug lines print the address it dials) ever shows them.
        let (address, credentials) = crate::split_credentials(url);
        let options = match credentials {
            Some((user, pass)) => options.user_and_password(user, pass),
            None => options,
        };
        let client = options
            .connect(address.as_str())
            .await
            .map_err(|e| ClusterError(format!("{address}: {e}")))?;
        Ok(Nats { client })
    }
}

fn headers(msg: &Msg) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &msg.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    headers
}

fn from_nats(m: async_nats::Message) -> Msg {
    Msg {
        headers: m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
            .collect(),
        payload: m.payload,
        reply: m.reply.map(|r| r.to_string()),
    }
}

impl Engine for Nats {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn publish(&self, subject: String, msg: Msg) -> Result<(), EngineError> {
        let headers = headers(&msg);
        let sent = match msg.reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(subject, reply, headers, msg.payload)
                    .await
            }
            None => self.client.publish_with_headers(subject, headers, msg.payload).await,
        };
        sent.map_err(|e| match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                EngineError::TooLarge(self.client.try_server_info().map_or(0, |i| i.max_payload))
            }
            _ => EngineError::Unavailable(e.to_string()),
        })
    }

    async fn subscribe(&self, subject: String) -> Result<(Subscription, InPlace), EngineError> {
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        // In place for anything published after it on this connection.
        Ok((Box::pin(sub.map(from_nats)), Box::pin(std::future::ready(()))))
    }

    async fn inbox(&self) -> Result<(String, Answers), EngineError> {
        let name = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(name.clone())
            .await
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let answers = sub.map(|m| match m.status {
            Some(StatusCode::NO_RESPONDERS) => Err(EngineError::NoResponders),
            _ => Ok(from_nats(m)),
        });
        Ok((name, Box::pin(answers)))
    }

    /// The client's own requests: one subscription for all of them, rather than one each.
    async fn request(&self, subject: String, msg: Msg, timeout: Duration) -> Result<Msg, EngineError> {
        let req = Request::new()
            .payload(msg.payload.clone())
            .headers(headers(&msg))
            .timeout(Some(timeout));
        match self.client.send_request(subject, req).await {
            Ok(m) => Ok(from_nats(m)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => EngineError::NoResponders,
                // nats-server's max_payload (1 MiB by default).
                RequestErrorKind::MaxPayloadExceeded => {
                    EngineError::TooLarge(self.client.try_server_info().map_or(0, |i| i.max_payload))
                }
                _ => EngineError::Unavailable(e.to_string()),
            }),
        }
    }
}
