//! One route at work: take from the source broker, transfer to the destination broker,
//! accept on the source once the destination completed the transfer.

use std::sync::Arc;

use super::{FederationSettings, RouteSource, RouteSpec, RouteStats};
use crate::client::{ClientError, Completion, Connection, Delivery, Message, SubscribeOptions};
use crate::wire::{ExchangeBind, FieldTable, QueueDeclare, SequenceSet};

/// Federation tags of both ends of a link.
#[derive(Debug, Clone)]
pub(crate) struct Tags {
    /// This broker's.
    pub local: String,
    /// The remote broker's.
    pub remote: String,
}

/// Runs a route until its link goes down; a route that fails on its own (a missing
/// source, say) is tried again after a pause.
pub(crate) async fn run(
    remote: Arc<Connection>,
    local: Arc<Connection>,
    spec: RouteSpec,
    stats: Arc<RouteStats>,
    tags: Tags,
    settings: FederationSettings,
) {
    let mut pause = settings.retry_min;
    loop {
        let (source, dest, source_tag, dest_tag) = if spec.push {
            (&local, &remote, &tags.local, &tags.remote)
        } else {
            (&remote, &local, &tags.remote, &tags.local)
        };
        match pump(source, dest, &spec, source_tag, dest_tag, &stats, settings).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(route = %spec.name, "federation route stopped: {e}");
                stats.failed(e.to_string());
            }
        }
        if remote.is_closed() || local.is_closed() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(settings.retry_max);
    }
}

/// Moves messages from `source` to `dest` until an error.
async fn pump(
    source: &Connection,
    dest: &Connection,
    spec: &RouteSpec,
    source_tag: &str,
    dest_tag: &str,
    stats: &RouteStats,
    settings: FederationSettings,
) -> Result<(), ClientError> {
    let from = source.session_unique().await?;
    let queue = match &spec.source {
        RouteSource::Queue { queue } => queue.clone(),
        RouteSource::Exchange {
            exchange,
            key,
            query,
        } => {
            // qpidd's bridge queue: it stamps the source broker into each message's trace
            // and refuses what already passed the destination broker.
            let queue = format!("qpid.bridge_queue_{}_{}", spec.name, dest_tag);
            let mut args = FieldTable::new();
            args.insert("qpid.trace.id", source_tag);
            args.insert("qpid.trace.exclude", dest_tag);
            from.declare_queue(QueueDeclare {
                queue: Some(queue.clone()),
                exclusive: true,
                auto_delete: true,
                arguments: Some(args),
                ..QueueDeclare::default()
            })
            .await?;
            // An xml exchange binds by query: `.` (everything) unless the route gives one.
            let is_xml = from
                .query_exchange(exchange)
                .await?
                .r#type
                .is_some_and(|t| t == "xml");
            let query = query.clone().or_else(|| is_xml.then(|| ".".to_string()));
            let binding = query.map(|q| {
                let mut a = FieldTable::new();
                a.insert("xquery", q);
                a
            });
            from.bind(ExchangeBind {
                queue: Some(queue.clone()),
                exchange: Some(exchange.clone()),
                binding_key: Some(key.clone()),
                arguments: binding,
            })
            .await?;
            queue
        }
    };
    let mut sub = from
        .subscribe(
            &queue,
            SubscribeOptions {
                capacity: Some(settings.window.max(1)),
                ..SubscribeOptions::default()
            },
        )
        .await?;
    let to = dest.session_unique().await?;
    // The window bounds the transfers whose completion is awaited: the source then stops
    // granting credit, so a slow destination holds messages at the source, not here.
    let (in_flight, mut completed) =
        tokio::sync::mpsc::channel::<(Completion, Delivery)>(settings.window.max(1) as usize);
    let forward = async {
        // Owned here, so that the settling side ends when this one does.
        let in_flight = in_flight;
        while let Some(d) = sub.next().await? {
            let message = onward(&d, spec.dest_key.as_deref());
            // Synced, so that the destination reports each completion without delay.
            let completion = to.transfer_sync(&spec.dest, message).await?;
            if in_flight.send((completion, d)).await.is_err() {
                break;
            }
        }
        Ok::<(), ClientError>(())
    };
    let settle = async {
        while let Some((completion, d)) = completed.recv().await {
            completion.await?;
            from.accept(SequenceSet::from_range(d.id, d.id)).await?;
            stats.moved();
        }
        Ok::<(), ClientError>(())
    };
    tokio::try_join!(forward, settle).map(drop)
}

/// The message to send on: as it arrived, with the routing key replaced when asked.
fn onward(d: &Delivery, dest_key: Option<&str>) -> Message {
    let mut delivery = d.delivery_properties.clone();
    delivery.redelivered = false;
    delivery.exchange = None;
    if let Some(key) = dest_key {
        delivery.routing_key = Some(key.to_string());
    }
    Message {
        delivery_properties: delivery,
        message_properties: d.message_properties.clone(),
        body: d.body.clone(),
    }
}
