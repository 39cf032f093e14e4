//! Envelope encryption for secrets at rest: AES-256-GCM with a random 96-bit nonce,
//! caller-supplied associated data (usually the row id), and a key id so keys can
//! rotate. Owns the keyring (from `CARMENTA_ENCRYPTION_KEY` or the embedded default's
//! generated key file) and the envelope format.
//!
//! Envelope: `0x01 ‖ key_id (4 bytes) ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`.
//! The key id is the first 4 bytes of SHA-256 of the key.

use std::io::Write;
use std::path::Path;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use crate::config::Secret;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

/// Errors from encryption and decryption.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The envelope is too short or has an unknown version byte.
    #[error("malformed envelope")]
    Malformed,
    /// The envelope was encrypted with a key that is not in the keyring.
    #[error("envelope encrypted with unknown key id {0}")]
    UnknownKey(String),
    /// Authentication failed: wrong key, wrong associated data, or tampering.
    #[error("decryption failed (wrong key, associated data or tampered ciphertext)")]
    Decrypt,
}

/// Why an encryption key was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No key was given.
    #[error("no encryption key")]
    Missing,
    /// The key is not base64.
    #[error("not valid base64")]
    NotBase64,
    /// The key is not 32 bytes.
    #[error("decodes to {0} bytes, expected 32 (generate one with `openssl rand -base64 32`)")]
    WrongLength(usize),
    /// The `n`th key of a list (from 1) is refused.
    #[error("encryption key #{0}: {1}")]
    Numbered(usize, Box<KeyError>),
}

/// Decodes a base64 key and checks it is 32 bytes.
pub fn decode_key(b64: &str) -> Result<[u8; 32], KeyError> {
    let bytes = B64.decode(b64.trim()).map_err(|_| KeyError::NotBase64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

/// Generates a new random key, base64-encoded.
pub fn generate_key() -> String {
    let key: [u8; 32] = rand::random();
    B64.encode(key)
}

struct Key {
    id: [u8; 4],
    cipher: Aes256Gcm,
    raw: [u8; 32],
}

/// An ordered set of keys: the first encrypts, all decrypt.
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex(&k.id)).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keyring {
    /// Builds a keyring from base64 keys; the first is the encrypting key.
    pub fn from_base64(keys: &[Secret]) -> Result<Keyring, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Missing);
        }
        let mut out = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            let numbered = |e| KeyError::Numbered(i + 1, Box::new(e));
            let raw = decode_key(k.expose()).map_err(numbered)?;
            let digest = Sha256::digest(raw);
            let id = [digest[0], digest[1], digest[2], digest[3]];
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| numbered(KeyError::WrongLength(raw.len())))?;
            out.push(Key { id, cipher, raw });
        }
        Ok(Keyring { keys: out })
    }

    /// Secrets derived for `label` (HMAC-SHA256 of the label under each key), the
    /// primary key's first: the first signs, all verify, so signatures survive a
    /// key rotation as long as the old key stays in the ring.
    pub fn derive(&self, label: &str) -> Vec<[u8; 32]> {
        use hmac::{Hmac, Mac};
        self.keys
            .iter()
            .map(|k| {
                let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&k.raw) else { return [0; 32] };
                mac.update(label.as_bytes());
                mac.finalize().into_bytes().into()
            })
            .collect()
    }

    /// The id of the encrypting key, as hex.
    pub fn primary_key_id(&self) -> String {
        hex(&self.keys[0].id)
    }

    /// Encrypts `plaintext` bound to `aad` with the primary key.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::<Aes256Gcm>::from(nonce_bytes);
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = key
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad })
            .unwrap_or_else(|_| unreachable!("AES-GCM encryption of an in-memory buffer"));
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts an envelope made by [`Keyring::encrypt`] with the same `aad`.
    pub fn decrypt(&self, envelope: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if envelope.len() < HEADER + 16 || envelope[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let id = &envelope[1..5];
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| CryptoError::UnknownKey(hex(id)))?;
        let nonce = Nonce::<Aes256Gcm>::try_from(&envelope[5..HEADER]).map_err(|_| CryptoError::Malformed)?;
        key.cipher.decrypt(&nonce, Payload { msg: &envelope[HEADER..], aad }).map_err(|_| CryptoError::Decrypt)
    }

    /// Whether an envelope was made with a key other than the primary one and
    /// should be re-encrypted.
    pub fn needs_reencrypt(&self, envelope: &[u8]) -> bool {
        envelope.len() < 5 || envelope[1..5] != self.keys[0].id
    }

    /// The envelope re-encrypted under the primary key (same `aad`), or `None` when
    /// it already is, or cannot be opened (no key of this ring made it).
    pub fn reseal(&self, envelope: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if !self.needs_reencrypt(envelope) {
            return None;
        }
        let plain = self.decrypt(envelope, aad).ok()?;
        Some(self.encrypt(&plain, aad))
    }

    /// Seals a small secret of `kind` (`totp`, `social`) belonging to `owner`; both
    /// are bound as associated data, so a sealed value cannot be moved to another row.
    pub fn seal_secret(&self, kind: &str, owner: &str, plain: &[u8]) -> Vec<u8> {
        self.encrypt(plain, secret_aad(kind, owner).as_bytes())
    }

    /// Opens a secret sealed by [`Keyring::seal_secret`] with the same kind and owner.
    pub fn open_secret(&self, kind: &str, owner: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.decrypt(sealed, secret_aad(kind, owner).as_bytes())
    }

    /// Seals an auth signing key's seed (its key id as associated data).
    pub fn seal_signing_seed(&self, kid: &str, seed: &[u8; 32]) -> Vec<u8> {
        self.encrypt(seed, kid.as_bytes())
    }

    /// Opens a seed sealed by [`Keyring::seal_signing_seed`].
    pub fn open_signing_seed(&self, kid: &str, sealed: &[u8]) -> Result<[u8; 32], CryptoError> {
        let plain = self.decrypt(sealed, kid.as_bytes())?;
        plain.as_slice().try_into().map_err(|_| CryptoError::Malformed)
    }
}

/// The associated data of a secret sealed by [`Keyring::seal_secret`].
pub fn secret_aad(kind: &str, owner: &str) -> String {
    format!("{kind}:{owner}")
}

/// Reads the key file in the data directory, creating it (mode 0600) with a fresh
/// key if it does not exist. Used only by the embedded default.
pub fn load_or_create_key_file(path: &Path) -> std::io::Result<Secret> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Secret::new(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key();
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(key.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            // Another process may have raced us: never replace a key that exists.
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&tmp);
                    Ok(Secret::new(key))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = std::fs::remove_file(&tmp);
                    Ok(Secret::new(std::fs::read_to_string(path)?.trim().to_string()))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[&str]) -> Keyring {
        Keyring::from_base64(&keys.iter().map(|k| Secret::new(*k)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn round_trip_with_aad() {
        let k = generate_key();
        let r = ring(&[&k]);
        let env = r.encrypt(b"refresh-token-123", b"row-1");
        assert!(!env.windows(7).any(|w| w == b"refresh"));
        assert_eq!(r.decrypt(&env, b"row-1").unwrap(), b"refresh-token-123");
        assert_eq!(r.decrypt(&env, b"row-2"), Err(CryptoError::Decrypt));
        let mut tampered = env.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(r.decrypt(&tampered, b"row-1"), Err(CryptoError::Decrypt));
        assert_eq!(r.decrypt(&env[..10], b"row-1"), Err(CryptoError::Malformed));
        // Two encryptions of the same text differ (random nonce).
        assert_ne!(r.encrypt(b"x", b"a"), r.encrypt(b"x", b"a"));
    }

    #[test]
    fn rotation() {
        let old = generate_key();
        let new = generate_key();
        let before = ring(&[&old]);
        let env = before.encrypt(b"secret", b"id");
        let after = ring(&[&new, &old]);
        assert_eq!(after.decrypt(&env, b"id").unwrap(), b"secret");
        assert!(after.needs_reencrypt(&env));
        let re = after.encrypt(b"secret", b"id");
        assert!(!after.needs_reencrypt(&re));
        let only_new = ring(&[&new]);
        assert!(matches!(only_new.decrypt(&env, b"id"), Err(CryptoError::UnknownKey(_))));
    }

    #[test]
    fn bad_keys_rejected() {
        assert!(decode_key("not base64!").is_err());
        assert_eq!(decode_key(&B64.encode([0u8; 16])).unwrap_err(), KeyError::WrongLength(16));
    }
}
