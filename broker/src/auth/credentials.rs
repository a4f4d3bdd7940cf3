//! Password verifiers kept for a local user: an argon2 hash for PLAIN and the salted
//! SCRAM-SHA-256 keys, so the password itself is never stored.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use bytes::Bytes;
use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// PBKDF2 rounds for new SCRAM verifiers (RFC 7677's minimum for SHA-256).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of one password (RFC 5802 section 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramVerifier {
    /// Random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 rounds.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

/// Everything kept about one local user's password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Argon2id hash in PHC string form.
    pub argon2: String,
    /// Verifier for SCRAM-SHA-256.
    pub scram_sha256: ScramVerifier,
}

/// A password already proven against a user's argon2 hash, kept in memory as a salted
/// SHA-256: a repeated login of that user costs one digest instead of an argon2 run (tens of
/// milliseconds and 19 MiB). Never stored; it counts only while the user's argon2 hash is
/// the one it was proven against, so a changed password drops it.
#[derive(Clone)]
pub(crate) struct ProvenPassword {
    argon2: String,
    salt: [u8; 16],
    digest: [u8; 32],
}

impl ProvenPassword {
    /// Remembers `password`, which `credentials` just accepted.
    pub(crate) fn new(credentials: &Credentials, password: &[u8]) -> Option<ProvenPassword> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).ok()?;
        Some(ProvenPassword {
            argon2: credentials.argon2.clone(),
            digest: salted_digest(&salt, password),
            salt,
        })
    }

    /// Whether `password` is the proven one and `credentials` are still those it was proven
    /// against.
    pub(crate) fn accepts(&self, credentials: &Credentials, password: &[u8]) -> bool {
        let digest = salted_digest(&self.salt, password);
        // Compared in full whatever differs first.
        let differs = digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        differs == 0 && self.argon2 == credentials.argon2
    }
}

fn salted_digest(salt: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password);
    h.finalize().into()
}

/// Why credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The system's random source failed.
    #[error("no randomness: {0}")]
    Random(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
    /// A stored record that does not decode.
    #[error("malformed credentials: {0}")]
    Malformed(String),
}

impl Credentials {
    /// Verifiers for `password`, each with a fresh salt.
    ///
    /// # Errors
    /// The random source or the hasher failed.
    pub fn from_password(password: &str) -> Result<Credentials, CredentialsError> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| CredentialsError::Random(e.to_string()))?;
        let phc_salt =
            SaltString::encode_b64(&salt).map_err(|e| CredentialsError::Hash(e.to_string()))?;
        let argon2 = Argon2::default()
            .hash_password(password.as_bytes(), &phc_salt)
            .map_err(|e| CredentialsError::Hash(e.to_string()))?
            .to_string();
        let mut scram_salt = [0u8; 16];
        getrandom::fill(&mut scram_salt).map_err(|e| CredentialsError::Random(e.to_string()))?;
        Ok(Credentials {
            argon2,
            scram_sha256: scram_verifier(password, &scram_salt, SCRAM_ITERATIONS),
        })
    }

    /// Whether `password` is the one these credentials were made from (constant-time compare
    /// inside argon2).
    pub fn verify(&self, password: &[u8]) -> bool {
        PasswordHash::new(&self.argon2)
            .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
    }

    /// The form kept in the store.
    pub fn encode(&self) -> Bytes {
        // Serializing plain strings, numbers and byte vectors cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads what [`Credentials::encode`] wrote.
    ///
    /// # Errors
    /// Bytes that are not such a record.
    pub fn decode(data: &[u8]) -> Result<Credentials, CredentialsError> {
        serde_json::from_slice(data).map_err(|e| CredentialsError::Malformed(e.to_string()))
    }
}

/// The SCRAM-SHA-256 verifier of `password` under `salt`.
pub fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
    let mut salted = Default::default();
    hash_password::<Sha256>(password.as_bytes(), iterations, salt, &mut salted);
    let (client_key, server_key) = derive_keys::<Sha256>(salted.as_slice());
    ScramVerifier {
        salt: salt.to_vec(),
        iterations,
        stored_key: Sha256::digest(client_key).to_vec(),
        server_key: server_key.to_vec(),
    }
}

/// A random password of `len` characters from an unambiguous alphabet.
///
/// # Errors
/// The random source failed.
pub fn random_password(len: usize) -> Result<String, CredentialsError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|e| CredentialsError::Random(e.to_string()))?;
    // 256 is not a multiple of the alphabet size; the bias is negligible for a password.
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_round_trip_and_wrong_password() {
        let c = Credentials::from_password("s3cret").expect("hash");
        assert!(c.verify(b"s3cret"));
        assert!(!c.verify(b"s3creT"));
        let back = Credentials::decode(&c.encode()).expect("decode");
        assert_eq!(back, c);
        assert!(back.verify(b"s3cret"));
        assert!(Credentials::decode(b"{not json").is_err());
    }

    #[test]
    fn scram_verifier_depends_on_password_and_salt() {
        let salt = [
            0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e, 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36,
            0xfa, 0x81,
        ];
        let v = scram_verifier("pencil", &salt, 4096);
        assert_eq!(v.stored_key.len(), 32);
        assert_eq!(v.server_key.len(), 32);
        // Same input, same verifier; another salt, another one.
        assert_eq!(v, scram_verifier("pencil", &salt, 4096));
        assert_ne!(
            v.stored_key,
            scram_verifier("pencil", &[0; 16], 4096).stored_key
        );
        assert_ne!(
            v.stored_key,
            scram_verifier("pencil2", &salt, 4096).stored_key
        );
    }

    #[test]
    fn random_passwords_differ() {
        let a = random_password(20).expect("random");
        assert_eq!(a.len(), 20);
        assert_ne!(a, random_password(20).expect("random"));
    }
}
