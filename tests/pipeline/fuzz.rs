//! A seeded mutation fuzzer over the model readers. Valid tiny files (a GGUF with its
//! tokenizer; Hugging Face directories, single-file and sharded; a hybrid checkpoint) are
//! mutated at random: bit flips, 1-8 bytes overwritten with boundary values, truncation,
//! duplicated or removed byte ranges, mostly inside the headers, and structured edits
//! (GGUF metadata values, safetensors header JSON, config.json fields, shard names). Each
//! mutant goes through the public loaders (and, when a tokenizer comes back, one encode
//! and decode) under `catch_unwind`; every input must give Ok or an error naming the file
//! or directory it was loaded from. A panic fails the test; an abort would take the test
//! binary down (so every size a reader allocates from is bounded first).
//!
//! Each of the three targets runs [`DEFAULT_INPUTS`] = 4000 inputs, 12,000 in all (about
//! 30 s together in the debug profile on two busy cores) and prints its figures;
//! `TAYLORCAL_FUZZ_INPUTS` sets another count per target, e.g. for a long pass (60,000 per
//! target ran clean once, in 6 minutes).
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use taylorcal::io::checkpoint::{load_checkpoint, save_checkpoint};
use taylorcal::io::gguf::{write_gguf, GgufFile, GgufTensorData, GgufValue};
use taylorcal::io::hf::save_hf_dir;
use taylorcal::io::{load_model, Arch, ModelConfig};

use crate::common::student::{bare_checkpoint, tiny_hybrid};
use crate::common::tiny::*;

/// Inputs per target when `TAYLORCAL_FUZZ_INPUTS` is not set.
const DEFAULT_INPUTS: usize = 4000;

fn inputs() -> usize {
    std::env::var("TAYLORCAL_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_INPUTS)
}

/// A smaller model than `tiny_config` (one layer, every row 32 wide for Q8_0), so that
/// thousands of loads stay quick.
fn fuzz_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        intermediate_size: 32,
        vocab_size: TINY_VOCAB_WITH_TOKENIZER,
        ..tiny_config(arch)
    }
}

// ---------------------------------------------------------------------------
// byte mutations

/// Little-endian boundary values, written 1, 2, 4 or 8 bytes wide.
const BOUNDARY: [u64; 12] =
    [0, 1, 2, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, i64::MIN as u64, u64::MAX];

/// A position: mostly inside `bytes[..hot]` (a header), sometimes anywhere.
fn position(rng: &mut StdRng, len: usize, hot: usize) -> usize {
    let end = if rng.random_bool(0.8) { hot.clamp(1, len.max(1)) } else { len.max(1) };
    rng.random_range(0..end)
}

/// One to three random byte-level mutations; returns what was done.
fn mutate_bytes(rng: &mut StdRng, bytes: &mut Vec<u8>, hot: usize) -> String {
    let mut done = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        if bytes.is_empty() {
            break;
        }
        let at = position(rng, bytes.len(), hot);
        match rng.random_range(0..6) {
            0 => {
                let bit = rng.random_range(0..8);
                bytes[at] ^= 1 << bit;
                done.push(format!("flip bit {bit} at {at}"));
            }
            1 => {
                let width = [1, 2, 4, 8][rng.random_range(0..4)];
                let v = BOUNDARY[rng.random_range(0..BOUNDARY.len())];
                for (i, b) in v.to_le_bytes().into_iter().take(width).enumerate() {
                    if let Some(x) = bytes.get_mut(at + i) {
                        *x = b;
                    }
                }
                done.push(format!("write {v:#x} ({width} bytes) at {at}"));
            }
            2 => {
                bytes.truncate(at);
                done.push(format!("truncate at {at}"));
            }
            3 => {
                let end = (at + rng.random_range(1..=64)).min(bytes.len());
                let range = bytes[at..end].to_vec();
                let to = position(rng, bytes.len(), hot);
                bytes.splice(to..to, range);
                done.push(format!("copy {at}..{end} to {to}"));
            }
            4 => {
                let end = (at + rng.random_range(1..=64)).min(bytes.len());
                bytes.drain(at..end);
                done.push(format!("remove {at}..{end}"));
            }
            _ => {
                let v = rng.random();
                bytes[at] = v;
                done.push(format!("byte {v:#x} at {at}"));
            }
        }
    }
    done.join(", ")
}

/// A JSON value a config field or header entry should not hold.
fn odd_json(rng: &mut StdRng) -> Value {
    let choices = [
        json!(0),
        json!(1),
        json!(-1),
        json!(3),
        json!(1.5),
        json!(1e300),
        json!(1_000_000_000_000u64),
        json!(1u64 << 40),
        json!(u32::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!("x"),
        json!(null),
        json!(true),
        json!([]),
        json!([1, 2]),
        json!({}),
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

// ---------------------------------------------------------------------------
// the run

/// Outcomes of one target's pass.
#[derive(Default)]
struct Tally {
    ok: usize,
    err: usize,
    failures: Vec<String>,
}

impl Tally {
    /// Runs `load` under `catch_unwind`; an error must name `named` (a path).
    fn check(&mut self, what: &str, named: &Path, load: impl FnOnce() -> anyhow::Result<()>) {
        match catch_unwind(AssertUnwindSafe(load)) {
            Ok(Ok(())) => self.ok += 1,
            Ok(Err(e)) => {
                self.err += 1;
                let msg = format!("{e:#}");
                if !msg.contains(&named.display().to_string()) {
                    self.failures.push(format!("{what}: error does not name {}: {msg}", named.display()));
                }
            }
            Err(panic) => {
                let text = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                self.failures.push(format!("{what}: panicked: {}", text.unwrap_or_default()));
            }
        }
    }

    fn finish(self, target: &str, n: usize) {
        eprintln!("fuzz {target}: {n} inputs, {} loaded, {} refused with an error, {} failures", self.ok, self.err, self.failures.len());
        for f in self.failures.iter().take(10) {
            eprintln!("  {f}");
        }
        assert!(self.failures.is_empty(), "fuzz {target}: {} of {n} inputs panicked or gave an unnamed error", self.failures.len());
    }
}

/// Loads a model and, when it comes with a tokenizer, encodes and decodes a text with it.
fn load_and_use(path: &Path) -> anyhow::Result<()> {
    let m = load_model(path)?;
    if let Some(tok) = m.tokenizer {
        let enc = tok.encode("<|im_start|>hello the world 12 éè!", false).map_err(|e| anyhow::anyhow!("{e}"))?;
        tok.decode(enc.get_ids(), false).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// The byte offset where a GGUF file's tensor data starts (its header's length).
fn gguf_data_start(path: &Path, len: usize) -> usize {
    let f = GgufFile::open(path).unwrap();
    let data: usize = f.tensors.iter().map(|t| t.offset + f.tensor_bytes(t).unwrap().len()).max().unwrap();
    len - data
}

/// The length of a safetensors file's header (the u64 length and the JSON).
fn safetensors_header_len(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// A GGUF metadata value of a random type, often a boundary value.
fn odd_gguf_value(rng: &mut StdRng) -> GgufValue {
    match rng.random_range(0..10) {
        0 => GgufValue::U32(u32::MAX),
        1 => GgufValue::U64(u64::MAX),
        2 => GgufValue::I64(i64::MIN),
        3 => GgufValue::I32(-1),
        4 => GgufValue::U32(0),
        5 => GgufValue::F32(f32::NAN),
        6 => GgufValue::String("x".into()),
        7 => GgufValue::Array(vec![]),
        8 => GgufValue::Array(vec![GgufValue::String("a b".into()); 3]),
        _ => GgufValue::U64(rng.random::<u64>() >> rng.random_range(0..64)),
    }
}

/// A GGUF file with its tokenizer (Q8_0 matrices, F32 vectors). Byte mutations, mostly
/// in the header (metadata, tensor infos), and metadata values replaced before writing.
#[test]
fn fuzz_gguf_reader() {
    let n = inputs();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fuzz_config(Arch::Llama);
    let tensors = random_tensors(&cfg, 61);
    let (good, path) = (tmp.path().join("good.gguf"), tmp.path().join("fuzz.gguf"));
    write_model_gguf(&good, &cfg, "llama", &tensors, GgufTensorData::Q8_0, tiny_tokenizer_metadata());
    load_and_use(&good).unwrap();
    let pristine = std::fs::read(&good).unwrap();
    let hot = gguf_data_start(&good, pristine.len());
    let mut metadata = gguf_metadata(&cfg, "llama");
    metadata.extend(tiny_tokenizer_metadata());
    let list = gguf_f32_list(&tensors);

    let mut rng = StdRng::seed_from_u64(0x6767_7566);
    let mut tally = Tally::default();
    for i in 0..n {
        let what = if i % 5 == 4 {
            let mut meta = metadata.clone();
            let k = rng.random_range(0..meta.len());
            let what = if rng.random_bool(0.2) {
                format!("#{i} metadata '{}' removed", meta.swap_remove(k).0)
            } else {
                meta[k].1 = odd_gguf_value(&mut rng);
                format!("#{i} metadata '{}' = {:?}", meta[k].0, meta[k].1)
            };
            write_gguf(&path, &meta, &list).unwrap();
            what
        } else {
            let mut bytes = pristine.clone();
            let what = mutate_bytes(&mut rng, &mut bytes, hot);
            std::fs::write(&path, &bytes).unwrap();
            format!("#{i} {what}")
        };
        tally.check(&what, &path, || load_and_use(&path));
    }
    tally.finish("GGUF", n);
}

/// The safetensors header JSON of `bytes` edited at random (a tensor's shape, offsets or
/// dtype set to odd values, a tensor removed or copied under another name), data kept.
fn edit_safetensors_header(rng: &mut StdRng, bytes: &[u8]) -> (Vec<u8>, String) {
    let hl = safetensors_header_len(bytes);
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..hl]).unwrap();
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = names[rng.random_range(0..names.len())].clone();
    let what = match rng.random_range(0..6) {
        0 => {
            let dims = rng.random_range(0..4);
            let shape: Vec<Value> =
                (0..dims).map(|_| if rng.random_bool(0.5) { odd_json(rng) } else { json!(rng.random_range(0..100)) }).collect();
            header[&name]["shape"] = Value::Array(shape);
            "shape"
        }
        1 => {
            let big = [0u64, 1, 7, 1 << 32, u64::MAX / 2, u64::MAX][rng.random_range(0..6)];
            header[&name]["data_offsets"][rng.random_range(0..2)] = json!(big);
            "data_offsets"
        }
        2 => {
            let dtypes = ["F64", "I8", "U8", "BOOL", "F8_E4M3", "F4", "I64", "XX", "BF16", "F16"];
            header[&name]["dtype"] = json!(dtypes[rng.random_range(0..dtypes.len())]);
            "dtype"
        }
        3 => {
            header.remove(&name);
            "removed"
        }
        4 => {
            let copy = header[&name].clone();
            header.insert(format!("{name}.copy"), copy);
            "copied"
        }
        _ => {
            header[&name] = odd_json(rng);
            "replaced"
        }
    };
    let text = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[hl..]);
    (out, format!("header edit: tensor '{name}' {what}"))
}

/// Edits a JSON object file at random: a field set to an odd value or removed.
fn edit_json_fields(rng: &mut StdRng, text: &[u8]) -> (Vec<u8>, String) {
    let mut obj: serde_json::Map<String, Value> = serde_json::from_slice(text).unwrap();
    let keys: Vec<String> = obj.keys().cloned().collect();
    let key = keys[rng.random_range(0..keys.len())].clone();
    let what = if rng.random_bool(0.2) {
        obj.remove(&key);
        format!("'{key}' removed")
    } else {
        let v = odd_json(rng);
        let what = format!("'{key}' = {v}");
        obj.insert(key, v);
        what
    };
    (serde_json::to_vec(&Value::Object(obj)).unwrap(), what)
}

/// Pristine files of a directory, rewritten with one of them mutated for each input.
struct DirFiles {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

impl DirFiles {
    fn read(dir: &Path) -> DirFiles {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        DirFiles { dir: dir.to_path_buf(), files }
    }

    /// Writes every file, `name` as `bytes` instead of its pristine contents.
    fn write_with(&self, name: &str, bytes: &[u8]) {
        for (n, b) in &self.files {
            std::fs::write(self.dir.join(n), if n == name { bytes } else { b }).unwrap();
        }
    }

    /// One mutation of one file: safetensors bytes or header, JSON fields or bytes.
    fn mutate(&self, rng: &mut StdRng, i: usize) -> String {
        let (name, bytes) = &self.files[rng.random_range(0..self.files.len())];
        let (out, what) = if name.ends_with(".safetensors") {
            if rng.random_bool(0.4) {
                edit_safetensors_header(rng, bytes)
            } else {
                let mut b = bytes.clone();
                let what = mutate_bytes(rng, &mut b, safetensors_header_len(bytes));
                (b, what)
            }
        } else if rng.random_bool(0.7) {
            edit_json_fields(rng, bytes)
        } else {
            let mut b = bytes.clone();
            let what = mutate_bytes(rng, &mut b, bytes.len());
            (b, what)
        };
        self.write_with(name, &out);
        format!("#{i} {name}: {what}")
    }
}

/// Hugging Face directories: one f32 `model.safetensors`, and two shards with an index
/// (whose shard names are also set to paths outside the directory, empty, or missing).
#[test]
fn fuzz_safetensors_reader() {
    let n = inputs();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fuzz_config(Arch::Qwen2);
    let tensors = random_tensors(&cfg, 62);
    let single = tmp.path().join("single");
    save_hf_dir(&single, &cfg, &tensors, None).unwrap();
    let sharded = tmp.path().join("sharded");
    let shards = ["model-1.safetensors", "model-2.safetensors"];
    write_sharded_hf_dir(&sharded, &cfg, &tensors, shards, [safetensors::Dtype::F32; 2], &[]);
    let index: Value = serde_json::from_slice(&std::fs::read(sharded.join("model.safetensors.index.json")).unwrap()).unwrap();
    std::fs::write(tmp.path().join("outside.safetensors"), std::fs::read(sharded.join("model-2.safetensors")).unwrap()).unwrap();
    let dirs = [DirFiles::read(&single), DirFiles::read(&sharded)];
    for d in &dirs {
        load_model(&d.dir).unwrap();
    }

    let mut rng = StdRng::seed_from_u64(0x7361_6665);
    let mut tally = Tally::default();
    let bad_names =
        ["../outside.safetensors", "/etc/passwd", "", ".", "sub/../model-1.safetensors", "./model-1.safetensors", "missing.safetensors"];
    for i in 0..n {
        let d = &dirs[i % 2];
        let what = if i % 2 == 1 && rng.random_bool(0.2) {
            let mut index = index.clone();
            let map = index["weight_map"].as_object_mut().unwrap();
            let key = map.keys().nth(rng.random_range(0..map.len())).unwrap().clone();
            let name = bad_names[rng.random_range(0..bad_names.len())];
            map.insert(key.clone(), json!(name));
            d.write_with("model.safetensors.index.json", index.to_string().as_bytes());
            format!("#{i} index: '{key}' in '{name}'")
        } else {
            d.mutate(&mut rng, i)
        };
        tally.check(&what, &d.dir, || load_model(&d.dir).map(|_| ()));
    }
    tally.finish("safetensors", n);
}

/// A hybrid checkpoint: its `config.json` (the teacher's fields and the hybrid ones) and
/// `model.safetensors`.
#[test]
fn fuzz_checkpoint_reader() {
    let n = inputs();
    let tmp = tempfile::tempdir().unwrap();
    let (hc, teacher) = tiny_hybrid(vec![1], 63);
    let student = taylorcal::calibrate::init::init_student(&hc, &teacher, 64).unwrap();
    let dir = tmp.path().join("student");
    save_checkpoint(&dir, &bare_checkpoint(hc, student, json!({"v": 1}))).unwrap();
    let files = DirFiles::read(&dir);
    load_checkpoint(&dir).unwrap();

    let mut rng = StdRng::seed_from_u64(0x636b_7074);
    let mut tally = Tally::default();
    for i in 0..n {
        let what = files.mutate(&mut rng, i);
        tally.check(&what, &dir, || load_checkpoint(&dir).map(|_| ()));
    }
    tally.finish("checkpoint", n);
}
