//! Mail: templates from `templates/`, sending with lettre over SMTP (or to the log when no
//! SMTP server is configured), and the outbox worker.

pub mod outbox;
mod worker;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

pub use worker::{MailWorker, WorkerOptions};

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid SMTP_URL")]
    Url(#[source] lettre::transport::smtp::Error),
    #[error("invalid address {0:?}")]
    Address(String, #[source] lettre::address::AddressError),
    #[error("building the message")]
    Build(#[source] lettre::error::Error),
    #[error("SMTP")]
    Smtp(#[source] lettre::transport::smtp::Error),
    #[error("rendering the mail")]
    Template(#[from] minijinja::Error),
}

/// A rendered mail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The verification mail: the first line of the text template is its subject.
pub fn verification(
    name: &str,
    email: &str,
    code: &str,
    link: &str,
    valid_for: &str,
) -> Result<Rendered, MailError> {
    let values = serde_json::json!({
        "name": name, "email": email, "code": code, "link": link, "valid_for": valid_for,
    });
    let text = crate::templates::render("email_verification.txt", &values)?;
    let (subject, body) = text.split_once('\n').unwrap_or(("", &text));
    Ok(Rendered {
        subject: subject.trim_start_matches("Subject:").trim().to_string(),
        text: body.trim_start().to_string(),
        html: crate::templates::render("email_verification.html", &values)?,
    })
}

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
    /// No SMTP server configured: each mail is logged (codes included), for trying things out.
    Log { from: Mailbox },
}

impl Mailer {
    /// `smtp_url` like `smtp://user:pass@host:587?tls=required` (lettre's URL format);
    /// None logs the mail instead. Connections are pooled and reused between mails.
    pub fn new(smtp_url: Option<&str>, from: &str) -> Result<Mailer, MailError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address(from.into(), e))?;
        Ok(match smtp_url.filter(|u| !u.trim().is_empty()) {
            None => Mailer::Log { from },
            Some(url) => Mailer::Smtp {
                transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(MailError::Url)?
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .build(),
                from,
            },
        })
    }

    pub fn is_log(&self) -> bool {
        matches!(self, Mailer::Log { .. })
    }

    pub async fn send(&self, to: &str, mail: &Rendered) -> Result<(), MailError> {
        let (from, transport) = match self {
            Mailer::Log { .. } => {
                tracing::info!(
                    target: "portcullis::mail",
                    to,
                    subject = %mail.subject,
                    "mail (no SMTP_URL, so it goes to the log):\n{}",
                    mail.text
                );
                return Ok(());
            }
            Mailer::Smtp { transport, from } => (from, transport),
        };
        let to_box: Mailbox = to
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::Address(to.into(), e))?;
        let message = Message::builder()
            .from(from.clone())
            .to(to_box)
            .subject(&mail.subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(mail.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(mail.html.clone()),
                    ),
            )
            .map_err(MailError::Build)?;
        transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(MailError::Smtp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_escape() {
        let m = verification(
            "<Ann>",
            "a@x.org",
            "ABCD2345",
            "http://h/verify-email?user=1&token=t",
            "1 hour",
        )
        .unwrap();
        assert_eq!(m.subject, "Your verification code: ABCD2345");
        assert!(
            m.text.contains("Hello <Ann>,")
                && m.text.contains("http://h/verify-email?user=1&token=t")
        );
        assert!(m.html.contains("Hello &lt;Ann&gt;,"));
        assert!(m
            .html
            .contains("href=\"http:&#x2f;&#x2f;h&#x2f;verify-email?user=1&amp;token=t\""));
        assert!(!m.text.contains("{{") && !m.html.contains("{{"));
    }
}
