//! Secrets that must never become memories: API keys and tokens (by their
//! vendors' prefixes, JWTs, private keys), passwords and PINs stated in words,
//! payment card numbers (13–19 digits passing Luhn), US social security numbers
//! and IBANs. [`find`] names the first kind in a text; [`redact`] replaces every
//! occurrence before messages are sent to the extraction model.

use std::sync::LazyLock;

use regex::Regex;

/// The patterns, each with the kind it reports.
static PATTERNS: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    let p = |kind, re: &str| Regex::new(re).map(|r| (kind, r)).ok();
    [
        p("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        p(
            "api_key",
            r"\b(?:sk|pk|rk)[-_](?:live|test|proj|ant)?[-_]?[A-Za-z0-9_\-]{16,}|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}|\bxox[abprs]-[A-Za-z0-9\-]{10,}|\bAKIA[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_\-]{30,}|\bglpat-[A-Za-z0-9_\-]{20,}|\bsecret_[A-Za-z0-9]{24,}",
        ),
        p("token", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
        p(
            "password",
            r"(?i)\b(?:password|passwd|passphrase|passcode|pwd|pin(?:\s*code)?)\b(?:\s+(?:for|to|of|on)\s+[\w.\-@ ]{1,40}?)?\s*(?:is|was|=|:|->)\s*\S+",
        ),
        p("ssn", r"\b\d{3}-\d{2}-\d{4}\b"),
        p("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b"),
        p("long_token", r"\b(?:[A-Za-z]+\d|\d+[A-Za-z])[A-Za-z0-9_\-]{31,}\b"),
    ]
    .into_iter()
    .flatten()
    .collect()
});

/// Digit runs that may be card numbers (spaces or dashes between groups).
static CARD: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\b\d(?:[ \-]?\d){12,18}\b").ok());

/// Whether the digits pass the Luhn check.
pub fn luhn(digits: &str) -> bool {
    let ds: Vec<u32> = digits.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&ds.len()) {
        return false;
    }
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Byte ranges of every secret in `text`, with their kinds, in order.
fn spans(text: &str) -> Vec<(usize, usize, &'static str)> {
    let mut out = Vec::new();
    for (kind, re) in PATTERNS.iter() {
        out.extend(re.find_iter(text).map(|m| (m.start(), m.end(), *kind)));
    }
    if let Some(card) = CARD.as_ref() {
        out.extend(card.find_iter(text).filter(|m| luhn(m.as_str())).map(|m| (m.start(), m.end(), "card_number")));
    }
    out.sort_unstable();
    out
}

/// The kind of the first secret in `text`, if any.
pub fn find(text: &str) -> Option<&'static str> {
    spans(text).first().map(|s| s.2)
}

/// `text` with every secret replaced by `[redacted <kind>]`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, kind) in spans(text) {
        if start < at {
            at = at.max(end);
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str("[redacted ");
        out.push_str(kind);
        out.push(']');
        at = end;
    }
    out.push_str(&text[at.min(text.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_secrets() {
        assert_eq!(find("my card is 4111 1111 1111 1111 thanks"), Some("card_number"));
        assert_eq!(find("order 4111 1111 1111 1112"), None, "fails Luhn");
        assert_eq!(find("use sk-proj-abcdefghijklmnopqrstuv123"), Some("api_key"));
        assert_eq!(find("token ghp_abcdefghijklmnopqrstuvwxyz0123"), Some("api_key"));
        assert_eq!(find("AKIAIOSFODNN7EXAMPLE is the id"), Some("api_key"));
        assert_eq!(find("My password is hunter2"), Some("password"));
        assert_eq!(find("the wifi password: correct-horse"), Some("password"));
        assert_eq!(find("ssn 078-05-1120"), Some("ssn"));
        assert_eq!(find("GB82 WEST 1234 5698 7654 32"), Some("iban"));
        assert_eq!(find("I moved to Lisbon in 2023 and I like hiking"), None);
        assert_eq!(find("call me at 555-1234 on 2024-05-01"), None);
        assert_eq!(find("I forgot my password yesterday"), None);
    }

    #[test]
    fn redacts_in_place() {
        let r = redact("card 4111-1111-1111-1111, key sk-live-abcdefghijklmnopqrstu; bye");
        assert_eq!(r, "card [redacted card_number], key [redacted api_key]; bye");
    }
}
