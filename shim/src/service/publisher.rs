//! Publishing events to containerd: `Events.Forward` over containerd's
//! ttrpc socket, reconnecting and retrying a few times on failure.

use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::{Client, EventsClient};
use containerd_shim::protos::ttrpc::context;

use super::events::timestamp;

const ATTEMPTS: u32 = 5;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A connection (made on demand) to containerd's ttrpc event service.
pub struct Publisher {
    address: String,
    namespace: String,
    client: Option<EventsClient>,
}

impl Publisher {
    /// `address` is containerd's ttrpc socket (`TTRPC_ADDRESS`), a path or a `unix://` URL.
    pub fn new(address: &str, namespace: &str) -> Publisher {
        let address = if address.contains("://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        Publisher {
            address,
            namespace: namespace.to_string(),
            client: None,
        }
    }

    /// Sends one event; on failure reconnects and retries, then logs and drops it.
    pub async fn publish(&mut self, topic: &str, type_url: &str, value: Vec<u8>) {
        let req = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(timestamp(std::time::SystemTime::now())).into(),
                namespace: self.namespace.clone(),
                topic: topic.to_string(),
                event: Some(Any {
                    type_url: type_url.to_string(),
                    value,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        for attempt in 0..ATTEMPTS {
            if self.client.is_none() {
                match Client::connect(&self.address).await {
                    Ok(c) => self.client = Some(EventsClient::new(c)),
                    Err(e) => {
                        tracing::warn!("cannot connect to containerd at {}: {e}", self.address)
                    }
                }
            }
            if let Some(client) = &self.client {
                let ctx = context::with_timeout(TIMEOUT.as_nanos() as i64);
                match client.forward(ctx, &req).await {
                    Ok(_) => {
                        tracing::debug!(topic, "published");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(topic, "cannot publish event: {e}");
                        self.client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        tracing::error!(topic, "event dropped after {ATTEMPTS} attempts");
    }
}
