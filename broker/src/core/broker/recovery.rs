//! Rebuilding the model from what the store recovered at start.

use super::*;

impl Broker {
    /// A broker whose durable state goes through `journal`, rebuilt from what the store
    /// recovered: durable exchanges, queues, bindings and persistent messages in order.
    ///
    /// # Errors
    /// Records that do not decode.
    pub fn recover(
        journal: Arc<GroupCommit>,
        recovered: clacks_storage::Recovered,
    ) -> Result<Broker, Error> {
        let mut broker = Broker::new();
        broker.journal = Some(journal.clone());
        let log = OpLog::default();
        let mut st = broker.state.lock().unwrap_or_else(|e| e.into_inner());
        st.log = Some(log.clone());
        st.store = Some(journal);
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            Error::Internal(format!("cannot recover {what}: {e}"))
        };
        for r in recovered.exchanges {
            let mut ex = Exchange::new(&r.name, &r.kind)?;
            ex.durable = true;
            ex.auto_delete = r.auto_delete;
            ex.alternate = r.alternate;
            ex.args = decode_args(&r.args).map_err(|e| corrupt(&r.name, &e))?;
            st.exchanges.insert(r.name, ex);
        }
        for r in recovered.queues {
            let mut args = decode_args(&r.args).map_err(|e| corrupt(&r.name, &e))?;
            let mut q = match Queue::new(&r.name, args.clone()) {
                Ok(q) => q,
                // Stored before `x-expires` was read (and checked): a value it now refuses
                // must not keep the broker from starting.
                Err(e) if args.get("x-expires").is_some() => {
                    tracing::warn!("queue {}: x-expires ignored: {e}", r.name);
                    args.remove("x-expires");
                    Queue::new(&r.name, args)?
                }
                Err(e) => return Err(e),
            };
            q.limit_memory(st.default_queue_max_size, &st.budget.clone());
            q.durable = true;
            q.auto_delete = r.auto_delete;
            q.alternate = r.alternate;
            q.log = Some(log.clone());
            st.queues.insert(r.name, q);
        }
        for b in recovered.bindings {
            let args = decode_args(&b.args).map_err(|e| corrupt(&b.queue, &e))?;
            if let Some(ex) = st.exchanges.get_mut(&b.exchange) {
                // A binding this broker can no longer use (an xml query the engine now
                // refuses) must not keep the broker from starting.
                if let Err(e) = ex.bind(&b.queue, &b.key, &args) {
                    tracing::warn!(
                        "binding of queue {} to exchange {} with key {:?} not recovered: {e}",
                        b.queue,
                        b.exchange,
                        b.key
                    );
                }
            }
        }
        for b in recovered.exchange_bindings {
            let args = decode_args(&b.args).map_err(|e| corrupt(&b.source, &e))?;
            let bound = st.exchange_mut(&b.destination).map(drop).and_then(|()| {
                st.exchange_mut(&b.source)?
                    .bind_exchange(&b.destination, &b.key, &args)
                    .map(drop)
            });
            if let Err(e) = bound {
                tracing::warn!(
                    "binding of exchange {} to exchange {} with key {:?} not recovered: {e}",
                    b.destination,
                    b.source,
                    b.key
                );
                // Left behind, it could come back to life with a namesake exchange.
                st.record(StoreOp::DeleteExchangeBinding {
                    source: b.source,
                    destination: b.destination,
                    key: b.key,
                });
            }
        }
        let decoded = decode_stored_messages(&recovered.messages);
        for (m, msg) in recovered.messages.iter().zip(decoded) {
            let msg = msg.map_err(|e| corrupt(&m.queue, &e))?;
            if let Some(q) = st.queues.get_mut(&*m.queue) {
                q.restore(m.seq, Arc::new(msg), m.delivered);
            }
        }
        drop(st);
        broker.dtx_restore(recovered.prepared, std::time::Instant::now());
        Ok(broker)
    }
}

/// Decodes stored messages on every core: with a million messages in the store, decoding is
/// a good part of the time to start.
fn decode_stored_messages(
    stored: &[clacks_storage::StoredMessage],
) -> Vec<Result<Message, crate::wire::DecodeError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || stored.len() < 10_000 {
        return stored
            .iter()
            .map(|m| Message::decode_stored(&m.data))
            .collect();
    }
    let per_thread = stored.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = stored
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|m| Message::decode_stored(&m.data))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| {
                p.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
