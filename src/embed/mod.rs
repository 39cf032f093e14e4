//! The `Embedder`: turns texts into vectors for the knowledge base (and, later,
//! memory). Two providers:
//!
//! - **built-in** (default): potion-base-8M static embeddings (256 dimensions)
//!   through `model2vec-rs`, read from the directory `scripts/bootstrap` fills
//!   from a PyPI wheel (sha256-checked), so the server embeds offline;
//! - **OpenAI-compatible**: `POST {url}/embeddings` (OpenAI, Ollama, vLLM, TEI),
//!   with retries and backoff on 429 (honouring `Retry-After`), 5xx and timeouts.
//!
//! Every vector is stored with [`Embedder::model`] (name and dimension), and search
//! uses only vectors of the active model; a change of model re-embeds in the
//! background (`knowledge.reembed`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{EmbedderConfig, Secret};

/// Texts sent to a remote endpoint in one request.
pub const REMOTE_BATCH: usize = 64;

/// Attempts of one remote request before its error is returned.
const REMOTE_ATTEMPTS: u32 = 4;

/// Why texts could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The built-in model's files are missing or unreadable.
    #[error("the built-in embedding model could not be loaded from {dir}: {message} (run scripts/bootstrap)")]
    Load {
        /// The directory tried.
        dir: String,
        /// What failed.
        message: String,
    },
    /// The endpoint refused or failed, after retries where they make sense.
    #[error("embedding endpoint: {0}")]
    Remote(String),
    /// The endpoint answered with vectors of another dimension or count.
    #[error("embedding endpoint answered {0}")]
    Shape(String),
}

/// The active embedder; cheap to clone.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Provider>,
    model: String,
    dim: usize,
}

enum Provider {
    /// The weights load on first use (a server that never embeds does not hold them).
    Builtin {
        dir: std::path::PathBuf,
        model: std::sync::OnceLock<Result<model2vec_rs::model::StaticModel, String>>,
    },
    OpenAi {
        url: String,
        model: String,
        key: Option<Secret>,
        timeout: Duration,
    },
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("model", &self.model).field("dim", &self.dim).finish()
    }
}

impl Embedder {
    /// Builds the configured embedder (loading the built-in model's weights).
    pub fn open(config: &EmbedderConfig) -> Result<Embedder, EmbedError> {
        match config {
            EmbedderConfig::Builtin { dir } => Self::builtin(dir),
            EmbedderConfig::OpenAi { url, model, key, dimensions } => Ok(Embedder {
                inner: Arc::new(Provider::OpenAi {
                    url: format!("{}/embeddings", url.as_str().trim_end_matches('/')),
                    model: model.clone(),
                    key: key.clone(),
                    timeout: Duration::from_secs(60),
                }),
                model: format!("{model}@{dimensions}"),
                dim: *dimensions,
            }),
        }
    }

    /// The built-in potion-base-8M model from `dir`: its files are checked now, its
    /// weights (about 60 MB in memory) loaded on the first embedding.
    pub fn builtin(dir: &Path) -> Result<Embedder, EmbedError> {
        let fail = |message: String| EmbedError::Load { dir: dir.display().to_string(), message };
        for name in ["tokenizer.json", "model.safetensors"] {
            std::fs::metadata(dir.join(name)).map_err(|e| fail(format!("{name}: {e}")))?;
        }
        let config = std::fs::read(dir.join("config.json")).map_err(|e| fail(format!("config.json: {e}")))?;
        let config: serde_json::Value =
            serde_json::from_slice(&config).map_err(|e| fail(format!("config.json: {e}")))?;
        let dim = config["hidden_dim"].as_u64().ok_or_else(|| fail("config.json has no hidden_dim".into()))? as usize;
        Ok(Embedder {
            inner: Arc::new(Provider::Builtin { dir: dir.to_path_buf(), model: std::sync::OnceLock::new() }),
            model: format!("potion-base-8M@{dim}"),
            dim,
        })
    }

    /// The built-in model, loaded on first use.
    fn static_model(&self) -> Result<&model2vec_rs::model::StaticModel, EmbedError> {
        let Provider::Builtin { dir, model } = &*self.inner else {
            return Err(EmbedError::Remote("not the built-in model".into()));
        };
        let loaded = model.get_or_init(|| {
            let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
            let m = model2vec_rs::model::StaticModel::from_bytes(
                read("tokenizer.json")?,
                read("model.safetensors")?,
                read("config.json")?,
                None,
            )
            .map_err(|e| e.to_string())?;
            if m.dim() != self.dim {
                return Err(format!("the weights have dimension {}, config.json says {}", m.dim(), self.dim));
            }
            Ok(m)
        });
        loaded.as_ref().map_err(|m| EmbedError::Load { dir: dir.display().to_string(), message: m.clone() })
    }

    /// The model's name and dimension (`potion-base-8M@256`), stored with each vector.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The vectors' dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Whether embedding runs in this process (cheap enough to do inline).
    pub fn is_local(&self) -> bool {
        matches!(*self.inner, Provider::Builtin { .. })
    }

    /// Embeds `texts` (in order), off the async threads for the built-in model.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        match &*self.inner {
            Provider::Builtin { .. } => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.embed_blocking(&texts))
                    .await
                    .map_err(|e| EmbedError::Remote(format!("embedding task: {e}")))?
            }
            Provider::OpenAi { url, model, key, timeout } => {
                let mut out = Vec::with_capacity(texts.len());
                for batch in texts.chunks(REMOTE_BATCH) {
                    out.extend(self.remote(url, model, key.as_ref(), *timeout, batch).await?);
                }
                Ok(out)
            }
        }
    }

    /// Embeds on the calling thread with the built-in model (microseconds a text);
    /// an error for a remote provider.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(self.static_model()?.encode_with_args(texts, Some(512), 256))
    }

    async fn remote(
        &self,
        url: &str,
        model: &str,
        key: Option<&Secret>,
        timeout: Duration,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let body = serde_json::json!({ "model": model, "input": texts, "encoding_format": "float" });
        let bytes =
            crate::http_client::post_json_retrying(url, key.map(|k| k.expose()), timeout, &body, REMOTE_ATTEMPTS)
                .await
                .map_err(|e| EmbedError::Remote(e.to_string()))?;
        match serde_json::from_slice::<Response>(&bytes) {
            Ok(r) => self.vectors(r, texts.len()),
            Err(e) => Err(EmbedError::Shape(format!("a body that is not an embeddings list: {e}"))),
        }
    }

    fn vectors(&self, r: Response, expected: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut data = r.data;
        if data.len() != expected {
            return Err(EmbedError::Shape(format!("{} vectors for {expected} texts", data.len())));
        }
        data.sort_by_key(|d| d.index);
        let mut out = Vec::with_capacity(expected);
        for d in data {
            if d.embedding.len() != self.dim {
                return Err(EmbedError::Shape(format!(
                    "vectors of dimension {} where {} is configured",
                    d.embedding.len(),
                    self.dim
                )));
            }
            out.push(d.embedding);
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(serde::Deserialize)]
struct Datum {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}
