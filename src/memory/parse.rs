//! Reading a model's answer as JSON when it is not quite JSON: `<think>` blocks,
//! code fences and prose around the object are dropped, the first complete value
//! is taken, and near-JSON (trailing commas, single quotes, bare keys, Python's
//! `True`/`False`/`None`, comments) is repaired before giving up.

use serde_json::Value;

/// Why no JSON could be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

/// The first JSON object or array in `raw`, leniently.
pub fn lenient_json(raw: &str) -> Result<Value, ParseError> {
    let text = strip_think(raw);
    let text = fenced(&text).unwrap_or(&text).to_string();
    let start = text.find(['{', '[']).ok_or_else(|| ParseError("no JSON object in the answer".into()))?;
    let body = &text[start..];
    // Strict first: a complete value followed by anything.
    if let Some(Ok(v)) = serde_json::Deserializer::from_str(body).into_iter::<Value>().next() {
        return Ok(v);
    }
    let candidate = balanced(body).unwrap_or(body);
    let repaired = repair(candidate);
    serde_json::from_str(&repaired)
        .or_else(|_| serde_json::from_str(&close_open(&repaired)))
        .map_err(|e| ParseError(format!("the answer is not JSON even after repair: {e}")))
}

/// `raw` without `<think>…</think>` blocks (an unclosed one drops the rest).
fn strip_think(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find("<think>") {
        out.push_str(&rest[..i]);
        match rest[i..].find("</think>") {
            Some(j) => rest = &rest[i + j + "</think>".len()..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The content of the first ``` fence that holds a `{` or `[`.
fn fenced(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(i) = rest.find("```") {
        let after = &rest[i + 3..];
        let body_start = after.find('\n').map(|n| n + 1).unwrap_or(0);
        let body = &after[body_start..];
        let end = body.find("```").unwrap_or(body.len());
        let inner = &body[..end];
        if inner.contains(['{', '[']) {
            return Some(inner);
        }
        rest = &body[(end + 3).min(body.len())..];
    }
    None
}

/// The characters of `s` outside string literals (opened and closed by any of
/// `quotes`, with backslash escapes), with their byte offsets.
fn outside_strings<'a>(s: &'a str, quotes: &'a [char]) -> impl Iterator<Item = (usize, char)> + 'a {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    s.char_indices().filter(move |&(_, c)| {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            return false;
        }
        if quotes.contains(&c) {
            quote = Some(c);
            return false;
        }
        true
    })
}

/// The prefix of `s` (starting at `{` or `[`) up to its matching close, tracking
/// strings in either quote.
fn balanced(s: &str) -> Option<&str> {
    let mut depth = 0i32;
    for (i, c) in outside_strings(s, &['"', '\'']) {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[..=i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Rewrites near-JSON into JSON: single-quoted strings, bare keys, trailing
/// commas, Python literals and `//` comments.
fn repair(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 16);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => {
                out.push('"');
                i += 1;
                while i < chars.len() && chars[i] != c {
                    match chars[i] {
                        '\\' if i + 1 < chars.len() => {
                            if chars[i + 1] == '\'' {
                                out.push('\'');
                            } else {
                                out.push('\\');
                                out.push(chars[i + 1]);
                            }
                            i += 2;
                            continue;
                        }
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        ch => out.push(ch),
                    }
                    i += 1;
                }
                out.push('"');
                i += 1;
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ',' => {
                let mut j = i + 1;
                loop {
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    if chars.get(j) == Some(&'/') && chars.get(j + 1) == Some(&'/') {
                        while j < chars.len() && chars[j] != '\n' {
                            j += 1;
                        }
                    } else {
                        break;
                    }
                }
                if !matches!(chars.get(j), Some('}') | Some(']')) {
                    out.push(',');
                }
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if chars.get(j) == Some(&':') {
                    out.push('"');
                    out.push_str(&word);
                    out.push('"');
                } else {
                    out.push_str(match word.as_str() {
                        "True" => "true",
                        "False" => "false",
                        "None" => "null",
                        w => w,
                    });
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Closes brackets a truncated answer left open (a cut-off last element is dropped).
fn close_open(s: &str) -> String {
    // Where the last element closed, and whether anything is still open.
    let mut depth = 0i32;
    let mut last_complete = 0;
    for (i, c) in outside_strings(s, &['"']) {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                last_complete = i + 1;
            }
            _ => {}
        }
    }
    if depth <= 0 {
        return s.to_string();
    }
    // Cut back to the last closed element, then close what is still open there.
    let cut = &s[..last_complete.max(1)];
    let mut open = Vec::new();
    for (_, c) in outside_strings(cut, &['"']) {
        match c {
            '{' => open.push('}'),
            '[' => open.push(']'),
            '}' | ']' => {
                open.pop();
            }
            _ => {}
        }
    }
    let mut out = cut.trim_end().trim_end_matches(',').to_string();
    while let Some(c) = open.pop() {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fenced_json_with_prose() {
        let v = lenient_json("Sure! Here you go:\n```json\n{\"operations\": []}\n```\nLet me know.").unwrap();
        assert_eq!(v, serde_json::json!({"operations": []}));
    }

    #[test]
    fn reads_json_followed_by_prose() {
        let v = lenient_json("{\"a\": 1} and that is all {\"b\": 2}").unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
    }

    #[test]
    fn repairs_near_json() {
        let v = lenient_json(
            "<think>hmm {no}</think>{operations: [{'op': 'ADD', 'text': 'It\\'s \"fine\"', ok: True,},], // done\n}",
        )
        .unwrap();
        assert_eq!(v, serde_json::json!({"operations": [{"op": "ADD", "text": "It's \"fine\"", "ok": true}]}));
    }

    #[test]
    fn closes_a_truncated_answer() {
        let v = lenient_json("{\"operations\": [{\"op\": \"ADD\", \"text\": \"a\"}, {\"op\": \"ADD\", \"te").unwrap();
        assert_eq!(v, serde_json::json!({"operations": [{"op": "ADD", "text": "a"}]}));
    }

    #[test]
    fn refuses_what_is_not_json() {
        assert!(lenient_json("I could not find any facts.").is_err());
    }
}
