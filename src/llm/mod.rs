//! The chat-completions client: one OpenAI-compatible endpoint (OpenAI, Ollama,
//! vLLM, llama.cpp's server) asked for JSON that follows a schema
//! (`response_format: json_schema`), with retries and backoff on 429, 5xx and
//! timeouts through [`crate::http_client::post_json_retrying`]. What the model
//! answers is returned as text: callers parse it leniently (local models wrap JSON
//! in fences and prose).

use std::time::{Duration, Instant};

use crate::config::{LlmConfig, Secret};
use crate::http_client::RemoteError;

/// Attempts of one call before its error is returned.
const ATTEMPTS: u32 = 4;

/// A configured chat-completions endpoint; cheap to clone.
#[derive(Clone)]
pub struct Llm {
    url: String,
    model: String,
    key: Option<Secret>,
    timeout: Duration,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("model", &self.model).finish()
    }
}

/// Why a call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The endpoint failed (after retries where they make sense).
    #[error("{0}")]
    Remote(#[from] RemoteError),
    /// The endpoint answered something that is not a chat completion.
    #[error("not a chat completion: {0}")]
    Shape(String),
}

impl LlmError {
    /// A short stable code for the extraction record.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Remote(e) => e.code(),
            LlmError::Shape(_) => "bad_response",
        }
    }
}

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    /// `system` or `user`.
    pub role: &'static str,
    /// Its text.
    pub content: String,
}

/// The model's answer and how long the call took.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The assistant message's content.
    pub content: String,
    /// Wall time of the call, retries included.
    pub elapsed: Duration,
}

impl Llm {
    /// The client for a configured endpoint.
    pub fn new(config: &LlmConfig) -> Llm {
        Llm {
            url: format!("{}/chat/completions", config.url.as_str().trim_end_matches('/')),
            model: config.model.clone(),
            key: config.key.clone(),
            timeout: config.timeout,
        }
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Asks for an answer following `schema` (named `name`), at temperature 0.
    pub async fn json(&self, messages: &[Message], name: &str, schema: serde_json::Value) -> Result<Answer, LlmError> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": { "name": name, "strict": true, "schema": schema },
            },
        });
        let started = Instant::now();
        let bytes = crate::http_client::post_json_retrying(
            &self.url,
            self.key.as_ref().map(|k| k.expose()),
            self.timeout,
            &body,
            ATTEMPTS,
        )
        .await?;
        let parsed: Completion = serde_json::from_slice(&bytes).map_err(|e| LlmError::Shape(e.to_string()))?;
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| LlmError::Shape("no choices[0].message.content".into()))?;
        Ok(Answer { content, elapsed: started.elapsed() })
    }
}

#[derive(serde::Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(serde::Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(serde::Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}
