//! Text extraction from files: PDF (poppler, page numbers kept), DOCX (its XML
//! read from the zip with size limits), HTML (main content only), Markdown and
//! plain text. The result is Markdown-flavoured text (headings as `#` lines) that
//! the chunker understands, with the character offsets where pages start.
//!
//! Extraction runs in a child process (`carmenta extract`, see [`isolated`]) with
//! a memory limit, a CPU limit and a wall-clock timeout, so a hostile or broken
//! file (a PDF that crashes or loops the parser, a zip bomb) fails that file with
//! a clear reason and never takes the server down.

mod docx;
mod html;
pub mod isolated;
mod pdf;

use serde::{Deserialize, Serialize};

/// A file format the knowledge base reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// PDF.
    Pdf,
    /// Word (Office Open XML).
    Docx,
    /// HTML.
    Html,
    /// Markdown.
    Markdown,
    /// Plain text.
    Text,
}

impl Format {
    /// The format's name (`pdf`, `docx`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Html => "html",
            Format::Markdown => "markdown",
            Format::Text => "text",
        }
    }

    /// The format named `s`.
    pub fn from_name(s: &str) -> Option<Format> {
        Some(match s {
            "pdf" => Format::Pdf,
            "docx" => Format::Docx,
            "html" => Format::Html,
            "markdown" => Format::Markdown,
            "text" => Format::Text,
            _ => return None,
        })
    }
}

/// Limits on one extraction.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    /// Most pages read from a PDF.
    pub max_pages: u32,
    /// Most bytes of text (and of decompressed XML in a DOCX).
    pub max_text_bytes: u64,
}

/// What a file holds, as text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// A title found in the file (HTML `<title>`, a DOCX's core title).
    pub title: Option<String>,
    /// The text, headings as Markdown `#` lines.
    pub body: String,
    /// Character offsets where pages start (PDF); empty when unpaged.
    pub page_starts: Vec<i32>,
}

/// Why a file could not be read; `code` is stable, `message` says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExtractError {
    /// `unsupported_format`, `binary_content`, `encrypted_pdf`, `malformed_pdf`,
    /// `too_many_pages`, `zip_bomb`, `malformed_docx`, `too_large`, `timeout`,
    /// `extractor_failed`, `empty`.
    pub code: String,
    /// A sentence for the user.
    pub message: String,
}

impl ExtractError {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> ExtractError {
        ExtractError { code: code.to_string(), message: message.into() }
    }
}

/// The format of a file, from its content type and name, confirmed by its bytes
/// (a PDF must start like one, a DOCX must be a zip).
pub fn detect(content_type: &str, name: &str, bytes: &[u8]) -> Result<Format, ExtractError> {
    let ct = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let format = match (ct.as_str(), ext.as_str()) {
        ("application/pdf", _) | (_, "pdf") => Format::Pdf,
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", _) | (_, "docx") => Format::Docx,
        ("text/html" | "application/xhtml+xml", _) | (_, "html" | "htm" | "xhtml") => Format::Html,
        ("text/markdown" | "text/x-markdown", _) | (_, "md" | "markdown" | "mdx") => Format::Markdown,
        (ct, ext) if ct.starts_with("text/") || matches!(ext, "txt" | "text" | "csv" | "log" | "rst" | "org") => {
            Format::Text
        }
        _ if bytes.starts_with(b"%PDF-") => Format::Pdf,
        _ => {
            return Err(ExtractError::new(
                "unsupported_format",
                format!(
                    "{content_type:?} ({name}) is not a format the knowledge base reads: PDF, DOCX, HTML, Markdown or plain text"
                ),
            ));
        }
    };
    match format {
        Format::Pdf
            if !bytes.starts_with(b"%PDF-") && !bytes[..bytes.len().min(1024)].windows(5).any(|w| w == b"%PDF-") =>
        {
            Err(ExtractError::new("malformed_pdf", "the file is named or typed as a PDF but does not start like one"))
        }
        Format::Docx if !bytes.starts_with(b"PK\x03\x04") => {
            Err(ExtractError::new("malformed_docx", "the file is named or typed as DOCX but is not a zip archive"))
        }
        f => Ok(f),
    }
}

/// Extracts the text of `bytes` (in this process; the server calls it through
/// [`isolated::extract`]).
pub fn extract(format: Format, bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let out = match format {
        Format::Pdf => pdf::extract(bytes, limits)?,
        Format::Docx => docx::extract(bytes, limits)?,
        Format::Html => html::extract(&text(bytes)?, limits),
        Format::Markdown | Format::Text => Extracted { title: None, body: text(bytes)?, page_starts: Vec::new() },
    };
    if out.body.len() as u64 > limits.max_text_bytes {
        return Err(ExtractError::new("too_large", format!("the text is larger than {} bytes", limits.max_text_bytes)));
    }
    if out.body.trim().is_empty() {
        return Err(ExtractError::new("empty", "no text was found in the file (a scanned PDF needs OCR first)"));
    }
    Ok(out)
}

/// `bytes` as text: UTF-8 (a BOM dropped) with no NUL bytes and few control
/// characters; anything else is binary content under a text name.
pub fn text(bytes: &[u8]) -> Result<String, ExtractError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let binary =
        || ExtractError::new("binary_content", "the file holds binary data, not text (is it named or typed wrongly?)");
    if bytes.contains(&0) {
        return Err(binary());
    }
    let s = std::str::from_utf8(bytes).map_err(|_| binary())?;
    let controls = s.chars().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\x0c')).count();
    if controls * 100 > s.chars().count().max(1) {
        return Err(binary());
    }
    Ok(s.replace("\r\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_named_txt_fails_clearly() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let e = extract(Format::Text, &bytes, &Limits { max_pages: 10, max_text_bytes: 1 << 20 }).unwrap_err();
        assert_eq!(e.code, "binary_content");
    }

    #[test]
    fn detection_checks_magic() {
        assert_eq!(detect("application/pdf", "a.pdf", b"hello").unwrap_err().code, "malformed_pdf");
        assert_eq!(detect("text/plain", "a.md", b"# hi").unwrap(), Format::Markdown);
        assert_eq!(detect("application/octet-stream", "x.bin", b"\x00\x01").unwrap_err().code, "unsupported_format");
    }
}
