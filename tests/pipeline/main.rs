//! The library layer by layer and stage by stage, on tiny random models, in the order the
//! data flows: file formats, text in, the decoder, the GDN block, the training pass,
//! calibration, layer selection, distillation, output safety, option checks; then the
//! crate's layering itself.
//!
//! Files, in order: io, fuzz, tokenizer, data, shards, decoder, gdn_block, training, calibrate, select, distill,
//! export, safety, crash, options, layout.
#[path = "../common/mod.rs"]
mod common;

/// Loaders (GGUF, safetensors, tokenizer) and the hybrid checkpoint format.
mod io;

/// Seeded mutations of valid model files through the loaders: no panic, errors name the file.
mod fuzz;

/// The GGUF pre-tokenizers (SmolLM2, GPT-2, Llama 3, Qwen2) against their regular expressions.
mod tokenizer;

/// Text tokenised in pieces, bounded reading, the training stream, vocabulary checks.
mod data;

/// Token shards: round trip, JSONL errors, one pass per epoch in bounded memory, exact resume.
mod shards;

/// Teacher and hybrid-student logits against the f64 reference, decoding, perplexity.
mod decoder;

/// The whole Gated DeltaNet block against its f64 reference.
mod gdn_block;

/// The student's backward against finite differences.
mod training;

/// The student's initial weights, the teacher capture, phase 1 / 2, every strategy.
mod calibrate;

/// Retained-layer policies.
mod select;

/// Stage 1 / 2 distillation runs, resume, NaN stop.
mod distill;

/// Export to flash-linear-attention's and the reference's layouts, and import back.
mod export;

/// What `--out` may touch, the crash-safe checkpoint write, the output lock.
mod safety;

/// A distillation killed with SIGKILL at 20 random moments ends as an unbroken run.
mod crash;

/// Options no run can use, atomic reports, select's report paths.
mod options;

/// The module layering, read from src/.
mod layout;
