//! The agent's ACL: a JSON file in the original `agent.acl` layout. Calls are checked as
//! `D.command.T.method` with flag `x`, `sendEvent` as `D.event.Name`; only the ACL sets
//! attached at the configured base count, and configured admins may do anything.
//!
//! ```json
//! {"roles": {"operators": [{"priority": 0, "scope": "sub",
//!                           "actions": [{"topic": "^org\\.clacks\\.command\\..*", "acls": "x"}]}]},
//!  "acl": {"org.clacks": [{"acls": [
//!     {"priority": -10, "scope": "psub", "members": ["^alice$"],
//!      "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.getMethods$", "acls": "x"}]},
//!     {"priority": 0, "members": ["^bob$"], "role": "operators"}]}]}}
//! ```

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

/// How far down from the base an ACL applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The base itself.
    One,
    /// The base and below; a `reset` cancels it.
    Sub,
    /// The base and below; nothing cancels it.
    Psub,
    /// Cancels `one` and `sub` grants met later.
    Reset,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    topic: String,
    #[serde(alias = "acl")]
    acls: String,
    #[serde(default)]
    options: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    actions: Option<Vec<RawAction>>,
    #[serde(default, alias = "rolename")]
    role: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(alias = "acl")]
    acls: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    roles: HashMap<String, Vec<RawEntry>>,
    #[serde(default)]
    acl: HashMap<String, Vec<RawGroup>>,
}

/// One action of an ACL: a topic pattern, the flags it grants, option constraints.
#[derive(Debug, Clone)]
struct Action {
    topic: Regex,
    flags: String,
    options: Vec<(String, Regex)>,
}

/// An ACL with its role references resolved into scope and actions.
#[derive(Debug, Clone)]
struct Entry {
    priority: i64,
    members: Vec<Regex>,
    grants: Vec<(Scope, Vec<Action>)>,
}

/// The rules in force.
#[derive(Debug, Clone, Default)]
pub struct AgentAcl {
    entries: Vec<Entry>,
    admins: Vec<String>,
}

/// A rules file that cannot be used, with what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AclFileError(pub String);

/// Flags an action may grant.
const FLAGS: &str = "rwcdsexom";
/// Role references followed at most this deep (longer chains are loops).
const MAX_ROLE_DEPTH: usize = 16;

/// A regex anchored at the start, as the original's `re.match`.
fn anchored(pattern: &str) -> Result<Regex, AclFileError> {
    Regex::new(&format!("^(?:{pattern})"))
        .map_err(|e| AclFileError(format!("bad regular expression {pattern:?}: {e}")))
}

impl AgentAcl {
    /// Reads a rules file's text; `base` is the one ACL set that counts (default: the
    /// domain); `admins` may do anything whatever the rules say.
    ///
    /// # Errors
    /// JSON that is not in the layout, bad regexes, bad flags or scopes, unknown roles,
    /// role loops.
    pub fn parse(text: &str, base: &str, admins: &[String]) -> Result<AgentAcl, AclFileError> {
        let raw: RawFile = serde_json::from_str(text)
            .map_err(|e| AclFileError(format!("not an ACL file: {e}")))?;
        let mut entries = Vec::new();
        for (position, entry) in raw
            .acl
            .get(base)
            .into_iter()
            .flatten()
            .flat_map(|g| &g.acls)
            .enumerate()
        {
            let members = entry
                .members
                .iter()
                .map(|m| anchored(m))
                .collect::<Result<Vec<_>, _>>()?;
            let grants = resolve(entry, &raw.roles, 0)?;
            let priority = entry.priority.unwrap_or(position as i64);
            if !(-100..=100).contains(&priority) {
                return Err(AclFileError(format!(
                    "ACL {:?}: priority {priority} outside -100..100",
                    entry.id
                )));
            }
            entries.push(Entry {
                priority,
                members,
                grants,
            });
        }
        // Lower priority first; equal priorities keep their file order.
        entries.sort_by_key(|e| e.priority);
        Ok(AgentAcl {
            entries,
            admins: admins.to_vec(),
        })
    }

    /// Only `admins` may do anything (no rules file).
    pub fn admins_only(admins: &[String]) -> AgentAcl {
        AgentAcl {
            entries: Vec::new(),
            admins: admins.to_vec(),
        }
    }

    /// Whether `user` may do `flags` on `topic` with these call `options`.
    pub fn check(
        &self,
        user: &str,
        topic: &str,
        flags: &str,
        options: &Map<String, Value>,
    ) -> bool {
        if self.admins.iter().any(|a| a == user) {
            return true;
        }
        let mut reset = false;
        for entry in &self.entries {
            if !entry.members.iter().any(|m| m.is_match(user)) {
                continue;
            }
            for (scope, actions) in &entry.grants {
                let granted = actions.iter().any(|a| {
                    a.topic.is_match(topic)
                        && flags.chars().all(|f| a.flags.contains(f))
                        && a.options.iter().all(|(key, pattern)| {
                            options
                                .get(key)
                                .is_some_and(|v| pattern.is_match(&as_text(v)))
                        })
                });
                if !granted {
                    continue;
                }
                match scope {
                    Scope::Reset => reset = true,
                    Scope::Psub => return true,
                    // Checks here are at the base itself, so `one` applies as `sub` does.
                    Scope::Sub | Scope::One if !reset => return true,
                    Scope::Sub | Scope::One => {}
                }
            }
        }
        false
    }
}

/// An option value as text for its pattern.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The scope and actions an entry grants, following role references.
fn resolve(
    entry: &RawEntry,
    roles: &HashMap<String, Vec<RawEntry>>,
    depth: usize,
) -> Result<Vec<(Scope, Vec<Action>)>, AclFileError> {
    let err = |why: String| AclFileError(format!("ACL {:?}: {why}", entry.id));
    match (&entry.role, &entry.actions) {
        (Some(_), Some(_)) => Err(err("has both a role and actions".into())),
        (None, None) => Err(err("has neither a role nor actions".into())),
        (Some(role), None) => {
            if depth >= MAX_ROLE_DEPTH {
                return Err(err(format!("role {role} refers back to itself (loop)")));
            }
            let members = roles
                .get(role)
                .ok_or_else(|| err(format!("role {role} not found")))?;
            // Role entries sort by priority descending, as the original does.
            let mut sorted: Vec<&RawEntry> = members.iter().collect();
            sorted.sort_by_key(|e| std::cmp::Reverse(e.priority.unwrap_or(0)));
            let mut out = Vec::new();
            for e in sorted {
                out.extend(resolve(e, roles, depth + 1)?);
            }
            Ok(out)
        }
        (None, Some(actions)) => {
            let scope = entry
                .scope
                .ok_or_else(|| err("has actions but no scope".into()))?;
            let actions = actions
                .iter()
                .map(|a| {
                    if let Some(bad) = a.acls.chars().find(|c| !FLAGS.contains(*c)) {
                        return Err(err(format!("flag {bad:?} is not one of {FLAGS}")));
                    }
                    Ok(Action {
                        topic: anchored(&a.topic)?,
                        flags: a.acls.clone(),
                        options: a
                            .options
                            .iter()
                            .map(|(k, v)| Ok((k.clone(), anchored(&as_text(v))?)))
                            .collect::<Result<_, AclFileError>>()?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![(scope, actions)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FILE: &str = r#"{
      "roles": {"operators": [{"id": 3, "priority": 0, "scope": "sub",
                  "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.", "acls": "x"}]}],
                "loop": [{"id": 9, "role": "loop"}]},
      "acl": {"org.clacks": [{"acls": [
          {"id": 0, "priority": -10, "scope": "psub", "members": ["^[0-9a-f]{8}$"],
           "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.(getMethods|sendEvent)$",
                        "acls": "x", "options": {}}]},
          {"id": 1, "priority": -5, "scope": "reset", "members": ["carol"],
           "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.shutdown$", "acls": "x"}]},
          {"id": 2, "priority": 0, "members": ["bob", "carol"], "rolename": "operators"},
          {"id": 4, "priority": 5, "scope": "sub", "members": ["dave"],
           "actions": [{"topic": "^org\\.clacks\\.command\\.core\\.echo$", "acls": "x",
                        "options": {"text": "^hello"}}]}
      ]}],
      "dc=elsewhere": [{"acls": [{"scope": "psub", "members": [".*"],
           "actions": [{"topic": ".*", "acls": "rwcdsex"}]}]}]}
    }"#;

    fn acl() -> AgentAcl {
        AgentAcl::parse(FILE, "org.clacks", &["admin".to_string()]).expect("parse")
    }

    fn x(acl: &AgentAcl, user: &str, method: &str) -> bool {
        acl.check(
            user,
            &format!("org.clacks.command.core.{method}"),
            "x",
            &Map::new(),
        )
    }

    #[test]
    fn members_scopes_roles_and_admins() {
        let acl = acl();
        assert!(
            x(&acl, "0123abcd", "getMethods"),
            "a client id may list methods"
        );
        assert!(!x(&acl, "0123abcd", "shutdown"));
        assert!(x(&acl, "bob", "shutdown"), "through the operators role");
        assert!(
            !x(&acl, "carol", "shutdown"),
            "the reset cancels carol's sub grant"
        );
        assert!(x(&acl, "carol", "getNodes"));
        assert!(x(&acl, "admin", "anything"), "admins override");
        assert!(!x(&acl, "mallory", "getMethods"));
        // Only the configured base counts: dc=elsewhere grants everything to everyone.
        assert!(!acl.check("mallory", "org.clacks.event.X", "x", &Map::new()));
        // Several flags need one action granting all of them.
        assert!(!acl.check("bob", "org.clacks.command.core.x", "xw", &Map::new()));
    }

    #[test]
    fn options_constrain_arguments() {
        let acl = acl();
        let opts = |text: &str| {
            let mut m = Map::new();
            m.insert("text".into(), json!(text));
            m
        };
        let topic = "org.clacks.command.core.echo";
        assert!(acl.check("dave", topic, "x", &opts("hello world")));
        assert!(!acl.check("dave", topic, "x", &opts("goodbye")));
        assert!(
            !acl.check("dave", topic, "x", &Map::new()),
            "a constrained option must be given"
        );
    }

    #[test]
    fn bad_files_are_refused_with_reasons() {
        let base = "org.clacks";
        let parse = |t: &str| AgentAcl::parse(t, base, &[]).map(|_| ()).map_err(|e| e.0);
        let with = |entry: &str| format!(r#"{{"acl": {{"org.clacks": [{{"acls": [{entry}]}}]}}}}"#);
        assert!(parse("{").is_err());
        assert!(parse(&with(
            r#"{"members": ["("], "scope": "sub", "actions": []}"#
        ))
        .unwrap_err()
        .contains("regular expression"));
        assert!(parse(&with(
            r#"{"members": [], "scope": "sub", "actions": [{"topic": ".", "acls": "xz"}]}"#
        ))
        .unwrap_err()
        .contains("flag"));
        assert!(parse(&with(r#"{"members": [], "scope": "wide", "actions": []}"#)).is_err());
        assert!(parse(&with(r#"{"members": [], "role": "nope"}"#))
            .unwrap_err()
            .contains("not found"));
        assert!(parse(&with(
            r#"{"members": [], "priority": 500, "scope": "sub", "actions": []}"#
        ))
        .unwrap_err()
        .contains("priority"));
        let looped = r#"{"roles": {"loop": [{"role": "loop"}]},
            "acl": {"org.clacks": [{"acls": [{"members": [], "role": "loop"}]}]}}"#;
        assert!(parse(looped).unwrap_err().contains("loop"));
        // With no file, only admins.
        let only = AgentAcl::admins_only(&["admin".into()]);
        assert!(x(&only, "admin", "shutdown") && !x(&only, "bob", "getMethods"));
    }
}
