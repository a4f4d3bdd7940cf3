//! The server side of one SASL exchange, on rsasl. rsasl parses each mechanism's messages
//! and runs SCRAM; the final decision on a password (argon2, LDAP) is made afterwards by the
//! [`Authenticator`](super::Authenticator), because it may need to wait on the directory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, Session, SessionError, State, Validation};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, ValidationError};

use super::credentials::Credentials;

/// Local users by name, shared with the SCRAM callback.
pub(crate) type UserTable = Arc<RwLock<HashMap<String, Credentials>>>;

/// What a finished exchange established, before the password is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// PLAIN: names and the password to check.
    Plain {
        /// Authorization id (empty when absent).
        authzid: String,
        /// Authentication id (the user name).
        authcid: String,
        /// The password.
        password: String,
    },
    /// SCRAM: the proof already matched the stored verifier of `authcid`.
    Scram {
        /// Authorization id (empty when absent).
        authzid: String,
        /// Authentication id.
        authcid: String,
    },
    /// ANONYMOUS with its trace token.
    Anonymous,
    /// EXTERNAL: the identity is the TLS client certificate's; `authzid` may ask for it.
    External {
        /// Authorization id (empty when absent).
        authzid: String,
    },
}

struct ClaimValidation;
impl Validation for ClaimValidation {
    type Value = Claim;
}

/// Hands SCRAM its verifiers and turns every finished exchange into a [`Claim`].
struct Callback {
    users: UserTable,
    realm: String,
}

impl SessionCallback for Callback {
    fn callback(
        &self,
        _session: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        if request.is::<ScramStoredPassword>() {
            let Some(name) = context.get_ref::<AuthId>() else {
                return Ok(());
            };
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            // Users are kept by the name the identity stamps (bare in our realm).
            if let Some(c) = users.get(&super::Identity::user(name, &self.realm).stamp) {
                let v = &c.scram_sha256;
                request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
                    v.iterations,
                    &v.salt,
                    &v.stored_key,
                    &v.server_key,
                ))?;
            }
        }
        Ok(())
    }

    fn validate(
        &self,
        session: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let text = |s: Option<&str>| s.unwrap_or("").to_string();
        let authzid = text(context.get_ref::<AuthzId>());
        let claim = match session.mechanism().mechanism.as_str() {
            "PLAIN" => Claim::Plain {
                authzid,
                authcid: text(context.get_ref::<AuthId>()),
                password: String::from_utf8_lossy(context.get_ref::<Password>().unwrap_or(&[]))
                    .into_owned(),
            },
            // The trace token (qpid clients send user@host) is informational only.
            "ANONYMOUS" => Claim::Anonymous,
            "EXTERNAL" => Claim::External { authzid },
            // SCRAM validates only once the client's proof matched the stored verifier.
            "SCRAM-SHA-256" => Claim::Scram {
                authzid,
                authcid: text(context.get_ref::<AuthId>()),
            },
            // Anything else proves nothing: no claim, so the exchange fails.
            _ => return Ok(()),
        };
        validate.with::<ClaimValidation, _>(|| Ok(claim))?;
        Ok(())
    }
}

/// The rsasl configuration every connection's exchange starts from.
pub(crate) fn config(users: UserTable, realm: &str) -> Result<Arc<SASLConfig>, String> {
    SASLConfig::builder()
        .with_default_mechanisms()
        .with_callback(Callback {
            users,
            realm: realm.to_string(),
        })
        .map_err(|e| e.to_string())
}

/// Where an exchange stands after a step.
#[derive(Debug)]
pub enum Step {
    /// Send this in `connection.secure` and wait for `secure-ok`.
    Challenge(Vec<u8>),
    /// The mechanism is done: judge the claim.
    Done(Claim),
    /// The exchange failed (malformed message, wrong SCRAM proof, unknown user).
    Failed(String),
}

/// Whether a SCRAM client message has the shape rsasl's parser needs (found by fuzzing:
/// it slices each attribute's first two bytes unchecked). After the client-first
/// message's channel-binding flag and its (possibly empty) authzid, every attribute is
/// `x=...`.
fn scram_attributes_well_formed(message: &[u8], client_first: bool) -> bool {
    let mut parts = message.split(|&b| b == b',');
    if client_first {
        parts.next();
        if parts
            .next()
            .is_some_and(|authzid| !authzid.is_empty() && !is_attribute(authzid))
        {
            return false;
        }
    }
    parts.all(is_attribute)
}

fn is_attribute(part: &[u8]) -> bool {
    part.len() >= 2 && part[1] == b'='
}

/// One connection's SASL exchange.
pub struct Exchange {
    session: Option<Session<ClaimValidation>>,
    /// A SCRAM success whose server-final message went out as a last challenge: the
    /// client's (empty) answer completes the exchange (RFC 4422 section 5, item 7).
    finished: Option<Claim>,
    /// SCRAM messages from the client seen so far (`None` for other mechanisms).
    scram_messages: Option<u32>,
}

impl Exchange {
    /// An exchange that failed before it began (a mechanism that is not offered).
    pub(crate) fn refused(why: String) -> (Exchange, Step) {
        let ex = Exchange {
            session: None,
            finished: None,
            scram_messages: None,
        };
        (ex, Step::Failed(why))
    }

    /// Starts `mechanism` with the client's initial response.
    pub(crate) fn start(
        config: &Arc<SASLConfig>,
        mechanism: &str,
        initial: &[u8],
    ) -> (Exchange, Step) {
        let mut ex = Exchange {
            session: None,
            finished: None,
            scram_messages: mechanism.starts_with("SCRAM-").then_some(0),
        };
        let session = Mechname::parse(mechanism.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|m| {
                SASLServer::<ClaimValidation>::new(config.clone())
                    .start_suggested(m)
                    .map_err(|e| e.to_string())
            });
        match session {
            Ok(s) => {
                ex.session = Some(s);
                let step = ex.step(initial);
                (ex, step)
            }
            Err(e) => Exchange::refused(format!("mechanism {mechanism}: {e}")),
        }
    }

    /// Feeds the client's next response.
    pub fn step(&mut self, input: &[u8]) -> Step {
        if let Some(claim) = self.finished.take() {
            return if input.is_empty() {
                Step::Done(claim)
            } else {
                Step::Failed("unexpected data after the final challenge".into())
            };
        }
        let Some(session) = self.session.as_mut() else {
            return Step::Failed("no exchange in progress".into());
        };
        if let Some(seen) = self.scram_messages.as_mut() {
            let first = *seen == 0;
            *seen += 1;
            if !scram_attributes_well_formed(input, first) {
                self.session = None;
                return Step::Failed("malformed SCRAM message".into());
            }
        }
        let mut out = Vec::new();
        // A panic in the mechanism (a parser meeting input it did not expect) fails the
        // login instead of the connection's task.
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            session.step(Some(input), &mut out)
        }));
        let Ok(stepped) = stepped else {
            self.session = None;
            return Step::Failed("malformed SASL response".into());
        };
        match stepped {
            Ok(State::Running) => Step::Challenge(out),
            Ok(State::Finished(sent)) => {
                let claim = session.validation();
                self.session = None;
                match (claim, sent) {
                    (None, _) => Step::Failed("authentication failed".into()),
                    (Some(claim), rsasl::prelude::MessageSent::Yes) => {
                        self.finished = Some(claim);
                        Step::Challenge(out)
                    }
                    (Some(claim), rsasl::prelude::MessageSent::No) => Step::Done(claim),
                }
            }
            Err(e) => {
                self.session = None;
                Step::Failed(e.to_string())
            }
        }
    }
}
