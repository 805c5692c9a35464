//! CLIP's byte-level BPE tokenizer, on the `tokenizers` crate.
//!
//! Two sources give the same tokenizer: a Hugging Face `tokenizer.json`, or
//! OpenAI's `bpe_simple_vocab_16e6.txt.gz` (bundled, the default), from
//! which we build the pipeline Hugging Face's `CLIPTokenizerFast` uses:
//! NFC, whitespace runs to one space, lower-casing; CLIP's split pattern;
//! byte-level BPE with the `</w>` end-of-word suffix; start and end tokens.

use std::io::Read;
use std::path::Path;

use serde_json::json;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// OpenAI's BPE merges (MIT licence), as shipped by OpenAI's `clip` and open_clip.
pub const BUNDLED_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;

const SOT: &str = "<|startoftext|>";
const EOT: &str = "<|endoftext|>";
/// CLIP's pre-tokenisation pattern (OpenAI `simple_tokenizer.py`, as HF writes it).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Prompts tokenised as one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// `[rows, context]` row-major ids, padded with 0 after the end token.
    pub ids: Vec<i64>,
    /// `[rows]`: position of each row's end token.
    pub eot: Vec<i64>,
    pub rows: usize,
    pub context: usize,
}

impl TokenBatch {
    /// The batch cut after the longest row's end token. Under the text
    /// tower's causal mask nothing after a row's end token reaches its
    /// pooled feature, so this gives the same features with far fewer
    /// tokens (CLIP prompts are typically 8 to 20 of the 77).
    pub fn trimmed(&self) -> TokenBatch {
        let keep = self.eot.iter().map(|&e| e as usize + 1).max().unwrap_or(1);
        let ids = self
            .ids
            .chunks(self.context)
            .flat_map(|row| row[..keep].iter().copied())
            .collect();
        TokenBatch {
            ids,
            eot: self.eot.clone(),
            rows: self.rows,
            context: keep,
        }
    }
}

/// CLIP's tokenizer.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    sot: u32,
    eot: u32,
    context: usize,
}

impl ClipTokenizer {
    /// The bundled OpenAI vocabulary (49 408 tokens).
    pub fn bundled() -> Self {
        // The bundled file is known good: this is tested, so it cannot fail.
        Self::from_bpe_gz_bytes(
            BUNDLED_BPE_GZ,
            Path::new("<bundled bpe_simple_vocab_16e6.txt.gz>"),
        )
        .expect("bundled CLIP vocabulary is valid")
    }

    /// From a Hugging Face `tokenizer.json` (e.g. the one in `openai/clip-vit-base-patch16`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let bad = |msg: String| Error::Tokenizer {
            path: path.into(),
            msg,
        };
        // The JSON's syntax first: the tokenizers crate panics on a syntax
        // error inside the `decoder` object (its `expect("Helper")`).
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
        Self::wrap(inner, path)
    }

    /// From OpenAI's `bpe_simple_vocab_16e6.txt.gz`.
    pub fn from_bpe_gz(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        Self::from_bpe_gz_bytes(&bytes, path)
    }

    /// A tokenizer file of either kind, told apart by its name.
    pub fn from_path(path: &Path) -> Result<Self> {
        let name = path.to_string_lossy();
        if name.ends_with(".gz") || name.ends_with(".txt") {
            if name.ends_with(".txt") {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                    path: path.into(),
                    source,
                })?;
                return Self::from_merges_text(&text, path);
            }
            Self::from_bpe_gz(path)
        } else {
            Self::from_file(path)
        }
    }

    fn from_bpe_gz_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        // OpenAI's merges file is 1.6 MB uncompressed: a file that inflates
        // past 64 MiB is refused before it fills the memory.
        const MAX: u64 = 64 << 20;
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX + 1)
            .read_to_string(&mut text)
            .map_err(|e| Error::Tokenizer {
                path: path.into(),
                msg: format!("not a gzip-compressed UTF-8 merges file: {e}"),
            })?;
        if text.len() as u64 > MAX {
            return Err(Error::Tokenizer {
                path: path.into(),
                msg: format!("inflates past {MAX} bytes: not a merges file"),
            });
        }
        Self::from_merges_text(&text, path)
    }

    /// From the text of OpenAI's merges file: a header line, then one merge per line.
    fn from_merges_text(text: &str, path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Tokenizer {
            path: path.into(),
            msg,
        };
        // OpenAI keeps lines 1 ..= 49152 - 256 - 2 (48 894 merges).
        let lines: Vec<&str> = text.split('\n').collect();
        let n_merges = (49152 - 256 - 2).min(lines.len().saturating_sub(1));
        let merges: Vec<(&str, &str)> = lines[1..=n_merges]
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split_once(' ')
                    .ok_or_else(|| bad(format!("bad merge line {l:?}")))
            })
            .collect::<Result<_>>()?;
        if merges.is_empty() {
            return Err(bad("no merges found".into()));
        }
        let bytes = bytes_to_unicode();
        let mut vocab: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
        vocab.extend(bytes.iter().map(|c| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push(SOT.into());
        vocab.push(EOT.into());
        let sot = vocab.len() - 2;
        let eot = vocab.len() - 1;
        let vocab_map: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), json!(i)))
            .collect();
        let merges: Vec<[&str; 2]> = merges.iter().map(|(a, b)| [*a, *b]).collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": sot, "content": SOT, "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": eot, "content": EOT, "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}
            ]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT_PATTERN},
                 "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": true}
            ]},
            "post_processor": {"type": "RobertaProcessing", "sep": [EOT, eot], "cls": [SOT, sot],
                "trim_offsets": false, "add_prefix_space": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": EOT,
                "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab_map, "merges": merges}
        });
        let inner: Tokenizer = spec.to_string().parse().map_err(|e: tokenizers::Error| {
            bad(format!("building the BPE tokenizer failed: {e}"))
        })?;
        Self::wrap(inner, path)
    }

    fn wrap(inner: Tokenizer, path: &Path) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| Error::Tokenizer {
                path: path.into(),
                msg: format!("vocabulary has no {t} token"),
            })
        };
        Ok(Self {
            sot: id(SOT)?,
            eot: id(EOT)?,
            inner,
            context: CONTEXT_LENGTH,
        })
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `<|startoftext|>`.
    pub fn sot(&self) -> u32 {
        self.sot
    }

    /// Id of `<|endoftext|>`.
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// Context length (77).
    pub fn context_length(&self) -> usize {
        self.context
    }

    /// Start token, the text's tokens, end token; a text longer than the
    /// context is cut so that the end token is kept (as HF with
    /// `truncation=True` and OpenAI's `tokenize(truncate=True)` do).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Encode {
            text: text.into(),
            msg: e.to_string(),
        })?;
        let body = enc.get_ids();
        let keep = body.len().min(self.context - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.sot);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eot);
        Ok(ids)
    }

    /// Encodes prompts into a padded `[rows, 77]` batch with end-token positions.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch> {
        let context = self.context;
        let mut ids = vec![0i64; texts.len() * context];
        let mut eot = Vec::with_capacity(texts.len());
        for (row, text) in texts.iter().enumerate() {
            let toks = self.encode(text.as_ref())?;
            for (j, t) in toks.iter().enumerate() {
                ids[row * context + j] = *t as i64;
            }
            eot.push(toks.len() as i64 - 1);
        }
        Ok(TokenBatch {
            ids,
            eot,
            rows: texts.len(),
            context,
        })
    }
}

/// GPT-2's reversible byte → printable-character table, in OpenAI's order.
fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter().filter_map(char::from_u32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_vocabulary_has_clip_size_and_ids() {
        let tok = ClipTokenizer::bundled();
        assert_eq!(tok.vocab_size(), 49408);
        assert_eq!(tok.sot(), 49406);
        assert_eq!(tok.eot(), 49407);
    }

    #[test]
    fn long_text_keeps_end_token() {
        let tok = ClipTokenizer::bundled();
        let text = "word ".repeat(200);
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[76], 49407);
        let batch = tok.encode_batch(&[text.as_str(), "a"]).unwrap();
        assert_eq!(batch.eot, vec![76, 2]);
        assert_eq!(batch.ids[77 + 3], 0);
        let short = tok.encode_batch(&["a photo", "a"]).unwrap().trimmed();
        assert_eq!(short.context, 4);
        assert_eq!(
            short.ids,
            vec![49406, 320, 1125, 49407, 49406, 320, 49407, 0]
        );
    }
}
