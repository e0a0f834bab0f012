//! A checkpoint's own tokenizer, as transformers' `AutoTokenizer` builds it from the folder.
//!
//! The OPT repositories on the Hub ship no `tokenizer.json`: their tokenizer is GPT-2's
//! byte-level BPE as `vocab.json` + `merges.txt`, with its special tokens and BOS behaviour
//! in `tokenizer_config.json` / `special_tokens_map.json`. transformers builds the fast
//! tokenizer from those files (its GPT-2 converter); this does the same with the tokenizers
//! crate, so the ids equal transformers' (tested against `shared/fixtures/opt-hub`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::ModelError;

/// The files a tokenizer is built from, in the order they are looked for.
pub const TOKENIZER_FILES: &str =
    "tokenizer.json, or vocab.json + merges.txt (with tokenizer_config.json)";

/// Where a checkpoint folder's tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// A serialized fast tokenizer.
    Json(PathBuf),
    /// GPT-2-style byte-level BPE files (what facebook/opt-* ship).
    VocabMerges { vocab: PathBuf, merges: PathBuf },
}

impl TokenizerFiles {
    /// The tokenizer files of a checkpoint folder, if it has any.
    pub fn find(dir: &Path) -> Option<TokenizerFiles> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Some(TokenizerFiles::Json(json));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        (vocab.is_file() && merges.is_file())
            .then_some(TokenizerFiles::VocabMerges { vocab, merges })
    }

    /// The files, for messages and content hashes.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            TokenizerFiles::Json(p) => vec![p],
            TokenizerFiles::VocabMerges { vocab, merges } => vec![vocab, merges],
        }
    }

    pub fn load(&self) -> Result<Tokenizer, ModelError> {
        match self {
            TokenizerFiles::Json(p) => Tokenizer::from_file(p).map_err(|e| bad(p, e)),
            TokenizerFiles::VocabMerges { vocab, merges } => byte_level_bpe(vocab, merges),
        }
    }
}

fn bad(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::BadCheckpoint {
        path: path.display().to_string(),
        message: format!("not a tokenizer: {e}"),
    }
}

/// `tokenizer_config.json` merged over `special_tokens_map.json` (transformers reads both;
/// the config wins), or an empty object when neither exists.
fn tokenizer_settings(dir: &Path) -> Result<serde_json::Map<String, Value>, ModelError> {
    let mut out = serde_json::Map::new();
    for name in ["special_tokens_map.json", "tokenizer_config.json"] {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| bad(&p, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(&p, e))?;
        let Value::Object(o) = v else {
            return Err(bad(&p, "not a JSON object"));
        };
        out.extend(o);
    }
    Ok(out)
}

/// A special token as the settings spell it: a string or an `AddedToken` object.
fn special(settings: &serde_json::Map<String, Value>, key: &str) -> Option<AddedToken> {
    match settings.get(key)? {
        Value::String(s) => Some(AddedToken::from(s.clone(), true)),
        Value::Object(o) => {
            let content = o.get("content")?.as_str()?;
            let flag = |k: &str, d: bool| o.get(k).and_then(Value::as_bool).unwrap_or(d);
            Some(
                AddedToken::from(content.to_string(), true)
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .single_word(flag("single_word", false))
                    .normalized(flag("normalized", false)),
            )
        }
        _ => None,
    }
}

/// GPT-2's fast tokenizer from vocab + merges, configured as transformers configures it:
/// byte-level pre-tokenizer and decoder, the special tokens of the settings as special added
/// tokens, and BOS prepended when `add_bos_token` is set (OPT's `</s>`).
fn byte_level_bpe(vocab: &Path, merges: &Path) -> Result<Tokenizer, ModelError> {
    let dir = vocab.parent().unwrap_or(Path::new("."));
    let settings = tokenizer_settings(dir)?;
    let (v, m) = (vocab.to_string_lossy(), merges.to_string_lossy());
    let (vocab_map, merge_list) =
        BPE::read_file(&v, &m).map_err(|e| bad(merges, format!("{v} + {m}: {e}")))?;
    // tokenizers panics on a merge whose result is longer than every vocabulary entry
    // (its buffer is sized by the longest one); such a merge cannot be in the vocabulary.
    let longest = vocab_map.keys().map(String::len).max().unwrap_or(0);
    if let Some((n, (a, b))) = merge_list
        .iter()
        .enumerate()
        .find(|(_, (a, b))| a.len() + b.len() > longest)
    {
        return Err(bad(
            merges,
            format!("merge {} ({a} {b}) makes a token that is not in {v}", n + 1),
        ));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map, merge_list)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .build()
        .map_err(|e| bad(merges, format!("{v} + {m}: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let prefix_space = settings
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    tok.with_pre_tokenizer(Some(ByteLevel::new(prefix_space, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));

    let mut specials: Vec<AddedToken> = ["bos_token", "eos_token", "unk_token", "pad_token"]
        .iter()
        .filter_map(|k| special(&settings, k))
        .collect();
    if let Some(Value::Array(extra)) = settings.get("additional_special_tokens") {
        specials.extend(extra.iter().filter_map(|t| {
            match t {
                Value::String(s) => Some(AddedToken::from(s.clone(), true)),
                Value::Object(o) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .map(|c| AddedToken::from(c.to_string(), true)),
                _ => None,
            }
        }));
    }
    tok.add_special_tokens(specials)
        .map_err(|e| bad(vocab, e))?;

    let add_bos = settings
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let (true, Some(bos)) = (add_bos, special(&settings, "bos_token")) {
        let id = tok
            .token_to_id(&bos.content)
            .ok_or_else(|| bad(vocab, format!("BOS token {:?} is not in it", bos.content)))?;
        let post = TemplateProcessing::builder()
            .try_single(format!("{} $A", bos.content))
            .and_then(|b| b.try_pair(format!("{0} $A {0} $B:1", bos.content)))
            .map_err(|e| bad(vocab, e))?
            .special_tokens(vec![(bos.content.clone(), id)])
            .build()
            .map_err(|e| bad(vocab, e))?;
        tok.with_post_processor(Some(post));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_tokenizer_files_has_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(TokenizerFiles::find(d.path()), None);
        std::fs::write(d.path().join("vocab.json"), "{}").unwrap();
        assert_eq!(
            TokenizerFiles::find(d.path()),
            None,
            "merges.txt is missing"
        );
    }

    #[test]
    fn broken_merges_are_an_error_naming_the_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("vocab.json"), r#"{"a":0,"b":1}"#).unwrap();
        std::fs::write(d.path().join("merges.txt"), "#version: 0.2\na b\n").unwrap();
        let err = TokenizerFiles::find(d.path()).unwrap().load().unwrap_err();
        assert!(err.to_string().contains("merges.txt"), "{err}");
    }
}
