//! The gateway's login sessions: a random id per login, kept here with its user and
//! expiry, handed to the browser in the `ClacksRPC` cookie with an HMAC over it. A forged
//! or altered cookie fails the HMAC before any lookup; an expired or logged-out one is no
//! longer in the table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie's name, as the original gateway calls it.
pub const COOKIE: &str = "ClacksRPC";

/// Sessions past this many are refused a new login until some expire: a bound on memory.
const MAX_SESSIONS: usize = 10_000;

/// The logged-in users of the gateway.
pub struct Sessions {
    secret: Vec<u8>,
    lifetime: Duration,
    live: Mutex<HashMap<String, (String, Instant)>>,
}

impl Sessions {
    /// Sessions lasting `lifetime`, signed with `secret` (a random one when `None`).
    ///
    /// # Errors
    /// The system's random source failed.
    pub fn new(secret: Option<&str>, lifetime: Duration) -> anyhow::Result<Sessions> {
        let secret = match secret {
            Some(s) if !s.is_empty() => s.as_bytes().to_vec(),
            _ => random_bytes::<32>()?.to_vec(),
        };
        Ok(Sessions {
            secret,
            lifetime,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// How long a session lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Starts a session for `user`: the cookie value, or `None` when the table is full.
    pub fn start(&self, user: &str) -> Option<String> {
        let id = hex(&random_bytes::<24>().ok()?);
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.len() >= MAX_SESSIONS {
            live.retain(|_, (_, until)| *until > now);
            if live.len() >= MAX_SESSIONS {
                return None;
            }
        }
        live.insert(id.clone(), (user.to_string(), now + self.lifetime));
        Some(format!("{id}.{}", hex(&self.mac(&id))))
    }

    /// The user of a cookie value that is genuine and current.
    pub fn user(&self, cookie: &str) -> Option<String> {
        let id = self.genuine(cookie)?;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(id) {
            Some((user, until)) if *until > Instant::now() => Some(user.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session of a cookie value; whether there was one.
    pub fn end(&self, cookie: &str) -> bool {
        let Some(id) = self.genuine(cookie) else {
            return false;
        };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .is_some()
    }

    /// The id of a cookie value whose HMAC is right.
    fn genuine<'a>(&self, cookie: &'a str) -> Option<&'a str> {
        let (id, tag) = cookie.split_once('.')?;
        let tag = unhex(tag)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(id.as_bytes());
        // Constant time: the tag must not be guessable byte by byte.
        mac.verify_slice(&tag).ok()?;
        Some(id)
    }

    fn mac(&self, id: &str) -> Vec<u8> {
        match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mut mac) => {
                mac.update(id.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length: unreachable, and an empty tag never verifies.
            Err(_) => Vec::new(),
        }
    }
}

/// The value of the `ClacksRPC` cookie in a `Cookie` header, if any.
pub fn from_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random bytes: {e}"))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_until_it_ends_or_expires() {
        let s = Sessions::new(Some("k"), Duration::from_secs(60)).expect("sessions");
        let cookie = s.start("alice").expect("cookie");
        assert_eq!(s.user(&cookie).as_deref(), Some("alice"));
        assert!(s.end(&cookie));
        assert_eq!(s.user(&cookie), None);
        let short = Sessions::new(None, Duration::ZERO).expect("sessions");
        let cookie = short.start("bob").expect("cookie");
        assert_eq!(short.user(&cookie), None, "expired at once");
    }

    #[test]
    fn forged_altered_or_foreign_cookies_are_refused() {
        let s = Sessions::new(Some("k"), Duration::from_secs(60)).expect("sessions");
        let cookie = s.start("alice").expect("cookie");
        let (id, tag) = cookie.split_once('.').expect("id.tag");
        let mut flipped = tag.to_string().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = format!("{id}.{}", String::from_utf8(flipped).expect("ascii"));
        for bad in [id, "", ".", "x.zz", "é.é", flipped.as_str()] {
            assert_eq!(s.user(bad), None, "{bad:?}");
        }
        // Another secret (another broker, or a restart with a new one) knows none of them.
        let other = Sessions::new(Some("other"), Duration::from_secs(60)).expect("sessions");
        assert_eq!(other.user(&cookie), None);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(from_header("a=1; ClacksRPC=abc.def; b=2"), Some("abc.def"));
        assert_eq!(from_header("a=1"), None);
    }
}
