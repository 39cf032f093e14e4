//! Configuration: defaults, file, environment precedence, errors that name the key.

use std::collections::BTreeMap;

use carmenta::config::{Config, ConfigError, LogFormat, Secret};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn defaults() {
    let empty = file("");
    let c = Config::from_sources(&env(&[]), Some(empty.path())).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.public_url.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(c.data_dir.to_str(), Some("carmenta-data"));
    assert!(c.embedded_db());
    assert_eq!(c.log_format, LogFormat::Human);
}

#[test]
fn environment_wins_over_file() {
    let f = file("listen = \"127.0.0.1:9000\"\npublic_url = \"https://file.example\"\nbody_limit = \"5MB\"\n");
    let c = Config::from_sources(&env(&[("CARMENTA_LISTEN", "0.0.0.0:7000")]), Some(f.path())).unwrap();
    assert_eq!(c.listen.to_string(), "0.0.0.0:7000");
    assert_eq!(c.public_url.as_str(), "https://file.example/");
    assert_eq!(c.body_limit, 5_000_000);
    let c = Config::from_sources(&env(&[("CARMENTA_PUBLIC_URL", "https://api.example.com")]), Some(f.path())).unwrap();
    assert_eq!(c.public_url.as_str(), "https://api.example.com/");
}

#[test]
fn unknown_file_key_is_named() {
    let f = file("listen = \"127.0.0.1:9000\"\nlisten_adress = \"x\"\n");
    let e = Config::from_sources(&env(&[]), Some(f.path())).unwrap_err();
    assert!(matches!(e, ConfigError::File { .. }), "{e}");
    assert!(e.to_string().contains("listen_adress"), "{e}");
}

#[test]
fn invalid_values_are_named() {
    let empty = file("");
    let cases = [
        ("CARMENTA_LISTEN", "not-an-address"),
        ("CARMENTA_PUBLIC_URL", "ftp://x"),
        ("CARMENTA_LOG_FORMAT", "xml"),
        ("CARMENTA_BODY_LIMIT", "lots"),
        ("CARMENTA_REQUEST_TIMEOUT", "0"),
        ("CARMENTA_ENCRYPTION_KEY", "c2hvcnQ="),
        ("DATABASE_URL", "mysql://x/y"),
        ("CARMENTA_DB_MAX_CONNECTIONS", "0"),
    ];
    for (k, v) in cases {
        let e = Config::from_sources(&env(&[(k, v)]), Some(empty.path())).unwrap_err();
        assert!(e.to_string().contains(k), "{k}={v}: {e}");
    }
    let f = file("request_timeout = \"soon\"\n");
    let e = Config::from_sources(&env(&[]), Some(f.path())).unwrap_err();
    assert!(e.to_string().contains("request_timeout"), "{e}");
}

#[test]
fn secrets_are_redacted() {
    let empty = file("");
    let key = carmenta::crypto::generate_key();
    let c = Config::from_sources(
        &env(&[("DATABASE_URL", "postgres://app:s3cr3t-pw@db.internal/app"), ("CARMENTA_ENCRYPTION_KEY", &key)]),
        Some(empty.path()),
    )
    .unwrap();
    let shown = format!("{:?} {:?}", c.redacted(), c);
    assert!(!shown.contains("s3cr3t-pw"), "{shown}");
    assert!(!shown.contains(&key), "{shown}");
    assert_eq!(format!("{}", Secret::new("x")), "[redacted]");
}

#[test]
fn external_database_requires_a_key() {
    let empty = file("");
    let dir = tempfile::tempdir().unwrap();
    let c = Config::from_sources(
        &env(&[("DATABASE_URL", "postgres://u@localhost/db"), ("CARMENTA_DATA_DIR", dir.path().to_str().unwrap())]),
        Some(empty.path()),
    )
    .unwrap();
    let e = carmenta::server::resolve_keyring(&c).unwrap_err();
    assert!(e.to_string().contains("CARMENTA_ENCRYPTION_KEY"), "{e}");
}

#[test]
fn embedded_default_generates_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let c = Config::for_data_dir(dir.path());
    let k1 = carmenta::server::resolve_keyring(&c).unwrap();
    let path = dir.path().join(carmenta::server::KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let k2 = carmenta::server::resolve_keyring(&c).unwrap();
    assert_eq!(k1.primary_key_id(), k2.primary_key_id(), "the key is reused, not regenerated");
    let sealed = k1.encrypt(b"hello", b"aad");
    assert_eq!(k2.decrypt(&sealed, b"aad").unwrap(), b"hello");
}
