//! GGUF pre-tokenizers: `tokenizer.ggml.pre` picks the split the model's own tokenizer.json
//! has (SmolLM2's, GPT-2's, Llama 3's, Qwen2's). Expected pieces are those of the published
//! regular expressions run by Python's `regex` module on the same text, not of this code.
use std::collections::HashMap;
use std::str::FromStr;
use taylorcal::io::gguf::{tokenizer_from_gguf, GgufValue};
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

use crate::common::tiny::tiny_tokenizer_metadata;
use crate::io::assert_mentions;

const TEXT: &str = "I'M sure we'll pay $1234567 for 中文 éè!!\n\n   x\tHE'S";

fn with_pre(pre: Option<GgufValue>) -> HashMap<String, GgufValue> {
    let mut meta: HashMap<String, GgufValue> = tiny_tokenizer_metadata().into_iter().collect();
    if let Some(p) = pre {
        meta.insert("tokenizer.ggml.pre".into(), p);
    }
    meta
}

fn tokenizer(pre: &str) -> Tokenizer {
    tokenizer_from_gguf(&with_pre(Some(GgufValue::String(pre.into()))), "test.gguf").unwrap()
}

/// The pieces the pre-tokenizer cuts `text` into, as substrings of it.
fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
    let mut pts = PreTokenizedString::from(text);
    tok.get_pre_tokenizer().unwrap().pre_tokenize(&mut pts).unwrap();
    pts.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(_, (a, b), _)| text[a..b].to_string()).collect()
}

#[test]
fn each_named_pre_tokenizer_cuts_text_as_its_regex() {
    let digits: Vec<&str> = "1234567".split("").filter(|s| !s.is_empty()).collect();
    let gpt2_tail = [" for", " 中文", " éè", "!!", "\n\n  ", " x", "\t", "HE", "'", "S"];
    let smollm: Vec<&str> =
        ["I", "'", "M", " sure", " we", "'ll", " pay", " $"].into_iter().chain(digits.iter().copied()).chain(gpt2_tail).collect();
    let gpt2: Vec<&str> = ["I", "'", "M", " sure", " we", "'ll", " pay", " $", "1234567"].into_iter().chain(gpt2_tail).collect();
    let head = ["I", "'M", " sure", " we", "'ll", " pay", " $"];
    let tail = [" for", " 中文", " éè", "!!\n\n", "  ", " x", "\tHE", "'S"];
    let llama3: Vec<&str> = head.into_iter().chain(["123", "456", "7"]).chain(tail).collect();
    let qwen2: Vec<&str> = head.into_iter().chain(digits.iter().copied()).chain(tail).collect();
    for (pre, want) in [("smollm", &smollm), ("gpt-2", &gpt2), ("llama-bpe", &llama3), ("qwen2", &qwen2)] {
        assert_eq!(pieces(&tokenizer(pre), TEXT), *want, "tokenizer.ggml.pre = {pre}");
    }
    // no `tokenizer.ggml.pre` (older files): SmolLM2's, as before
    let none = tokenizer_from_gguf(&with_pre(None), "test.gguf").unwrap();
    assert_eq!(pieces(&none, TEXT), smollm);
}

#[test]
fn qwen2_normalises_to_nfc_and_every_tokenizer_survives_tokenizer_json() {
    // "e" + combining acute: NFC makes it one character (2 bytes, 2 byte-level tokens)
    let text = "cafe\u{301}";
    assert_eq!(tokenizer("qwen2").encode(text, false).unwrap().get_ids().len(), 5);
    assert_eq!(tokenizer("llama-bpe").encode(text, false).unwrap().get_ids().len(), 6);
    // written as tokenizer.json (what `export` and HF directories hold) and read back
    for pre in ["smollm", "gpt-2", "llama-bpe", "qwen2"] {
        let tok = tokenizer(pre);
        let back = Tokenizer::from_str(&tok.to_string(false).unwrap()).unwrap();
        for t in [TEXT, text] {
            assert_eq!(back.encode(t, false).unwrap().get_ids(), tok.encode(t, false).unwrap().get_ids(), "{pre}: {t:?}");
        }
    }
}

#[test]
fn an_unknown_or_malformed_pre_tokenizer_is_refused_by_name() {
    let msg = tokenizer_from_gguf(&with_pre(Some(GgufValue::String("bloom".into()))), "model.gguf").unwrap_err().to_string();
    assert_mentions(&msg, &["model.gguf", "tokenizer.ggml.pre", "'bloom'", "llama-bpe", "qwen2"]);
    let msg = tokenizer_from_gguf(&with_pre(Some(GgufValue::U32(3))), "model.gguf").unwrap_err().to_string();
    assert_mentions(&msg, &["model.gguf", "tokenizer.ggml.pre", "not a string"]);
}
