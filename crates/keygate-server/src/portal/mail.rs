//! Sign-in mail over SMTP (lettre on tokio; TLS by rustls with the ring provider).
//!
//! The recipient is a stored, normalized address (no whitespace or control characters), and
//! lettre builds the headers itself, so nothing a visitor types can add a header.

use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{PortalSettings, SmtpSettings};

/// How long one SMTP conversation may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("no [portal.smtp] is configured")]
    NotConfigured,
    #[error("bad address `{0}`")]
    Address(String),
    #[error("environment variable `{0}` (SMTP credentials) is not set")]
    Credentials(String),
    #[error("cannot build the mail: {0}")]
    Build(String),
    #[error("the mail relay refused or could not be reached: {0}")]
    Send(String),
}

/// Sends the portal's mail, or knows it cannot.
#[derive(Clone, Debug)]
pub struct Mailer {
    smtp: Option<SmtpSettings>,
}

impl Mailer {
    pub fn new(smtp: Option<SmtpSettings>) -> Mailer {
        Mailer { smtp }
    }

    pub fn is_configured(&self) -> bool {
        self.smtp.is_some()
    }

    fn transport(smtp: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
        let tls =
            || TlsParameters::new(smtp.host.clone()).map_err(|e| MailError::Build(e.to_string()));
        let tls = if smtp.implicit_tls {
            Tls::Wrapper(tls()?)
        } else if smtp.starttls {
            Tls::Required(tls()?)
        } else {
            Tls::None
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(SEND_TIMEOUT));
        if let Some((user_var, password_var)) = &smtp.credentials_env {
            let read =
                |var: &String| std::env::var(var).map_err(|_| MailError::Credentials(var.clone()));
            builder = builder.credentials(Credentials::new(read(user_var)?, read(password_var)?));
        }
        Ok(builder.build())
    }

    /// Mails a sign-in link to `to`.
    ///
    /// # Errors
    /// [`MailError`].
    pub async fn send_sign_in(
        &self,
        settings: &PortalSettings,
        to: &str,
        link: &str,
    ) -> Result<(), MailError> {
        let smtp = self.smtp.as_ref().ok_or(MailError::NotConfigured)?;
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|_| MailError::Address(smtp.from.clone()))?;
        let to: Mailbox = to.parse().map_err(|_| MailError::Address(to.to_owned()))?;
        let minutes = super::LINK_TTL.as_secs() / 60;
        let body = format!(
            "Sign in to {name}:\n\n{link}\n\nThe link works once, for {minutes} minutes. \
             If you did not ask to sign in, ignore this mail.\n",
            name = settings.name,
        );
        let message = Message::builder()
            .from(from)
            .to(to)
            .subject(format!("Sign in to {}", settings.name))
            .header(ContentType::TEXT_PLAIN)
            // 7bit keeps the link on one line as written (quoted-printable would fold it);
            // a provider name outside ASCII falls back to lettre's choice.
            .body(
                Body::new_with_encoding(body.clone(), ContentTransferEncoding::SevenBit)
                    .unwrap_or_else(|_| Body::new(body)),
            )
            .map_err(|e| MailError::Build(e.to_string()))?;
        let transport = Self::transport(smtp)?;
        transport
            .send(message)
            .await
            .map_err(|e| MailError::Send(e.to_string()))?;
        Ok(())
    }
}
