//! Tokenizers: Hugging Face `tokenizer.json`, or one rebuilt from GGUF metadata.
use super::gguf::GgufValue;
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF `tokenizer.ggml.token_type` values that mark special tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Loads a Hugging Face `tokenizer.json`.
pub fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

fn meta_strings<'a>(meta: &'a HashMap<String, GgufValue>, key: &str, source: &str) -> Result<Vec<&'a str>> {
    let list = meta
        .get(key)
        .ok_or_else(|| anyhow!("{source}: metadata '{key}' is missing"))?
        .as_array()
        .ok_or_else(|| anyhow!("{source}: metadata '{key}' is not an array"))?;
    list.iter().enumerate().map(|(i, v)| v.as_str().ok_or_else(|| anyhow!("{source}: metadata '{key}'[{i}] is not a string"))).collect()
}

/// Ids of the tokens whose `tokenizer.ggml.token_type` is control or user-defined.
fn special_token_ids(meta: &HashMap<String, GgufValue>) -> Vec<usize> {
    let Some(types) = meta.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array) else {
        return Vec::new();
    };
    types
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t.as_i64(), Some(TOKEN_TYPE_CONTROL) | Some(TOKEN_TYPE_USER_DEFINED)))
        .map(|(i, _)| i)
        .collect()
}

/// Builds the byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`) a GGUF file
/// describes: vocab from `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`,
/// SmolLM2's pre-tokenizer (individual digits, then byte-level with the GPT-2 regex),
/// byte-level decoder, control/user-defined tokens as special added tokens, no BOS added.
/// `source` names the file in errors.
pub fn tokenizer_from_gguf(meta: &HashMap<String, GgufValue>, source: &str) -> Result<Tokenizer> {
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| anyhow!("{source}: metadata 'tokenizer.ggml.model' is missing"))?;
    if model != "gpt2" {
        bail!("{source}: tokenizer model '{model}' is not supported (supported: gpt2 byte-level BPE)");
    }
    let tokens = meta_strings(meta, "tokenizer.ggml.tokens", source)?;
    let merges = meta_strings(meta, "tokenizer.ggml.merges", source)?
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow!("{source}: merge {i} ('{m}') is not two tokens separated by a space"))
        })
        .collect::<Result<Vec<_>>>()?;
    let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| anyhow!("{source}: cannot build the BPE tokenizer: {e}"))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()])));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> =
        special_token_ids(meta).into_iter().filter_map(|id| tokens.get(id)).map(|t| AddedToken::from(t.to_string(), true)).collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}
