//! Chunking that follows a document's structure: Markdown headings start new
//! sections (each chunk keeps its heading trail), paragraphs are the units that
//! are packed together, page boundaries are never crossed, and a paragraph longer
//! than a chunk is split at sentences, then at words. Sizes are counted in
//! cl100k tokens (tiktoken). Consecutive chunks of one section repeat up to
//! `overlap` tokens of whole units. Every chunk is an exact span of the version's
//! body, given in character (Unicode scalar) offsets, so a citation can be shown
//! and reproduced.

/// Chunk size and overlap, in tokens.
#[derive(Debug, Clone, Copy)]
pub struct ChunkConfig {
    /// Target (and maximum, for text that can be split) tokens per chunk.
    pub tokens: usize,
    /// Tokens repeated from the previous chunk of the same section.
    pub overlap: usize,
}

/// One chunk of a document version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the version, from 0.
    pub ordinal: i32,
    /// The headings above the chunk, outermost first.
    pub headings: Vec<String>,
    /// The page the chunk starts on (1-based), for paged sources.
    pub page: Option<i32>,
    /// First character (inclusive).
    pub char_start: i32,
    /// Last character (exclusive).
    pub char_end: i32,
    /// cl100k tokens of `text`.
    pub tokens: i32,
    /// The span's text.
    pub text: String,
}

/// cl100k tokens in `s`.
pub fn count_tokens(s: &str) -> usize {
    tiktoken_rs::cl100k_base_singleton().encode_ordinary(s).len()
}

/// A unit to pack: a byte span of the body, its tokens, and its section.
#[derive(Debug, Clone, Copy)]
struct Piece {
    start: usize,
    end: usize,
    tokens: usize,
    section: usize,
}

/// A section: a heading trail on one page.
struct Section {
    headings: Vec<String>,
    page: Option<i32>,
}

/// Splits `body` into chunks. `page_starts` are the character offsets where pages
/// begin (empty for unpaged text).
pub fn chunk(body: &str, page_starts: &[i32], config: &ChunkConfig) -> Vec<Chunk> {
    let max = config.tokens.max(1);
    let page_bytes = chars_to_bytes(body, page_starts);
    let page_of = |byte: usize| -> Option<i32> {
        if page_bytes.is_empty() { None } else { Some(page_bytes.partition_point(|&p| p <= byte).max(1) as i32) }
    };

    let mut sections: Vec<Section> = Vec::new();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut trail: Vec<(usize, String)> = Vec::new();
    let mut para: Option<(usize, usize)> = None;
    let mut in_fence = false;

    let section_for = |sections: &mut Vec<Section>, trail: &[(usize, String)], page: Option<i32>| -> usize {
        let headings: Vec<String> = trail.iter().map(|(_, h)| h.clone()).collect();
        match sections.last() {
            Some(s) if s.headings == headings && s.page == page => sections.len() - 1,
            _ => {
                sections.push(Section { headings, page });
                sections.len() - 1
            }
        }
    };

    let flush = |para: &mut Option<(usize, usize)>,
                 sections: &mut Vec<Section>,
                 trail: &[(usize, String)],
                 pieces: &mut Vec<Piece>| {
        if let Some((s, e)) = para.take() {
            let section = section_for(sections, trail, page_of(s));
            split_block(body, s, e, max, section, pieces);
        }
    };

    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        let trimmed = content.trim();
        // A page boundary ends the paragraph before it.
        if let Some((s, _)) = para
            && page_of(s) != page_of(start)
        {
            flush(&mut para, &mut sections, &trail, &mut pieces);
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        }
        if !in_fence && let Some((level, text)) = heading(trimmed) {
            flush(&mut para, &mut sections, &trail, &mut pieces);
            while trail.last().is_some_and(|(l, _)| *l >= level) {
                trail.pop();
            }
            trail.push((level, text.to_string()));
            let lead = start + (content.len() - content.trim_start().len());
            para = Some((lead, start + content.trim_end().len()));
            flush(&mut para, &mut sections, &trail, &mut pieces);
            continue;
        }
        if trimmed.is_empty() && !in_fence {
            flush(&mut para, &mut sections, &trail, &mut pieces);
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        let lead = start + (content.len() - content.trim_start().len());
        let end = start + content.trim_end().len();
        para = Some(match para {
            Some((s, _)) => (s, end),
            None => (lead, end),
        });
    }
    flush(&mut para, &mut sections, &trail, &mut pieces);

    // Pack pieces section by section.
    let mut spans: Vec<(usize, usize, usize)> = Vec::new(); // (start, end, section)
    let mut i = 0;
    while i < pieces.len() {
        let section = pieces[i].section;
        let mut j = i;
        while j < pieces.len() && pieces[j].section == section {
            j += 1;
        }
        pack(&pieces[i..j], max, config.overlap, &mut spans);
        i = j;
    }

    let mut wanted: Vec<usize> = spans.iter().flat_map(|&(s, e, _)| [s, e]).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let chars = bytes_to_chars(body, &wanted);
    let char_at = |b: usize| chars[wanted.binary_search(&b).unwrap_or(0)] as i32;
    spans
        .into_iter()
        .enumerate()
        .map(|(n, (s, e, section))| {
            let text = body[s..e].to_string();
            Chunk {
                ordinal: n as i32,
                headings: sections[section].headings.clone(),
                page: sections[section].page,
                char_start: char_at(s),
                char_end: char_at(e),
                tokens: count_tokens(&text) as i32,
                text,
            }
        })
        .collect()
}

/// Packs one section's pieces into spans of at most `max` tokens, each new span
/// repeating whole trailing pieces of the last (up to `overlap` tokens).
fn pack(pieces: &[Piece], max: usize, overlap: usize, out: &mut Vec<(usize, usize, usize)>) {
    let mut cur: Vec<Piece> = Vec::new();
    let mut cur_tokens = 0;
    let mut fresh = false; // cur holds a piece not yet emitted
    for p in pieces {
        if !cur.is_empty() && cur_tokens + p.tokens > max {
            if fresh {
                out.push((cur[0].start, cur[cur.len() - 1].end, p.section));
            }
            // Keep a tail of whole pieces within the overlap, and room for p.
            let mut keep = 0;
            let mut kept = 0;
            for q in cur.iter().rev() {
                if kept + q.tokens > overlap || kept + q.tokens + p.tokens > max || keep + 1 >= cur.len() {
                    break;
                }
                kept += q.tokens;
                keep += 1;
            }
            cur.drain(..cur.len() - keep);
            cur_tokens = kept;
        }
        cur.push(*p);
        cur_tokens += p.tokens;
        fresh = true;
    }
    if fresh && let (Some(first), Some(last)) = (cur.first(), cur.last()) {
        out.push((first.start, last.end, last.section));
    }
}

/// Adds the block `body[s..e]` as pieces of at most `max` tokens: whole if it
/// fits, else its sentences, else groups of words.
fn split_block(body: &str, s: usize, e: usize, max: usize, section: usize, out: &mut Vec<Piece>) {
    let text = &body[s..e];
    let tokens = count_tokens(text);
    if tokens <= max {
        out.push(Piece { start: s, end: e, tokens, section });
        return;
    }
    for (a, b) in sentences(text) {
        let sentence = &text[a..b];
        let t = count_tokens(sentence);
        if t <= max {
            out.push(Piece { start: s + a, end: s + b, tokens: t, section });
            continue;
        }
        // Words, packed greedily (a word's tokens counted with its leading space).
        let mut group: Option<(usize, usize, usize)> = None;
        for (wa, wb) in words(sentence) {
            let wt = count_tokens(&sentence[wa..wb]).max(1);
            match group {
                Some((ga, _, gt)) if gt + wt <= max => group = Some((ga, wb, gt + wt)),
                Some((ga, gb, gt)) => {
                    out.push(Piece { start: s + a + ga, end: s + a + gb, tokens: gt, section });
                    group = Some((wa, wb, wt));
                }
                None => group = Some((wa, wb, wt)),
            }
        }
        if let Some((ga, gb, gt)) = group {
            out.push(Piece { start: s + a + ga, end: s + a + gb, tokens: gt, section });
        }
    }
}

/// Byte spans of the sentences of `text` (ends at `.`, `!`, `?` or a newline
/// followed by whitespace), trimmed.
fn sentences(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ends = matches!(b, b'.' | b'!' | b'?' | b'\n') && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
        if ends {
            push_trimmed(text, start, i + 1, &mut out);
            start = i + 1;
        }
    }
    push_trimmed(text, start, text.len(), &mut out);
    out
}

/// Byte spans of the whitespace-separated words of `text`.
fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

fn push_trimmed(text: &str, a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let slice = &text[a..b];
    let lead = slice.len() - slice.trim_start().len();
    let trail = slice.len() - slice.trim_end().len();
    if a + lead < b - trail {
        out.push((a + lead, b - trail));
    }
}

/// An ATX heading (`# Title` … `###### Title`): its level and text.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &line[level..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim();
    (!text.is_empty()).then_some((level, text))
}

/// The byte offsets of the given character offsets (sorted or not; clamped to the end).
pub fn chars_to_bytes(body: &str, chars: &[i32]) -> Vec<usize> {
    let mut it = body.char_indices().enumerate();
    let mut sorted: Vec<(usize, i32)> = chars.iter().copied().enumerate().collect();
    sorted.sort_by_key(|&(_, c)| c);
    let mut res = vec![body.len(); chars.len()];
    let mut cur = it.next();
    for (idx, c) in sorted {
        while let Some((n, _)) = cur
            && (n as i32) < c
        {
            cur = it.next();
        }
        res[idx] = cur.map_or(body.len(), |(_, (b, _))| b);
    }
    res
}

/// The character offsets of the given sorted byte offsets (each on a boundary).
fn bytes_to_chars(body: &str, sorted_bytes: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(sorted_bytes.len());
    let mut chars = 0;
    let mut pos = 0;
    for &b in sorted_bytes {
        chars += body[pos..b].chars().count();
        pos = b;
        out.push(chars);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tokens: usize, overlap: usize) -> ChunkConfig {
        ChunkConfig { tokens, overlap }
    }

    #[test]
    fn headings_make_trails_and_spans_are_exact() {
        let body =
            "# Guide\n\nIntro paragraph.\n\n## Install\n\nRun the installer.\n\n## Use\n\nÉcrire du texte. Ünïcode.\n";
        let chunks = chunk(body, &[], &cfg(256, 0));
        assert_eq!(chunks.len(), 3, "{chunks:#?}");
        assert_eq!(chunks[0].headings, vec!["Guide"]);
        assert_eq!(chunks[1].headings, vec!["Guide", "Install"]);
        assert_eq!(chunks[2].headings, vec!["Guide", "Use"]);
        for c in &chunks {
            let span: String =
                body.chars().skip(c.char_start as usize).take((c.char_end - c.char_start) as usize).collect();
            assert_eq!(span, c.text);
        }
        assert!(chunks[2].text.starts_with("## Use"));
    }

    #[test]
    fn long_text_splits_with_overlap_and_pages_are_kept() {
        let para: String = (0..60).map(|i| format!("Sentence number {i} talks about widgets. ")).collect();
        let body = format!("{para}\n\nSecond page text.");
        let second = body.chars().count() - "Second page text.".chars().count();
        let chunks = chunk(&body, &[0, second as i32], &cfg(64, 16));
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|c| c.tokens <= 64 + 16), "{chunks:#?}");
        let last = chunks.last().unwrap();
        assert_eq!(last.text, "Second page text.");
        assert_eq!(last.page, Some(2));
        assert_eq!(chunks[0].page, Some(1));
        // Overlap: the second chunk starts before the first one ends.
        assert!(chunks[1].char_start < chunks[0].char_end);
    }

    #[test]
    fn fenced_code_is_not_a_heading() {
        let body = "# Top\n\n```\n# not a heading\n```\n";
        let chunks = chunk(body, &[], &cfg(256, 0));
        assert!(chunks.iter().all(|c| c.headings == vec!["Top"]));
    }
}
