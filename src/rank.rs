//! Rank fusion shared by every hybrid search (knowledge chunks, memories, past
//! messages): weighted reciprocal-rank fusion of a full-text list, a vector list
//! and, where it applies, a recency order, keeping each signal's score and rank so
//! a result can be explained.

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;
use utoipa::ToSchema;

/// The `k` of reciprocal-rank fusion.
pub const RRF_K: f64 = 60.0;

/// How a result scored on each signal.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Scores {
    /// Full-text score (BM25; absent: no query term matched).
    pub fulltext: Option<f64>,
    /// Rank in the full-text list (1 = best).
    pub fulltext_rank: Option<i64>,
    /// Cosine distance to the query (0 = same direction).
    pub vector_distance: Option<f64>,
    /// Rank in the vector list.
    pub vector_rank: Option<i64>,
    /// Rank by recency among the candidates (1 = newest), where recency counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recency_rank: Option<i64>,
    /// The fused score (weighted reciprocal ranks) that orders results.
    pub fused: f64,
}

/// The ranked lists to fuse, best first: (id, score) for full text, (id, cosine
/// distance) for vectors, ids newest first for recency.
#[derive(Debug)]
pub struct Lists<'a, K> {
    /// Full-text hits.
    pub fulltext: &'a [(K, f64)],
    /// Vector hits.
    pub vector: &'a [(K, f64)],
    /// Candidates newest first (empty: recency does not count).
    pub recency: &'a [K],
}

/// Weighted reciprocal-rank fusion: each id scores `Σ w_s / (k + rank_s)` over the
/// signals it appears in; ties go to the smaller id (deterministic).
pub fn fuse<K: Copy + Eq + Hash + Ord>(lists: Lists<'_, K>, weights: [f64; 3], k: f64) -> Vec<(K, Scores)> {
    let mut by_id: HashMap<K, Scores> = HashMap::new();
    for (rank, (id, score)) in lists.fulltext.iter().enumerate() {
        let s = by_id.entry(*id).or_default();
        s.fulltext = Some(*score);
        s.fulltext_rank = Some(rank as i64 + 1);
        s.fused += weights[0] / (k + rank as f64 + 1.0);
    }
    for (rank, (id, dist)) in lists.vector.iter().enumerate() {
        let s = by_id.entry(*id).or_default();
        s.vector_distance = Some(*dist);
        s.vector_rank = Some(rank as i64 + 1);
        s.fused += weights[1] / (k + rank as f64 + 1.0);
    }
    for (rank, id) in lists.recency.iter().enumerate() {
        if let Some(s) = by_id.get_mut(id) {
            s.recency_rank = Some(rank as i64 + 1);
            s.fused += weights[2] / (k + rank as f64 + 1.0);
        }
    }
    let mut out: Vec<(K, Scores)> = by_id.into_iter().collect();
    out.sort_by(|a, b| b.1.fused.total_cmp(&a.1.fused).then(a.0.cmp(&b.0)));
    out
}

/// BM25 statistics of a query over one user's documents: each distinct query
/// lexeme with its document frequency, the document count and total length.
#[derive(Debug, Clone, Default)]
pub struct TermStats {
    /// (lexeme, document frequency).
    pub terms: Vec<(String, i64)>,
    /// Documents.
    pub docs: i64,
    /// Their summed lengths.
    pub total_len: i64,
}

/// One scoring round of [`bm25_top`]: score, with BM25 (k1 0.9, b 0.4), the
/// documents that contain any of `matching`, on every term of `weighted`
/// (lexeme, idf) they contain, normalised by `avg_len`; the best `limit`.
#[derive(Debug, Clone)]
pub struct Round {
    /// Every query term with its idf.
    pub weighted: Vec<(String, f64)>,
    /// The terms a document must hold one of to be scored this round.
    pub matching: Vec<String>,
    /// The average document length.
    pub avg_len: f64,
}

/// Rounds before every query term is matched at once.
const PRUNE_ROUNDS: usize = 3;

/// The exact BM25 top `limit`, cheap when queries hold common words (MaxScore
/// pruning): terms are taken rarest first and the documents holding the ones taken
/// so far are scored on every query term (by `run`); when even a perfect score on
/// the terms not yet taken (idf × (k1 + 1) each) falls below the current
/// `limit`-th score, no document holding only those can reach the top, so the many
/// documents with common words are never read. After [`PRUNE_ROUNDS`] rounds every
/// term is matched.
pub async fn bm25_top<K, E, F, Fut>(stats: TermStats, limit: i64, mut run: F) -> Result<Vec<(K, f64)>, E>
where
    F: FnMut(Round) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<(K, f64)>, E>>,
{
    let mut terms = stats.terms;
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let n = stats.docs.max(1) as f64;
    let avg_len = (stats.total_len as f64 / n).max(1.0);
    terms.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    let weighted: Vec<(String, f64)> = terms
        .iter()
        .map(|(l, df)| {
            let df = (*df).max(0) as f64;
            (l.clone(), (1.0 + (n - df + 0.5).max(0.0) / (df + 0.5)).ln())
        })
        .collect();
    let bound: Vec<f64> = weighted.iter().map(|t| t.1 * 1.9).collect();
    // Terms no document holds cost nothing to match: take them with the first.
    let mut taken = (terms.iter().take_while(|t| t.1 <= 0).count() + 1).min(terms.len());
    let mut round = 0;
    loop {
        round += 1;
        if round >= PRUNE_ROUNDS {
            taken = terms.len();
        }
        let matching: Vec<String> = terms[..taken].iter().map(|t| t.0.clone()).collect();
        let rows = run(Round { weighted: weighted.clone(), matching, avg_len }).await?;
        if taken >= terms.len() {
            return Ok(rows);
        }
        let rest: f64 = bound[taken..].iter().sum();
        if rows.len() as i64 >= limit && rows.last().is_some_and(|r| r.1 > rest) {
            return Ok(rows);
        }
        taken += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_orders_by_weighted_reciprocal_rank() {
        let f = vec![(1, 3.0), (2, 2.0)];
        let v = vec![(2, 0.1), (3, 0.2)];
        let out = fuse(Lists { fulltext: &f, vector: &v, recency: &[] }, [1.0, 1.0, 0.0], 60.0);
        assert_eq!(out[0].0, 2);
        assert_eq!(out[0].1.fulltext_rank, Some(2));
        assert_eq!(out[0].1.vector_rank, Some(1));
        assert_eq!(out[0].1.recency_rank, None);
    }

    #[test]
    fn recency_only_reorders_candidates() {
        let f = vec![(1, 3.0), (2, 2.9)];
        let out = fuse(Lists { fulltext: &f, vector: &[], recency: &[2, 9, 1] }, [1.0, 0.0, 1.0], 60.0);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), vec![2, 1], "9 was no candidate");
        assert_eq!(out[1].1.recency_rank, Some(3));
    }
}
