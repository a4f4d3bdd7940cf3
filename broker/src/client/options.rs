//! Connection options and the broker URL syntax (`amqp://user:pass@host:port`,
//! `amqps://...` for TLS, `host:port`).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::error::ClientError;
use crate::wire::{FieldTable, Value};

/// The IANA port of AMQP over plain TCP.
pub const DEFAULT_PORT: u16 = 5672;
/// The IANA port of AMQP over TLS.
pub const DEFAULT_TLS_PORT: u16 = 5671;

/// How to speak TLS to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust; the system's roots when absent.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (for SASL EXTERNAL).
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key: Option<PathBuf>,
    /// Name to check the server certificate against; the host when absent.
    pub server_name: Option<String>,
}

/// What a [`Connection`](super::Connection) needs to reach and log in to a broker.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Host name or address of the broker.
    pub host: String,
    /// TCP port of the broker.
    pub port: u16,
    /// SASL user; with it PLAIN (or SCRAM-SHA-256) is used when offered, without it
    /// EXTERNAL when a client certificate is configured, else ANONYMOUS.
    pub username: Option<String>,
    /// SASL password for PLAIN and SCRAM.
    pub password: Option<String>,
    /// SASL mechanism to use; chosen from what the broker offers when absent (PLAIN with
    /// a user name, EXTERNAL with a client certificate, else ANONYMOUS).
    pub mechanism: Option<String>,
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<TlsOptions>,
    /// Heartbeat interval to ask for in `connection.tune-ok`, in seconds (clamped to the
    /// broker's range); `None` asks for none.
    pub heartbeat: Option<u16>,
    /// Largest frame this side accepts; the smaller of this and the broker's offer is used.
    pub max_frame_size: u16,
    /// Highest channel number this side uses; the smaller of this and the broker's is used.
    pub channel_max: u16,
    /// `connection.start-ok` client-properties (product, version, pid, and for federation
    /// links `qpid.fed_link` and `qpid.federation_tag`).
    pub client_properties: FieldTable,
    /// Limit for TCP connect plus negotiation.
    pub connect_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `host:port`, no credentials, no heartbeat, default client-properties.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            username: None,
            password: None,
            mechanism: None,
            tls: None,
            heartbeat: None,
            max_frame_size: 0xffff,
            channel_max: 0x7fff,
            client_properties: default_client_properties(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Parses `[amqp[s]://][user[:password]@]host[:port]`; user and password may be
    /// percent-encoded, an IPv6 host goes in brackets; `amqps` turns TLS on (port 5671).
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] for another scheme, an empty host or a bad port.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let (rest, tls) = match url.split_once("://") {
            Some(("amqp", rest)) => (rest, false),
            Some(("amqps", rest)) => (rest, true),
            Some(_) => return Err(bad("scheme must be amqp or amqps")),
            None => (url, false),
        };
        // A path (virtual host) is accepted and ignored, as qpidd ignores it.
        let rest = rest.split('/').next().unwrap_or_default();
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in host"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            None if tls => DEFAULT_TLS_PORT,
            None => DEFAULT_PORT,
            Some(p) => p.parse().map_err(|_| bad("port is not a number 0-65535"))?,
        };
        let mut opts = Self::new(host, port);
        if tls {
            opts.tls = Some(TlsOptions::default());
        }
        if let Some(info) = userinfo {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = percent_decode(user).ok_or_else(|| bad("bad percent-encoding in user"))?;
            if !user.is_empty() {
                opts.username = Some(user);
            }
            if let Some(p) = pass {
                opts.password =
                    Some(percent_decode(p).ok_or_else(|| bad("bad percent-encoding in password"))?);
            }
        }
        Ok(opts)
    }

    /// The same options with these credentials.
    #[must_use]
    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.to_string());
        self.password = Some(password.to_string());
        self
    }

    /// The same options asking for a heartbeat every `seconds`.
    #[must_use]
    pub fn with_heartbeat(mut self, seconds: u16) -> Self {
        self.heartbeat = Some(seconds);
        self
    }
}

impl FromStr for ConnectOptions {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, ClientError> {
        Self::parse(s)
    }
}

/// What this client says about itself in `connection.start-ok` (the keys qpid clients send).
pub fn default_client_properties() -> FieldTable {
    let mut props = FieldTable::new();
    props.insert("product", "clacks");
    props.insert("version", env!("CARGO_PKG_VERSION"));
    props.insert("platform", std::env::consts::OS);
    let process = std::env::args()
        .next()
        .and_then(|p| p.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    props.insert("qpid.client_process", process);
    // qpid clients send the pid as an integer; int32 as the C++ client does.
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    props.insert("qpid.client_pid", Value::Int32(pid));
    props
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let o = ConnectOptions::parse("amqp://guest:gu%40st@broker.example:5673").expect("url");
        assert_eq!(o.host, "broker.example");
        assert_eq!(o.port, 5673);
        assert_eq!(o.username.as_deref(), Some("guest"));
        assert_eq!(o.password.as_deref(), Some("gu@st"));
    }

    #[test]
    fn parses_short_forms() {
        let o = ConnectOptions::parse("127.0.0.1:5999").expect("url");
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 5999));
        assert!(o.username.is_none());
        let o = ConnectOptions::parse("localhost").expect("url");
        assert_eq!(o.port, DEFAULT_PORT);
        let o = ConnectOptions::parse("amqp://[::1]:1234/vhost").expect("url");
        assert_eq!((o.host.as_str(), o.port), ("::1", 1234));
        let o = ConnectOptions::parse("bob@h").expect("url");
        assert_eq!(o.username.as_deref(), Some("bob"));
        assert!(o.password.is_none());
    }

    #[test]
    fn rejects_bad_urls() {
        let o = ConnectOptions::parse("amqps://u:p@localhost").expect("url");
        assert_eq!(o.port, DEFAULT_TLS_PORT);
        assert!(o.tls.is_some());
        for url in [
            "http://h",
            "amqps://",
            "h:99999",
            "h:x",
            "",
            "amqp://:5672",
            "[::1",
        ] {
            assert!(
                matches!(
                    ConnectOptions::parse(url),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }
}
