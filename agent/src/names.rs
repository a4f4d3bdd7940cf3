//! Names the agent derives from the domain `D`, a node id `N` and a command target `T`.

/// The domain when none is configured.
pub const DEFAULT_DOMAIN: &str = "org.clacks";

/// The routing key every event is published with.
pub const EVENT_KEY: &str = "event";

/// The queue every agent serving `target` consumes from, in turns.
pub fn shared_queue(domain: &str, target: &str) -> String {
    format!("{domain}.command.{target}")
}

/// The queue only `node` consumes from for `target`.
pub fn private_queue(domain: &str, target: &str, node: &str) -> String {
    format!("{domain}.command.{target}.{node}")
}

/// The xml exchange events go to: the bare domain.
pub fn events_exchange(domain: &str) -> &str {
    domain
}

/// Whether `domain` is a plain-ASCII reverse-DNS name (`net.example`).
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The topic an ACL check of a call uses: the arrival queue and the method, with the
/// queue normalised to the shared queue of the command's target (so a call is judged the
/// same whichever queue it arrived on).
pub fn command_topic(domain: &str, target: &str, method: &str) -> String {
    format!("{}.{method}", shared_queue(domain, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_domain() {
        assert_eq!(
            shared_queue("org.clacks", "core"),
            "org.clacks.command.core"
        );
        assert_eq!(
            private_queue("net.example", "goto", "node1"),
            "net.example.command.goto.node1"
        );
        assert_eq!(events_exchange("org.clacks"), "org.clacks");
        assert_eq!(
            command_topic("org.clacks", "core", "shutdown"),
            "org.clacks.command.core.shutdown"
        );
        assert!(valid_domain("org.clacks") && valid_domain("net.example-1"));
        for bad in ["", "org..clacks", "org.clacks.", "orgé.x", "a b"] {
            assert!(!valid_domain(bad), "{bad}");
        }
    }
}
