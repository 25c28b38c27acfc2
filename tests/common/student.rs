//! Tiny hybrid students: a tiny random teacher with its hybrid config, a student that
//! differs from its teacher everywhere, token streams, and the f64 KL between the two.
#![allow(dead_code)]
use super::tiny::{random_tensors, tiny_config};
use super::{randn, rng};
use std::collections::HashMap;
use taylorcal::calibrate::init::init_student;
use taylorcal::io::checkpoint::{Checkpoint, HybridConfig};
use taylorcal::io::{Arch, HostTensor, ModelFiles};
use taylorcal::nn::reference;

/// A tiny Qwen2-style teacher (GQA 4/2 heads, q/k/v biases) from `seed`, and the hybrid
/// config that keeps softmax attention in the layers `keep`.
pub fn tiny_hybrid(keep: Vec<usize>, seed: u64) -> (HybridConfig, HashMap<String, HostTensor>) {
    let cfg = tiny_config(Arch::Qwen2);
    let teacher = random_tensors(&cfg, seed);
    (HybridConfig::new(cfg, keep).unwrap(), teacher)
}

/// A checkpoint of `tensors` with no tokenizer, optimizer state or extra files.
pub fn bare_checkpoint(config: HybridConfig, tensors: HashMap<String, HostTensor>, report: serde_json::Value) -> Checkpoint {
    Checkpoint { config, tensors, tokenizer: None, report, optimizer: None, files: vec![] }
}

/// A 3-layer teacher and a converted student (attention kept in `keep`) whose every weight
/// is perturbed, so it differs from its teacher everywhere (not only in the GDN layers).
pub fn tiny_pair(arch: Arch, tied: bool, keep: Vec<usize>, seed: u64) -> (ModelFiles, Checkpoint) {
    let mut cfg = tiny_config(arch);
    cfg.tie_word_embeddings = tied;
    cfg.num_hidden_layers = 3;
    let mut tensors = random_tensors(&cfg, seed);
    if tied {
        tensors.remove("lm_head.weight");
    }
    let hc = HybridConfig::new(cfg.clone(), keep).unwrap();
    let mut student = init_student(&hc, &tensors, seed + 1).unwrap();
    let mut r = rng(seed + 2);
    let mut names: Vec<String> = student.keys().cloned().collect();
    names.sort();
    for n in names {
        for x in student.get_mut(&n).unwrap().data.iter_mut() {
            *x += randn(&mut r, 1, 0.05)[0];
        }
    }
    let files = ModelFiles { config: cfg, tensors, tokenizer: None, source: "tiny".into() };
    (files, bare_checkpoint(hc, student, serde_json::Value::Null))
}

/// `n` random token ids below `vocab`.
pub fn toks(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = rng(seed);
    (0..n).map(|_| (randn(&mut r, 1, 1.0)[0].abs() * vocab as f32) as u32 % vocab as u32).collect()
}

/// f64 KL(teacher || student) averaged over tokens, from the independent reference forward.
pub fn kl_f64(teacher: &[f64], ck: &Checkpoint, ids: &[u32]) -> f64 {
    let s = reference::hybrid_logits(ck, ids);
    let v = ck.config.base.vocab_size;
    let mut total = 0.0;
    for i in 0..ids.len() {
        let lt = taylorcal::ops::nll::cpu::log_softmax(&teacher[i * v..(i + 1) * v]);
        let ls = taylorcal::ops::nll::cpu::log_softmax(&s[i * v..(i + 1) * v]);
        total += lt.iter().zip(&ls).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
    }
    total / ids.len() as f64
}
