//! Passwords: argon2id hashing with OWASP parameters (run off the async threads),
//! verification with equal work for unknown accounts, and the password policy
//! (length bounds, a list of common passwords, not the email).

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest password accepted (bounds hashing work per request).
pub const MAX_PASSWORD_LEN: usize = 256;

static COMMON: OnceLock<HashSet<&'static str>> = OnceLock::new();
static DUMMY_HASH: OnceLock<String> = OnceLock::new();

fn common() -> &'static HashSet<&'static str> {
    COMMON
        .get_or_init(|| include_str!("common-passwords.txt").lines().map(str::trim).filter(|l| !l.is_empty()).collect())
}

/// argon2id with OWASP's recommended parameters: 19 MiB, 2 iterations, 1 lane.
fn argon2() -> Argon2<'static> {
    // These constants are valid parameters.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_else(|_| unreachable!("valid argon2 params"));
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Shorter than the minimum.
    #[error("password must be at least {0} characters")]
    TooShort(usize),
    /// Longer than [`MAX_PASSWORD_LEN`].
    #[error("password must be at most {MAX_PASSWORD_LEN} characters")]
    TooLong,
    /// On the list of common passwords, or the email itself.
    #[error("password is too common; choose another")]
    Common,
}

/// Checks `password` against the policy.
pub fn check_policy(password: &str, email: &str, min_len: usize) -> Result<(), PolicyError> {
    let n = password.chars().count();
    if n < min_len {
        return Err(PolicyError::TooShort(min_len));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(PolicyError::TooLong);
    }
    let lower = password.to_lowercase();
    if common().contains(lower.as_str())
        || lower == email.to_lowercase()
        || Some(lower.as_str()) == email.split('@').next()
    {
        return Err(PolicyError::Common);
    }
    Ok(())
}

/// Hashes a password (PHC string). CPU-heavy: runs on the blocking pool.
pub async fn hash(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Argon2 refused (parameters or output).
    #[error("argon2: {0}")]
    Argon2(argon2::password_hash::Error),
    /// The blocking task did not finish.
    #[error("hashing task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn hash_blocking(password: &str) -> Result<String, HashError> {
    argon2().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(HashError::Argon2)
}

/// Verifies `password` against `stored`; with `None` (unknown account or no
/// password) it verifies against a dummy hash so the work and time are the same,
/// and returns false.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let (target, real) = match stored {
            Some(h) => (h, true),
            None => (dummy_hash().to_string(), false),
        };
        let ok = match PasswordHash::new(&target) {
            Ok(parsed) => argon2().verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        };
        ok && real
    })
    .await
    .unwrap_or(false)
}

/// A hash of a random password, computed once, used for unknown accounts.
fn dummy_hash() -> &'static str {
    DUMMY_HASH.get_or_init(|| {
        let random: [u8; 16] = rand::random();
        hash_blocking(&format!("{random:?}")).unwrap_or_default()
    })
}

/// Computes the dummy hash ahead of the first sign-in (so the first unknown-email
/// attempt is not slower than the rest).
pub async fn warm_up() {
    let _ = tokio::task::spawn_blocking(dummy_hash).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        assert_eq!(check_policy("short", "a@b.co", 8), Err(PolicyError::TooShort(8)));
        assert_eq!(check_policy("Password123", "a@b.co", 8), Err(PolicyError::Common));
        assert_eq!(check_policy("alice@example.com", "alice@example.com", 8), Err(PolicyError::Common));
        assert_eq!(check_policy(&"x".repeat(300), "a@b.co", 8), Err(PolicyError::TooLong));
        assert!(check_policy("correct horse battery", "a@b.co", 8).is_ok());
    }

    #[test]
    fn hash_and_verify() {
        let h = hash_blocking("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(verify("correct horse battery".into(), Some(h.clone()))));
        assert!(!rt.block_on(verify("wrong".into(), Some(h))));
        assert!(!rt.block_on(verify("anything".into(), None)));
    }
}
