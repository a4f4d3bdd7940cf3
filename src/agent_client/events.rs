//! `clacks events` (subscribe to the domain's event exchange with an XQuery binding) and
//! `clacks send-event` (publish through the agent's `sendEvent`).

use std::io::{Read as _, Write as _};

use anyhow::{bail, Context};
use quick_xml::events::Event as XmlEvent;
use serde_json::{json, Value};

use super::conn;
use super::rpc::{RpcClient, RpcError};
use crate::cli::{EventsArgs, SendEventArgs};

/// Namespace of Clacks event documents.
use clacks_agent::events::EVENTS_NS;

/// The XQuery that selects every event.
pub const MATCH_ALL: &str = ".";

/// The XQuery selecting events of any of `types`, in the form Clacks subscribers bind;
/// [`MATCH_ALL`] without types.
///
/// # Errors
/// A type that is not an XML name (it would break the query).
pub fn type_filter(types: &[String]) -> anyhow::Result<String> {
    if types.is_empty() {
        return Ok(MATCH_ALL.to_string());
    }
    let mut terms = Vec::new();
    for t in types {
        if !clacks_agent::events::is_ncname(t) {
            bail!("event type {t:?} is not an element name, like NodeStatus");
        }
        terms.push(format!("$e/f:{t}"));
    }
    Ok(format!(
        "declare namespace f='{EVENTS_NS}'; let $e := ./f:Event return {}",
        terms.join(" or ")
    ))
}

/// The event type: the local name of the first element inside the root; `None` when the
/// text is not such a document.
pub fn event_type(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    loop {
        match reader.read_event().ok()? {
            XmlEvent::Start(e) | XmlEvent::Empty(e) if depth == 1 => {
                return String::from_utf8(e.local_name().as_ref().to_vec()).ok();
            }
            XmlEvent::Start(_) => depth += 1,
            XmlEvent::Empty(_) if depth == 0 => return None,
            XmlEvent::End(_) => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return None;
                }
            }
            XmlEvent::Eof => return None,
            _ => {}
        }
    }
}

/// The document without a leading byte order mark, whitespace and `<?xml ...?>`
/// declaration (`sendEvent` wants none: the agent writes its own), trimmed.
pub fn strip_declaration(text: &str) -> &str {
    clacks_agent::events::strip_declaration(text)
}

/// `clacks events`.
///
/// # Errors
/// Connection failures, a filter the broker refuses, a session that fails.
pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let target = conn::resolve(&args.conn)?;
    let filter = match args.filter {
        Some(f) => f,
        None => type_filter(&args.types)?,
    };
    if args.count == Some(0) {
        return Ok(());
    }
    let connection = conn::open(&target).await?;
    let session = connection.session_unique().await?;
    let exchange = clacks_agent::names::events_exchange(&target.domain).to_string();
    let mut subscription = clacks_agent::service::listen_events(&session, &target.domain, &filter)
        .await
        .with_context(|| format!("cannot subscribe to the events of exchange {exchange:?}"))?;
    eprintln!("subscribed to events on {exchange} (filter: {filter})");
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    // One Ctrl-C listener for the whole run, so a signal between two events is not lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome: anyhow::Result<()> = loop {
        let delivery = tokio::select! {
            d = subscription.next() => d,
            _ = &mut ctrl_c => break Ok(()),
        };
        let delivery = match delivery {
            Ok(Some(d)) => d,
            Ok(None) => break Err(anyhow::anyhow!("the subscription ended")),
            Err(e) => break Err(e.into()),
        };
        let xml = String::from_utf8_lossy(&delivery.body);
        let text = xml.trim();
        let printed = if args.json {
            let kind = event_type(strip_declaration(text)).map_or(Value::Null, Value::String);
            writeln!(stdout, "{}", json!({"type": kind, "xml": text}))
        } else {
            writeln!(stdout, "{text}\n")
        };
        // A closed stdout (`clacks events | head`) ends the run quietly.
        if printed.and_then(|()| stdout.flush()).is_err() {
            break Ok(());
        }
        // Not waiting for the completion: the broker learns it with the next command.
        if let Err(e) = subscription.accept(&delivery).await {
            break Err(e.into());
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break Ok(());
        }
    };
    let _ = connection.close().await;
    outcome
}

/// `clacks send-event`.
///
/// # Errors
/// An unreadable file, a connection failure, or the agent refusing the event.
pub async fn send_event(args: SendEventArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the event from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let xml = strip_declaration(&text);
    if xml.is_empty() {
        bail!("no event XML in {}", args.file.display());
    }
    let target = conn::resolve(&args.conn)?;
    let mut client = RpcClient::connect(&target, args.conn.timeout).await?;
    let outcome = client.call("sendEvent", json!([xml])).await;
    client.close().await;
    match outcome {
        Ok(_) => {
            let kind = event_type(xml).unwrap_or_else(|| "the".to_string());
            super::write_stdout(&format!("sent {kind} event\n"))
        }
        Err(RpcError::Failed { message, .. }) => bail!("the event was refused: {message}"),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_from_types() {
        assert_eq!(type_filter(&[]).expect("all"), ".");
        assert_eq!(
            type_filter(&["NodeStatus".into(), "NodeLeave".into()]).expect("two"),
            "declare namespace f='http://www.gonicus.de/Events'; let $e := ./f:Event \
             return $e/f:NodeStatus or $e/f:NodeLeave"
        );
        assert!(type_filter(&["a' or '1".into()]).is_err());
        assert!(type_filter(&["".into()]).is_err());
    }

    #[test]
    fn the_type_is_the_child_of_the_root() {
        let xml = "<?xml version='1.0'?>\n<Event xmlns=\"http://www.gonicus.de/Events\">\
                   <NodeStatus><Id>a</Id></NodeStatus></Event>";
        assert_eq!(event_type(xml).as_deref(), Some("NodeStatus"));
        assert_eq!(
            event_type("<e:Event xmlns:e='x'><e:NodeLeave/></e:Event>").as_deref(),
            Some("NodeLeave")
        );
        assert_eq!(event_type("<Event/>"), None);
        assert_eq!(event_type("<Event></Event>"), None);
        assert_eq!(event_type("not xml"), None);
    }

    #[test]
    fn declarations_are_stripped() {
        assert_eq!(
            strip_declaration("\u{feff} <?xml version='1.0' encoding='utf-8'?>\n<Event/>\n"),
            "<Event/>"
        );
        assert_eq!(strip_declaration("<Event/>"), "<Event/>");
        assert_eq!(
            strip_declaration("<?xml-stylesheet x?><E/>"),
            "<?xml-stylesheet x?><E/>"
        );
    }
}
