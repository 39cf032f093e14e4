//! Outgoing mail: SMTP when `CARMENTA_SMTP_URL` is set, otherwise the outbox (a
//! table the operator reads with `carmenta mail`, plus a log line with the link).

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Config;

/// One message to send.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The user it is for (the outbox row is deleted with them).
    pub user_id: Option<Uuid>,
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// The link the mail carries, for the outbox log line.
    pub link: Option<String>,
}

/// Sends mail over SMTP or into the outbox.
#[derive(Clone)]
pub struct Mailer {
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("smtp", &self.smtp.is_some()).field("from", &self.from.to_string()).finish()
    }
}

/// Why mail could not be set up or sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// `CARMENTA_MAIL_FROM` or a recipient is not a mailbox.
    #[error("{what}: {source}")]
    Address {
        /// Which address.
        what: &'static str,
        /// Why.
        source: lettre::address::AddressError,
    },
    /// `CARMENTA_SMTP_URL` is not usable, or the server refused the mail.
    #[error("{what}: {source}")]
    Smtp {
        /// `CARMENTA_SMTP_URL` or `SMTP`.
        what: &'static str,
        /// Why.
        source: lettre::transport::smtp::Error,
    },
    /// The message could not be built.
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
    /// Writing to the outbox failed.
    #[error("writing the outbox: {0}")]
    Outbox(#[from] sqlx::Error),
}

impl Mailer {
    /// Builds the mailer for `config`.
    pub fn from_config(config: &Config) -> Result<Mailer, MailError> {
        let from: Mailbox =
            config.mail_from.parse().map_err(|source| MailError::Address { what: "CARMENTA_MAIL_FROM", source })?;
        let smtp = match &config.smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
                    .map_err(|source| MailError::Smtp { what: "CARMENTA_SMTP_URL", source })?
                    .timeout(Some(std::time::Duration::from_secs(10)))
                    .build(),
            ),
            None => None,
        };
        Ok(Mailer { smtp, from })
    }

    /// Whether mail goes out over SMTP (else to the outbox).
    pub fn uses_smtp(&self) -> bool {
        self.smtp.is_some()
    }

    /// Sends `mail`.
    pub async fn send(&self, pool: &PgPool, mail: Mail) -> Result<(), MailError> {
        match &self.smtp {
            Some(smtp) => {
                let to: Mailbox = mail.to.parse().map_err(|source| MailError::Address { what: "recipient", source })?;
                let msg = Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(mail.subject.clone())
                    .header(lettre::message::header::ContentType::TEXT_PLAIN)
                    .body(mail.body.clone())?;
                smtp.send(msg).await.map_err(|source| MailError::Smtp { what: "SMTP", source })?;
                tracing::info!(subject = %mail.subject, "mail sent over SMTP");
                Ok(())
            }
            None => {
                crate::db::shared::insert_outbox_mail(pool, mail.user_id, &mail.to, &mail.subject, &mail.body).await?;
                // The embedded default has no SMTP: the operator follows the link from here.
                tracing::info!(to = %mail.to, subject = %mail.subject, link = mail.link.as_deref().unwrap_or(""), "mail written to the outbox (no SMTP configured; read it with `carmenta mail`)");
                Ok(())
            }
        }
    }
}

/// An outbox message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxMail {
    /// Id.
    pub id: i64,
    /// Recipient.
    pub to_addr: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// When it was written.
    pub created_at: time::OffsetDateTime,
}

/// The newest outbox messages, optionally for one recipient.
pub async fn outbox(pool: &PgPool, to: Option<&str>, limit: i64) -> Result<Vec<OutboxMail>, sqlx::Error> {
    crate::db::shared::outbox_mail(pool, to, limit).await
}
