//! The broker ACL: rules read from a file, first match wins, anything unmatched is denied.
//!
//! ```text
//! # comment
//! group admins admin alice
//! acl allow admins all all
//! acl deny bob consume queue name=secret.*
//! acl allow all publish exchange name=amq.*
//! acl deny all all
//! ```
//! `acl allow|deny SUBJECT ACTION [OBJECT] [name=PATTERN] [queuename=PATTERN]` where SUBJECT
//! is a user, a group or `all`; ACTION one of access, create, delete, bind, publish, consume,
//! purge or `all`; OBJECT `queue`, `exchange`, `method` (a management method), `query` (a
//! management query, named by class), `link` or `all`; PATTERN a name where `*` matches any
//! run of characters. `queuename` (bind only) names the queue being bound or unbound. A line
//! ending in `\` continues on the next.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// What a user wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Look at an object (passive declare, query, bound).
    Access,
    /// Declare a new object.
    Create,
    /// Delete an object.
    Delete,
    /// Bind or unbind on an exchange.
    Bind,
    /// Send to an exchange.
    Publish,
    /// Subscribe to a queue.
    Consume,
    /// Purge a queue.
    Purge,
}

impl Action {
    const ALL: [(&'static str, Action); 7] = [
        ("access", Action::Access),
        ("create", Action::Create),
        ("delete", Action::Delete),
        ("bind", Action::Bind),
        ("publish", Action::Publish),
        ("consume", Action::Consume),
        ("purge", Action::Purge),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("?", |(n, _)| n)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of object an action is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
    /// A management method, by name (`access method name=purge`).
    Method,
    /// A management query, by class (`access query name=queue`).
    Query,
    /// A federation link (`create link`, `delete link`).
    Link,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Queue => "queue",
            ObjectKind::Exchange => "exchange",
            ObjectKind::Method => "method",
            ObjectKind::Query => "query",
            ObjectKind::Link => "link",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    All,
    /// A user name or a group name; groups are expanded when the rule is checked.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    subject: Subject,
    action: Option<Action>,
    object: Option<ObjectKind>,
    name: Option<String>,
    queue: Option<String>,
    line: usize,
}

/// A parsed rules file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    groups: HashMap<String, HashSet<String>>,
    rules: Vec<Rule>,
}

/// A line of a rules file that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The outcome of a check, with the rule that decided it (0: the default deny).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the action may go ahead.
    pub allowed: bool,
    /// Line of the deciding rule; 0 for the implicit final deny.
    pub line: usize,
}

impl FromStr for Acl {
    type Err = AclError;

    fn from_str(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut pending = String::new();
        let mut start = 0;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            if pending.is_empty() {
                start = line_no;
            }
            // `#` starts a comment at the start of a line or after a space; names may hold it.
            let raw = match raw.trim_start().starts_with('#') {
                true => "",
                false => raw.split(" #").next().unwrap_or("").trim_end(),
            };
            if let Some(head) = raw.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(raw);
            let line = std::mem::take(&mut pending);
            acl.parse_line(&line, start)?;
        }
        if !pending.is_empty() {
            acl.parse_line(&pending, start)?;
        }
        Ok(acl)
    }
}

impl Acl {
    fn parse_line(&mut self, line: &str, line_no: usize) -> Result<(), AclError> {
        let err = |reason: String| AclError {
            line: line_no,
            reason,
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => Ok(()),
            ["group", name, members @ ..] => {
                if members.is_empty() {
                    return Err(err(format!("group {name} has no members")));
                }
                self.groups
                    .entry((*name).to_string())
                    .or_default()
                    .extend(members.iter().map(|m| (*m).to_string()));
                Ok(())
            }
            ["acl", permission, subject, rest @ ..] => {
                let allow = match *permission {
                    "allow" | "allow-log" => true,
                    "deny" | "deny-log" => false,
                    other => return Err(err(format!("{other}: expected allow or deny"))),
                };
                let subject = match *subject {
                    "all" => Subject::All,
                    s => Subject::Named(s.to_string()),
                };
                let mut rest = rest.iter();
                let action = match rest.next() {
                    None => return Err(err("missing action".into())),
                    Some(&"all") => None,
                    Some(a) => Some(
                        Action::ALL
                            .iter()
                            .find(|(n, _)| n == a)
                            .map(|(_, a)| *a)
                            .ok_or_else(|| err(format!("unknown action {a}")))?,
                    ),
                };
                let mut object = None;
                let mut name = None;
                let mut queue = None;
                for word in rest {
                    if let Some(pattern) = word.strip_prefix("name=") {
                        name = Some(pattern.to_string());
                    } else if let Some(pattern) = word.strip_prefix("queuename=") {
                        queue = Some(pattern.to_string());
                    } else if word.contains('=') {
                        return Err(err(format!("unknown property in {word}")));
                    } else {
                        object = match *word {
                            "all" => None,
                            "queue" => Some(ObjectKind::Queue),
                            "exchange" => Some(ObjectKind::Exchange),
                            "method" => Some(ObjectKind::Method),
                            "query" => Some(ObjectKind::Query),
                            "link" => Some(ObjectKind::Link),
                            o => return Err(err(format!("unknown object {o}"))),
                        };
                    }
                }
                self.rules.push(Rule {
                    allow,
                    subject,
                    action,
                    object,
                    name,
                    queue,
                    line: line_no,
                });
                Ok(())
            }
            ["acl", ..] => Err(err("expected acl allow|deny SUBJECT ACTION ...".into())),
            [word, ..] => Err(err(format!("{word}: expected acl or group"))),
        }
    }

    /// Whether `user` (any of its names: the stamped form and `user@REALM`) may do `action`
    /// on the object `kind`/`name`.
    pub fn check(&self, users: &[&str], action: Action, kind: ObjectKind, name: &str) -> Decision {
        self.check_bind(users, action, kind, name, None)
    }

    /// [`Acl::check`] for an action that also involves a queue (bind, unbind): rules with
    /// `queuename=` match only when that queue matches.
    pub fn check_bind(
        &self,
        users: &[&str],
        action: Action,
        kind: ObjectKind,
        name: &str,
        queue: Option<&str>,
    ) -> Decision {
        for rule in &self.rules {
            let subject_matches = match &rule.subject {
                Subject::All => true,
                Subject::Named(s) => {
                    users.contains(&s.as_str())
                        || self
                            .groups
                            .get(s)
                            .is_some_and(|members| users.iter().any(|u| members.contains(*u)))
                }
            };
            if subject_matches
                && rule.action.is_none_or(|a| a == action)
                && rule.object.is_none_or(|o| o == kind)
                && rule.name.as_deref().is_none_or(|p| glob_matches(p, name))
                && rule
                    .queue
                    .as_deref()
                    .is_none_or(|p| queue.is_some_and(|q| glob_matches(p, q)))
            {
                return Decision {
                    allowed: rule.allow,
                    line: rule.line,
                };
            }
        }
        Decision {
            allowed: false,
            line: 0,
        }
    }

    /// Number of rules (for the reload log line).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the file had no rules (everything is then denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// `*` matches any run of characters, everything else itself.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == name;
    };
    if parts.len() == 1 {
        return pattern == name;
    }
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = "\
# operators may do anything
group ops admin carol
acl allow ops all all
acl deny bob consume queue name=secret*
acl allow all consume queue
acl allow all publish exchange name=amq.* \\
    # continued
acl deny-log all all
";

    #[test]
    fn first_match_wins_and_default_deny() {
        let acl: Acl = RULES.parse().expect("parse");
        let check = |u: &str, a, k, n: &str| acl.check(&[u], a, k, n).allowed;
        assert!(check("carol", Action::Purge, ObjectKind::Queue, "x"));
        assert!(!check(
            "bob",
            Action::Consume,
            ObjectKind::Queue,
            "secret.q"
        ));
        assert!(check(
            "alice",
            Action::Consume,
            ObjectKind::Queue,
            "secret.q"
        ));
        assert!(check("bob", Action::Consume, ObjectKind::Queue, "public"));
        assert!(check(
            "bob",
            Action::Publish,
            ObjectKind::Exchange,
            "amq.topic"
        ));
        assert!(!check(
            "bob",
            Action::Publish,
            ObjectKind::Exchange,
            "other"
        ));
        assert!(!check("bob", Action::Create, ObjectKind::Queue, "q"));
        let d = acl.check(&["bob"], Action::Consume, ObjectKind::Queue, "secret.q");
        assert_eq!(d.line, 4);
        // With no rules at all, nothing is allowed.
        let empty = Acl::default();
        assert!(
            !empty
                .check(&["admin"], Action::Access, ObjectKind::Queue, "q")
                .allowed
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let e = "acl allow all all\nacl maybe bob all\n"
            .parse::<Acl>()
            .expect_err("bad");
        assert_eq!(e.line, 2);
        assert!("acl allow bob frobnicate".parse::<Acl>().is_err());
        assert!("acl allow bob consume queue colour=red"
            .parse::<Acl>()
            .is_err());
        assert!("group lonely".parse::<Acl>().is_err());
        let e = "acl allow".parse::<Acl>().expect_err("no subject");
        assert!(e.reason.contains("SUBJECT"), "{e}");
        assert!("permit all".parse::<Acl>().is_err());
    }

    #[test]
    fn queuename_guards_binds_and_hash_in_names_is_no_comment() {
        let acl: Acl = "acl deny all bind exchange queuename=secret*\n\
                        acl allow all all name=q#1 # a comment\n"
            .parse()
            .expect("parse");
        let bind = |q| acl.check_bind(&["bob"], Action::Bind, ObjectKind::Exchange, "q#1", q);
        assert!(!bind(Some("secret.plans")).allowed);
        assert!(bind(Some("public")).allowed);
        assert!(
            acl.check(&["bob"], Action::Consume, ObjectKind::Queue, "q#1")
                .allowed
        );
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*", "abc"));
        assert!(glob_matches("*c", "abc"));
        assert!(glob_matches("a*c*e", "abcde"));
        assert!(!glob_matches("a*c*e", "abcd"));
        assert!(!glob_matches("ab*ba", "aba"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }
}
