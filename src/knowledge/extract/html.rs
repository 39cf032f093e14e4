//! HTML text (html5ever through `scraper`): the main content only. The content
//! root is `<main>`, else `<article>`, else `[role=main]`, else `<body>`; inside
//! it, scripts, styles, navigation, headers, footers, asides, forms and hidden
//! elements are skipped. Headings become Markdown headings, list items `- `
//! lines, table cells are separated by ` | `, `<pre>` keeps its lines.

use scraper::{ElementRef, Html, Node, Selector};

use super::{Extracted, Limits};

const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "button", "svg", "iframe",
    "object", "canvas", "select", "head", "menu", "dialog",
];

const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "blockquote",
    "figure",
    "figcaption",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "address",
    "details",
    "summary",
    "hr",
];

/// Extracts the main content.
pub fn extract(html: &str, _limits: &Limits) -> Extracted {
    let doc = Html::parse_document(html);
    let title = Selector::parse("title")
        .ok()
        .and_then(|s| doc.select(&s).next())
        .map(|t| collapse(&t.text().collect::<String>()))
        .filter(|t| !t.is_empty());
    let root = ["main", "article", "[role=main]", "body"]
        .iter()
        .filter_map(|s| Selector::parse(s).ok())
        .find_map(|s| doc.select(&s).next())
        .unwrap_or_else(|| doc.root_element());
    let mut w = Writer::default();
    w.walk(root);
    w.end_block();
    Extracted { title, body: w.out.trim_end().to_string() + "\n", page_starts: Vec::new() }
}

#[derive(Default)]
struct Writer {
    out: String,
    line: String,
    pre: usize,
}

impl Writer {
    fn end_block(&mut self) {
        let text = if self.pre > 0 { self.line.trim_end().to_string() } else { collapse(&self.line) };
        if !text.is_empty() {
            self.out.push_str(&text);
            self.out.push_str("\n\n");
        }
        self.line.clear();
    }

    fn walk(&mut self, el: ElementRef<'_>) {
        for child in el.children() {
            match child.value() {
                Node::Text(t) if self.pre > 0 => self.line.push_str(t),
                // Source line breaks are spaces; only <br> breaks a line.
                Node::Text(t) => self.line.extend(t.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c })),
                Node::Element(e) => {
                    let name = e.name();
                    if SKIP.contains(&name)
                        || e.attr("hidden").is_some()
                        || e.attr("aria-hidden") == Some("true")
                        || e.attr("role").is_some_and(|r| matches!(r, "navigation" | "banner" | "contentinfo"))
                    {
                        continue;
                    }
                    let Some(child_el) = ElementRef::wrap(child) else { continue };
                    match name {
                        "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                            self.end_block();
                            let level = name[1..].parse::<usize>().unwrap_or(1);
                            let text = collapse(&child_el.text().collect::<String>());
                            if !text.is_empty() {
                                self.out.push_str(&format!("{} {text}\n\n", "#".repeat(level)));
                            }
                        }
                        "br" => self.line.push('\n'),
                        "li" => {
                            self.end_block();
                            self.line.push_str("- ");
                            self.walk(child_el);
                            self.end_block();
                        }
                        "td" | "th" => {
                            if !self.line.trim().is_empty() {
                                self.line.push_str(" | ");
                            }
                            self.walk(child_el);
                        }
                        "tr" => {
                            self.end_block();
                            self.walk(child_el);
                            self.end_block();
                        }
                        "pre" => {
                            self.end_block();
                            self.pre += 1;
                            self.walk(child_el);
                            self.pre -= 1;
                            self.end_block();
                        }
                        _ if BLOCK.contains(&name) => {
                            self.end_block();
                            self.walk(child_el);
                            self.end_block();
                        }
                        _ => self.walk(child_el),
                    }
                }
                _ => {}
            }
        }
    }
}

/// Whitespace runs as single spaces; newlines from `<br>` kept.
fn collapse(s: &str) -> String {
    s.split('\n')
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_content_without_navigation_or_scripts() {
        let html = r#"<html><head><title>T</title><script>var x=1;</script></head><body>
            <nav><a href="/">Home</a> <a href="/about">About</a></nav>
            <header>Site banner</header>
            <main><h1>Report</h1><p>First   paragraph
            here.</p><script>alert(1)</script><ul><li>one</li><li>two</li></ul></main>
            <footer>Copyright</footer></body></html>"#;
        let e = extract(html, &Limits { max_pages: 1, max_text_bytes: 1 << 20 });
        assert_eq!(e.title.as_deref(), Some("T"));
        assert_eq!(e.body, "# Report\n\nFirst paragraph here.\n\n- one\n\n- two\n");
    }
}
