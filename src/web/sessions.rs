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

/// Sessions kept at most: past this the oldest goes (a bound on memory).
const MAX_SESSIONS: usize = 10_000;
/// Sessions one user keeps at most: past this that user's oldest goes, so that one
/// account cannot crowd everyone else out.
const MAX_SESSIONS_PER_USER: usize = 16;

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

    /// Starts a session for `user`: the cookie value, or `None` without a random source.
    pub fn start(&self, user: &str) -> Option<String> {
        let id = hex(&random_bytes::<24>().ok()?);
        let now = Instant::now();
        // A lifetime too long to add is as good as forever.
        let until = now
            .checked_add(self.lifetime)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(now);
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, (_, until)| *until > now);
        let oldest_of = |live: &HashMap<String, (String, Instant)>, user: Option<&str>| {
            live.iter()
                .filter(|(_, (u, _))| user.is_none_or(|user| u == user))
                .min_by_key(|(_, (_, until))| *until)
                .map(|(id, _)| id.clone())
        };
        if live.values().filter(|(u, _)| u == user).count() >= MAX_SESSIONS_PER_USER {
            if let Some(old) = oldest_of(&live, Some(user)) {
                live.remove(&old);
            }
        }
        if live.len() >= MAX_SESSIONS {
            if let Some(old) = oldest_of(&live, None) {
                live.remove(&old);
            }
        }
        live.insert(id.clone(), (user.to_string(), until));
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

/// The values of the `ClacksRPC` cookies in a `Cookie` header (a sibling site may have
/// planted one of its own beside the genuine one).
pub fn from_header(header: &str) -> impl Iterator<Item = &str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
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
    fn the_cookies_are_found_among_others() {
        let found: Vec<&str> = from_header("a=1; ClacksRPC=abc.def; b=2; ClacksRPC=x").collect();
        assert_eq!(found, ["abc.def", "x"]);
        assert_eq!(from_header("a=1").count(), 0);
    }

    #[test]
    fn one_user_cannot_crowd_out_the_others() {
        let s = Sessions::new(Some("k"), Duration::from_secs(60)).expect("sessions");
        let alice = s.start("alice").expect("cookie");
        let first = s.start("bob").expect("cookie");
        for _ in 0..MAX_SESSIONS_PER_USER {
            s.start("bob").expect("cookie");
        }
        assert_eq!(s.user(&first), None, "bob's oldest session made room");
        assert_eq!(s.user(&alice).as_deref(), Some("alice"));
        let forever = Sessions::new(None, Duration::MAX).expect("sessions");
        let cookie = forever
            .start("carol")
            .expect("a huge lifetime does not overflow");
        assert_eq!(forever.user(&cookie).as_deref(), Some("carol"));
    }
}
