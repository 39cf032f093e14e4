//! The console's pages over the other areas: storage (buckets, folders, objects
//! with thumbnails and previews, upload, move, delete, signed links), connections
//! and integrations, conversations (read-only), the knowledge base (folder tree,
//! ingestion status, re-ingest) and memory (per user, provenance and history,
//! edit and delete). They act through each area's own service functions, so the
//! area's rules hold here too; `db.rs` has the cross-user listings only an admin sees.

pub mod db;
pub mod routes;
