//! DOCX text: `word/document.xml` (and the title from `docProps/core.xml`) read
//! from the zip with a cap on decompressed bytes and on the compression ratio, so
//! a zip bomb is refused before it is inflated; paragraphs styled `Title` or
//! `Heading1`…`Heading6` become Markdown headings, table cells are separated by
//! ` | `.

use std::io::Read;

use quick_xml::Reader;
use quick_xml::events::Event;

use super::{ExtractError, Extracted, Limits};

/// Largest compression ratio accepted for a part (a text-heavy XML part
/// compresses about 10:1; bombs are thousands to one).
const MAX_RATIO: u64 = 200;

fn bomb(what: &str) -> ExtractError {
    ExtractError::new("zip_bomb", format!("the DOCX's {what} inflates beyond the limits (a zip bomb?)"))
}

fn malformed(m: impl std::fmt::Display) -> ExtractError {
    ExtractError::new("malformed_docx", format!("the DOCX could not be read: {m}"))
}

/// Reads one part of the archive, within the limits; `None` when it is absent.
fn part(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    name: &str,
    limits: &Limits,
) -> Result<Option<String>, ExtractError> {
    let file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(malformed(e)),
    };
    let cap = limits.max_text_bytes.saturating_mul(4);
    if file.size() > cap || file.size() > file.compressed_size().max(1).saturating_mul(MAX_RATIO) + 1_000_000 {
        return Err(bomb(name));
    }
    let mut out = Vec::new();
    file.take(cap + 1).read_to_end(&mut out).map_err(malformed)?;
    if out.len() as u64 > cap {
        return Err(bomb(name));
    }
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

/// Extracts the text.
pub fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(malformed)?;
    let doc = part(&mut zip, "word/document.xml", limits)?
        .ok_or_else(|| malformed("it has no word/document.xml (is it a Word file?)"))?;
    let title = part(&mut zip, "docProps/core.xml", limits)?.and_then(|core| element_text(&core, "title"));
    Ok(Extracted { title, body: body(&doc)?, page_starts: Vec::new() })
}

/// The document's paragraphs as Markdown-flavoured text.
fn body(xml: &str) -> Result<String, ExtractError> {
    let mut reader = Reader::from_str(xml);
    let mut out = String::new();
    let mut para = String::new();
    let mut level: Option<usize> = None;
    let mut in_text = false;
    let mut cell_open = false;
    loop {
        match reader.read_event().map_err(malformed)? {
            Event::Start(e) | Event::Empty(e) => match e.local_name().as_ref() {
                "t" => in_text = true,
                "tab" => para.push('\t'),
                "br" | "cr" => para.push('\n'),
                "pStyle" => {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == "val" {
                            let v = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(malformed)?;
                            level = heading_level(&v);
                        }
                    }
                }
                "tc" => {
                    if cell_open {
                        para.push_str(" | ");
                    }
                    cell_open = true;
                }
                "tr" => cell_open = false,
                _ => {}
            },
            Event::Text(t) if in_text => para.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    para.push(c);
                } else {
                    para.push_str(match r.xml10_content().as_ref() {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" => "'",
                        _ => "",
                    });
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "p" => {
                    let text = para.trim();
                    if !text.is_empty() && !cell_open {
                        if let Some(l) = level {
                            out.push_str(&"#".repeat(l));
                            out.push(' ');
                        }
                        out.push_str(text);
                        out.push_str("\n\n");
                        para.clear();
                    } else if cell_open {
                        para.push(' ');
                    } else {
                        para.clear();
                    }
                    level = None;
                }
                "tr" => {
                    let text = para.trim();
                    if !text.is_empty() {
                        out.push_str(text);
                        out.push_str("\n\n");
                    }
                    para.clear();
                    cell_open = false;
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out.trim_end().to_string() + "\n")
}

/// `Title` → 1, `Heading1`…`Heading6` → 1…6 (`Heading 2` as well).
fn heading_level(style: &str) -> Option<usize> {
    let s = style.replace(' ', "").to_ascii_lowercase();
    if s == "title" {
        return Some(1);
    }
    s.strip_prefix("heading").and_then(|n| n.parse::<usize>().ok()).filter(|n| (1..=6).contains(n))
}

/// The text of the first element named `local` (e.g. `dc:title`).
fn element_text(xml: &str, local: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut inside = false;
    let mut out = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == local => inside = true,
            Event::Text(t) if inside => out.push_str(&t.xml10_content()),
            Event::End(e) if e.local_name().as_ref() == local => break,
            Event::Eof => break,
            _ => {}
        }
    }
    let out = out.trim().to_string();
    (!out.is_empty()).then_some(out)
}
