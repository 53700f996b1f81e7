//! age encryption of snapshots (the age v1 format, so `age -d` and `rage -d` read them): to the
//! cluster's X25519 recipients, streamed chunk by chunk. kiln keeps only the public keys; the one
//! place that decrypts is `kiln restore`, with an identity file the operator hands it.
//!
//! Encryption runs on the caller's task without blocking: age's stream writer writes into a
//! buffer this module drains after each chunk, so a chunk's ciphertext leaves as soon as age has
//! sealed it (age seals 64 KiB at a time) and nothing grows with the snapshot.

use std::io::Write;
use std::sync::{Arc, Mutex};

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{AsyncReadExt, Stream, StreamExt, TryStreamExt};

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("`{0}` is not an age X25519 recipient (age1…)")]
    BadRecipient(String),
    #[error("no age recipient to encrypt to")]
    NoRecipient,
    #[error("line {line} of the identity file is not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    BadIdentity { line: usize },
    #[error("the identity file holds no age identity")]
    NoIdentity,
    #[error("age encryption: {0}")]
    Encrypt(String),
    #[error("age decryption: {0}")]
    Decrypt(String),
    #[error("reading the encrypted stream: {0}")]
    Input(String),
}

/// Parses `spec.backup.ageRecipients`.
pub fn parse_recipients(list: &[String]) -> Result<Vec<Recipient>, CryptError> {
    if list.is_empty() {
        return Err(CryptError::NoRecipient);
    }
    list.iter()
        .map(|r| {
            r.trim()
                .parse::<Recipient>()
                .map_err(|_| CryptError::BadRecipient(r.clone()))
        })
        .collect()
}

/// Parses an identity file as `age-keygen` writes it: `#` comments, blank lines, one
/// `AGE-SECRET-KEY-1…` per line. The error names the line, never its content.
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, CryptError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(
            line.parse::<Identity>()
                .map_err(|_| CryptError::BadIdentity { line: i + 1 })?,
        );
    }
    if out.is_empty() {
        return Err(CryptError::NoIdentity);
    }
    Ok(out)
}

/// An identity as the identity file holds it (tests and the operator's tooling).
pub fn identity_to_string(identity: &Identity) -> String {
    identity.to_string().expose_secret().to_owned()
}

/// A `Write` whose bytes the owner takes out between writes.
#[derive(Clone, Default)]
struct Drain(Arc<Mutex<Vec<u8>>>);

impl Drain {
    fn take(&self) -> Bytes {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Bytes::from(std::mem::take(&mut *buf))
    }
}

impl Write for Drain {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One age file being written: feed plaintext, take ciphertext.
pub struct Encrypting {
    writer: age::stream::StreamWriter<Drain>,
    out: Drain,
}

impl Encrypting {
    pub fn new(recipients: &[Recipient]) -> Result<Self, CryptError> {
        if recipients.is_empty() {
            return Err(CryptError::NoRecipient);
        }
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        let out = Drain::default();
        let writer = encryptor
            .wrap_output(out.clone())
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        Ok(Self { writer, out })
    }

    /// Encrypts `plaintext`; returns the ciphertext ready so far (the header first, then each
    /// sealed 64 KiB chunk; often empty).
    pub fn update(&mut self, plaintext: &[u8]) -> Result<Bytes, CryptError> {
        self.writer
            .write_all(plaintext)
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        Ok(self.out.take())
    }

    /// Seals the last chunk; returns the rest of the ciphertext.
    pub fn finish(self) -> Result<Bytes, CryptError> {
        let out = self.out.clone();
        self.writer
            .finish()
            .map_err(|e| CryptError::Encrypt(e.to_string()))?;
        Ok(out.take())
    }
}

/// Encrypts a stream of plaintext chunks into a stream of ciphertext chunks.
pub fn encrypt_stream<S, E>(
    input: S,
    recipients: &[Recipient],
) -> Result<impl Stream<Item = Result<Bytes, CryptError>> + Send + 'static, CryptError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let enc = Encrypting::new(recipients)?;
    Ok(futures::stream::try_unfold(
        (input, Some(enc)),
        |(mut input, enc)| async move {
            let Some(mut enc) = enc else {
                return Ok(None);
            };
            loop {
                match input.next().await {
                    Some(Ok(chunk)) => {
                        let out = enc.update(&chunk)?;
                        if !out.is_empty() {
                            return Ok(Some((out, (input, Some(enc)))));
                        }
                    }
                    Some(Err(e)) => return Err(CryptError::Input(e.to_string())),
                    None => {
                        let out = enc.finish()?;
                        return Ok(Some((out, (input, None))));
                    }
                }
            }
        },
    ))
}

/// Decrypts an age file read as a stream with the operator's identities. Each chunk handed out
/// has been authenticated; a file cut short or altered ends the stream with an error (age checks
/// every chunk's tag and marks the last one), so a consumer must treat data as good only once the
/// stream ended without one.
pub async fn decrypt_stream<S, E>(
    input: S,
    identities: &[Identity],
) -> Result<BoxStream<'static, Result<Bytes, CryptError>>, CryptError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let reader = input
        .map_err(|e| std::io::Error::other(e.to_string()))
        .into_async_read();
    let decryptor = age::Decryptor::new_async(reader)
        .await
        .map_err(|e| CryptError::Decrypt(e.to_string()))?;
    let plain = decryptor
        .decrypt_async(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| CryptError::Decrypt(e.to_string()))?;
    Ok(futures::stream::try_unfold(plain, |mut plain| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let n = plain
            .read(&mut buf)
            .await
            .map_err(|e| CryptError::Decrypt(e.to_string()))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), plain)))
    })
    .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
        data.chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    async fn collect<S: Stream<Item = Result<Bytes, CryptError>> + Unpin>(
        mut s: S,
    ) -> Result<Vec<u8>, CryptError> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_stream_round_trips_and_only_the_identity_opens_it() {
        let id = Identity::generate();
        let other = Identity::generate();
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let enc = encrypt_stream(
            futures::stream::iter(chunks(&plain, 1024)),
            &[id.to_public()],
        )
        .unwrap();
        let cipher = collect(Box::pin(enc)).await.unwrap();
        assert!(cipher.starts_with(b"age-encryption.org/v1\n"));
        assert!(!cipher.windows(64).any(|w| w == &plain[..64]));

        let ids = parse_identities(&format!("# key\n\n{}\n", identity_to_string(&id))).unwrap();
        let dec = decrypt_stream(futures::stream::iter(chunks(&cipher, 777)), &ids)
            .await
            .unwrap();
        assert_eq!(collect(dec).await.unwrap(), plain);

        let wrong = decrypt_stream(futures::stream::iter(chunks(&cipher, 777)), &[other]).await;
        assert!(matches!(wrong, Err(CryptError::Decrypt(_))));

        // Cut short at a chunk boundary or altered: the stream ends in an error, never quietly.
        let cut = &cipher[..cipher.len() - 100];
        let dec = decrypt_stream(futures::stream::iter(chunks(cut, 777)), &ids)
            .await
            .unwrap();
        assert!(collect(dec).await.is_err());
        let mut flipped = cipher.clone();
        let at = flipped.len() - 10;
        flipped[at] ^= 1;
        let dec = decrypt_stream(futures::stream::iter(chunks(&flipped, 777)), &ids)
            .await
            .unwrap();
        assert!(collect(dec).await.is_err());
    }

    #[test]
    fn recipients_and_identities_are_checked() {
        assert!(matches!(
            parse_recipients(&[]),
            Err(CryptError::NoRecipient)
        ));
        assert!(parse_recipients(&["age1nope".into()]).is_err());
        let id = Identity::generate();
        assert_eq!(
            parse_recipients(&[id.to_public().to_string()])
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            parse_identities("# nothing\n"),
            Err(CryptError::NoIdentity)
        ));
        assert!(matches!(
            parse_identities("\nAGE-SECRET-KEY-1XYZ\n"),
            Err(CryptError::BadIdentity { line: 2 })
        ));
    }
}
