//! Tokenization done once per sweep, not once per run: trained BPEs and tokenized splits
//! are kept under `<results>/cache/tokens/`, named by a hash of everything they depend on
//! (the rendered texts, the tokenizer, the template's output, the fitting settings). A
//! file is content-addressed, so it is never stale; one that does not read back whole is
//! recomputed and written again. Writes go through a temporary file and a rename, so a
//! crash or a concurrent run never leaves half a file under a final name.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::{DataError, Encoded, EncodedSplit, Encoding, Example};

/// Bumped when the encoding of a cached file, or what produces it, changes.
const FORMAT: &[u8] = b"ablate-token-cache-v1";

/// Where cached tokenization lives; `None` computes everything in memory.
#[derive(Debug, Clone, Default)]
pub struct TokenCache {
    dir: Option<PathBuf>,
    /// Read-only caches (`plan`) use what is there and write nothing.
    write: bool,
}

impl TokenCache {
    /// The cache beside a results database: `<results>/cache/tokens`.
    pub fn in_results(results: &Path, write: bool) -> TokenCache {
        TokenCache {
            dir: Some(results.join("cache").join("tokens")),
            write,
        }
    }

    pub fn none() -> TokenCache {
        TokenCache::default()
    }

    fn path(&self, key: &str, ext: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key}.{ext}")))
    }

    /// Writes `bytes` under `path` atomically; a cache that cannot be written is only
    /// slower, so failures are ignored.
    fn store(&self, path: Option<PathBuf>, bytes: &[u8]) {
        let (true, Some(path)) = (self.write, path) else {
            return;
        };
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()));
        if written.is_err() || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// A byte-level BPE trained on `texts` (see `train_tokenizer`), cached by the texts
    /// and the vocabulary size.
    pub fn trained_tokenizer(
        &self,
        texts: &[String],
        vocab_size: usize,
    ) -> Result<Tokenizer, DataError> {
        let mut h = Sha256::new();
        h.update(FORMAT);
        h.update(b"bpe");
        h.update((vocab_size as u64).to_le_bytes());
        for t in texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        let path = self.path(&hex(h), "tokenizer.json");
        if let Some(tok) = path
            .as_ref()
            .filter(|p| p.is_file())
            .and_then(|p| Tokenizer::from_file(p).ok())
        {
            return Ok(tok);
        }
        let tok = super::train_tokenizer(texts, vocab_size)?;
        if let Ok(json) = tok.to_string(false) {
            self.store(path, json.as_bytes());
        }
        Ok(tok)
    }

    /// A preset's tokenizer: a BPE trained on the training examples as `template` writes
    /// them (a checkpoint brings its own and never gets one of these).
    pub fn preset_tokenizer(
        &self,
        train: &[Example],
        template: super::Template,
        vocab_size: usize,
    ) -> Result<Tokenizer, DataError> {
        let texts: Vec<String> = train
            .iter()
            .map(|e| {
                Ok(format!(
                    "{}{}",
                    template.prompt(e)?,
                    template.completion(e)?
                ))
            })
            .collect::<Result<_, DataError>>()?;
        self.trained_tokenizer(&texts, vocab_size)
    }

    /// `encoding.split(tok, examples)`, cached by the tokenizer, the settings and the
    /// rendered texts of every example.
    pub fn split(
        &self,
        tok: &Tokenizer,
        examples: &[Example],
        encoding: &Encoding,
    ) -> Result<EncodedSplit, DataError> {
        if self.dir.is_none() {
            return encoding.split(tok, examples);
        }
        let mut h = Sha256::new();
        h.update(FORMAT);
        h.update(b"split");
        h.update(tok.to_string(false).map_err(super::tok_err)?.as_bytes());
        h.update(
            format!(
                "{:?} {:?} {} {:?}",
                encoding.template, encoding.loss_on, encoding.max_len, encoding.truncation
            )
            .as_bytes(),
        );
        for e in examples {
            // The structured example decides what keep_end leaves out; its JSON covers it.
            let text = serde_json::to_string(e).expect("examples serialize");
            h.update((text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        let path = self.path(&hex(h), "tokens");
        if let Some(split) = path.as_ref().and_then(|p| read_split(p)) {
            return Ok(split);
        }
        let split = encoding.split(tok, examples)?;
        if let Some(bytes) = write_split(&split) {
            self.store(path, &bytes);
        }
        Ok(split)
    }
}

fn hex(h: Sha256) -> String {
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a sequence's scored labels start: every label before it is -100, every one from
/// it on is the token itself (what `encode_example` and the truncations produce).
fn boundary(e: &Encoded) -> Option<usize> {
    let p = e
        .labels
        .iter()
        .position(|&l| l != -100)
        .unwrap_or(e.labels.len());
    let shaped = e.labels.len() == e.ids.len()
        && e.labels[p..]
            .iter()
            .zip(&e.ids[p..])
            .all(|(&l, &i)| l == i as i64);
    shaped.then_some(p)
}

/// `[magic][truncated][dropped][n lengths][lengths][n examples]([len][boundary][ids])*`,
/// little-endian u32 words after the magic; `None` when a sequence has another label shape.
fn write_split(s: &EncodedSplit) -> Option<Vec<u8>> {
    let mut out = FORMAT.to_vec();
    let mut word = |v: usize| out.extend_from_slice(&(v as u32).to_le_bytes());
    word(s.truncated);
    word(s.dropped);
    word(s.lengths.len());
    for &l in &s.lengths {
        word(l);
    }
    word(s.examples.len());
    let mut body = Vec::new();
    for e in &s.examples {
        let p = boundary(e)?;
        body.extend_from_slice(&(e.ids.len() as u32).to_le_bytes());
        body.extend_from_slice(&(p as u32).to_le_bytes());
        for &i in &e.ids {
            body.extend_from_slice(&i.to_le_bytes());
        }
    }
    out.extend_from_slice(&body);
    Some(out)
}

fn read_split(path: &Path) -> Option<EncodedSplit> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    let rest = bytes.strip_prefix(FORMAT)?;
    let mut words = rest
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as usize);
    if rest.len() % 4 != 0 {
        return None;
    }
    let truncated = words.next()?;
    let dropped = words.next()?;
    let n = words.next()?;
    let lengths: Vec<usize> = (0..n).map(|_| words.next()).collect::<Option<_>>()?;
    let m = words.next()?;
    let mut examples = Vec::with_capacity(m);
    for _ in 0..m {
        let len = words.next()?;
        let p = words.next()?;
        if p > len {
            return None;
        }
        let ids: Vec<u32> = (0..len)
            .map(|_| words.next().map(|w| w as u32))
            .collect::<Option<_>>()?;
        let labels = ids
            .iter()
            .enumerate()
            .map(|(k, &i)| if k < p { -100 } else { i as i64 })
            .collect();
        examples.push(Encoded { ids, labels });
    }
    if words.next().is_some() {
        return None;
    }
    Some(EncodedSplit {
        examples,
        truncated,
        dropped,
        lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{synthetic, LossOn, Template, Truncation};

    #[test]
    fn a_split_is_tokenized_once_and_read_back_identical_and_a_bad_file_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TokenCache::in_results(dir.path(), true);
        let ex = synthetic::generate(40, 5, "train");
        let texts: Vec<String> = ex
            .iter()
            .map(|e| {
                format!(
                    "{}{}",
                    super::super::render_prompt(e),
                    super::super::render_completion(e)
                )
            })
            .collect();
        let tok = cache.trained_tokenizer(&texts, 400).unwrap();
        let again = cache.trained_tokenizer(&texts, 400).unwrap();
        assert_eq!(
            tok.to_string(false).unwrap(),
            again.to_string(false).unwrap()
        );
        let enc = Encoding {
            template: Template::Compact,
            loss_on: LossOn::Completion,
            max_len: 100,
            truncation: Truncation::KeepStart,
        };
        let fresh = enc.split(&tok, &ex).unwrap();
        assert!(fresh.truncated > 0, "the limit cuts some examples");
        let first = cache.split(&tok, &ex, &enc).unwrap();
        let files = || -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path().join("cache/tokens"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "tokens"))
                .collect();
            v.sort();
            v
        };
        assert_eq!(files().len(), 1);
        let second = cache.split(&tok, &ex, &enc).unwrap();
        for s in [&first, &second] {
            assert_eq!(s.examples, fresh.examples);
            assert_eq!(
                (s.truncated, s.dropped, &s.lengths),
                (fresh.truncated, fresh.dropped, &fresh.lengths)
            );
        }
        // Other settings are another file.
        let longer = Encoding {
            max_len: 200,
            ..enc
        };
        cache.split(&tok, &ex, &longer).unwrap();
        assert_eq!(files().len(), 2);
        // A damaged file is recomputed, not trusted, and written whole again.
        for f in files() {
            let bytes = std::fs::read(&f).unwrap();
            std::fs::write(&f, &bytes[..bytes.len() - 3]).unwrap();
            assert!(read_split(&f).is_none());
        }
        let redone = cache.split(&tok, &ex, &enc).unwrap();
        assert_eq!(redone.examples, fresh.examples);
        assert_eq!(
            files().iter().filter(|f| read_split(f).is_some()).count(),
            1
        );
        // A read-only cache writes nothing.
        let ro = tempfile::tempdir().unwrap();
        TokenCache::in_results(ro.path(), false)
            .split(&tok, &ex, &enc)
            .unwrap();
        assert!(!ro.path().join("cache").exists());
    }
}
