//! PLAIN passwords checked against an LDAP directory: bind as the service account, search
//! the user's entry, bind as that entry with the given password.

use std::time::Duration;

use ldap3::{ldap_escape, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::Deserialize;

/// Where and how to ask the directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Search base, e.g. `ou=people,dc=example,dc=com`.
    pub base: String,
    /// Search filter; `%u` stands for the (escaped) user name.
    #[serde(default = "default_filter")]
    pub filter: String,
    /// Service account DN for the search; anonymous search when absent.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// Service account password.
    #[serde(default)]
    pub bind_password: Option<String>,
    /// Upgrade `ldap://` with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// Connect and operation timeout in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_filter() -> String {
    "(uid=%u)".into()
}

fn default_timeout_ms() -> u64 {
    5000
}

/// The directory's answer about one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LdapVerdict {
    /// The password is right.
    Accepted,
    /// No such user, several entries for one name, or a wrong password.
    Rejected(String),
    /// The directory could not be asked: nobody gets in.
    Unavailable(String),
}

impl LdapConfig {
    /// Checks `user`'s `password` with the directory.
    pub async fn verify(&self, user: &str, password: &str) -> LdapVerdict {
        if password.is_empty() {
            // Some servers take an empty password as an anonymous bind that succeeds.
            return LdapVerdict::Rejected("empty password".into());
        }
        let timeout = Duration::from_millis(self.timeout_ms.max(1));
        match tokio::time::timeout(timeout * 3, self.search_then_bind(user, password, timeout))
            .await
        {
            Ok(v) => v,
            Err(_) => LdapVerdict::Unavailable("LDAP did not answer in time".into()),
        }
    }

    async fn search_then_bind(&self, user: &str, password: &str, timeout: Duration) -> LdapVerdict {
        let settings = LdapConnSettings::new()
            .set_conn_timeout(timeout)
            .set_starttls(self.starttls);
        let (conn, mut ldap) = match LdapConnAsync::with_settings(settings, &self.url).await {
            Ok(c) => c,
            Err(e) => return LdapVerdict::Unavailable(format!("cannot reach {}: {e}", self.url)),
        };
        ldap3::drive!(conn);
        ldap.with_timeout(timeout);
        let verdict = async {
            if let Some(dn) = &self.bind_dn {
                let pw = self.bind_password.as_deref().unwrap_or("");
                match ldap.simple_bind(dn, pw).await {
                    Ok(r) if r.rc == 0 => {}
                    Ok(r) => {
                        return LdapVerdict::Unavailable(format!(
                            "service bind as {dn} refused (rc {})",
                            r.rc
                        ))
                    }
                    Err(e) => return LdapVerdict::Unavailable(format!("service bind: {e}")),
                }
            }
            let filter = self.filter.replace("%u", &ldap_escape(user));
            let entries = match ldap
                .search(&self.base, Scope::Subtree, &filter, vec!["1.1"])
                .await
                .and_then(|r| r.success())
            {
                Ok((entries, _)) => entries,
                Err(e) => return LdapVerdict::Unavailable(format!("search {filter}: {e}")),
            };
            let dn = match entries.as_slice() {
                [one] => SearchEntry::construct(one.clone()).dn,
                [] => return LdapVerdict::Rejected(format!("no entry for {user}")),
                _ => return LdapVerdict::Rejected(format!("several entries for {user}")),
            };
            ldap.with_timeout(timeout);
            match ldap.simple_bind(&dn, password).await {
                Ok(r) if r.rc == 0 => LdapVerdict::Accepted,
                // 49: invalid credentials; others (locked, expired...) also keep the user out.
                Ok(r) => LdapVerdict::Rejected(format!("bind as {dn} refused (rc {})", r.rc)),
                Err(e) => LdapVerdict::Unavailable(format!("bind as {dn}: {e}")),
            }
        }
        .await;
        let _ = ldap.unbind().await;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable() -> LdapConfig {
        LdapConfig {
            // Nothing listens on port 1 of the loopback.
            url: "ldap://127.0.0.1:1".into(),
            base: "dc=example,dc=test".into(),
            filter: default_filter(),
            bind_dn: None,
            bind_password: None,
            starttls: false,
            timeout_ms: 2000,
        }
    }

    #[tokio::test]
    async fn empty_passwords_never_reach_the_directory() {
        let ldap = unreachable();
        assert!(matches!(
            ldap.verify("alice", "").await,
            LdapVerdict::Rejected(_)
        ));
        // The directory is asked for anything else, and its absence is an outage.
        assert!(matches!(
            ldap.verify("alice", "pw").await,
            LdapVerdict::Unavailable(_)
        ));
    }
}
