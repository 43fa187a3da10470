//! The deployment's key for what the service signs and later takes back from clients (SCIM
//! list cursors): HMAC-SHA256, kept in the database (`scim.cursor_key`) so every node of a
//! deployment holds the same one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of a tag: 128 bits, as many as forging would have to guess.
pub const TAG_LEN: usize = 16;

#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    pub fn new(secret: Vec<u8>) -> SigningKey {
        SigningKey(secret)
    }

    /// The key the migration stored (a DBA rotates it with an UPDATE; what was signed before
    /// then no longer verifies).
    pub async fn load(
        client: &tokio_postgres::Client,
    ) -> Result<SigningKey, tokio_postgres::Error> {
        let row = client
            .query_one("SELECT secret FROM scim.cursor_key", &[])
            .await?;
        Ok(SigningKey(row.get(0)))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The tag of `payload`.
    pub fn sign(&self, payload: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(payload);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        out
    }

    /// Whether `tag` is `payload`'s (compared in constant time).
    pub fn verify(&self, payload: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(payload);
        tag.len() == TAG_LEN && mac.verify_truncated_left(tag).is_ok()
    }

    /// What a client carries for us: base64url of `payload || tag`.
    pub fn seal(&self, payload: &[u8]) -> String {
        let mut p = payload.to_vec();
        p.extend_from_slice(&self.sign(payload));
        URL_SAFE_NO_PAD.encode(p)
    }

    /// The payload of something [`seal`](Self::seal)ed here; `None` when it is not (or is
    /// longer than `max_len` characters, so a client cannot make the server decode
    /// megabytes).
    pub fn open(&self, text: &str, max_len: usize) -> Option<Vec<u8>> {
        if text.len() > max_len {
            return None;
        }
        let mut raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let payload_len = raw.len().checked_sub(TAG_LEN)?;
        let (p, tag) = raw.split_at(payload_len);
        if !self.verify(p, tag) {
            return None;
        }
        raw.truncate(payload_len);
        Some(raw)
    }
}
