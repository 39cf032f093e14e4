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
