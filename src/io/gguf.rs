//! GGUF v2/v3: a memory-mapped reader that dequantises to f32 under Hugging Face names
//! (undoing llama.cpp's Q/K row permutation for `llama`), and a minimal writer for tests.
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64, metadata
//! (key string, type u32, value), tensor infos (name, n_dims u32, dims u64 ne0-first,
//! type u32, offset u64), padding to `general.alignment`, tensor data.
use super::config::{Arch, ModelConfig, RopeScaling};
use super::dtype::{f16_at, FloatDtype};
use super::weights::{check_config_fields, check_fits, default_head_dim, map_file, validate_tensors, HostTensor, ModelFiles};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
/// Elements per block of the 32-wide quantisation formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
pub const QK: usize = 32;
/// Elements per super-block of the K-quants (Q2_K .. Q6_K).
pub const QK_K: usize = 256;
const MAX_DIMS: u32 = 4;
const MAX_ARRAY_NESTING: usize = 8;
/// Caps on what a header may declare, so that no count read from a file sizes memory
/// beyond a few hundred MiB (real files: a few hundred tensors, a few dozen metadata
/// entries, and arrays of up to about a million values in all: vocabularies, merges).
const MAX_TENSORS: usize = 1 << 20;
const MAX_METADATA_ENTRIES: usize = 1 << 20;
/// Metadata array elements in all (each takes 32 bytes in memory whatever its type).
const MAX_METADATA_VALUES: usize = 1 << 24;

// ---------------------------------------------------------------------------
// Metadata values

/// A GGUF metadata value (type ids 0..=12).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements share one type; an empty array is written with element type u32.
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Any integer type, if it fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    fn write(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend(v.to_le_bytes()),
            GgufValue::U16(v) => out.extend(v.to_le_bytes()),
            GgufValue::I16(v) => out.extend(v.to_le_bytes()),
            GgufValue::U32(v) => out.extend(v.to_le_bytes()),
            GgufValue::I32(v) => out.extend(v.to_le_bytes()),
            GgufValue::F32(v) => out.extend(v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(*v as u8),
            GgufValue::String(s) => write_string(out, s),
            GgufValue::U64(v) => out.extend(v.to_le_bytes()),
            GgufValue::I64(v) => out.extend(v.to_le_bytes()),
            GgufValue::F64(v) => out.extend(v.to_le_bytes()),
            GgufValue::Array(items) => {
                let elem_type = items.first().map_or(4, GgufValue::type_id);
                if items.iter().any(|v| v.type_id() != elem_type) {
                    bail!("GGUF arrays must hold values of a single type");
                }
                out.extend(elem_type.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    item.write(out)?;
                }
            }
        }
        Ok(())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

// ---------------------------------------------------------------------------
// Tensor types

/// ggml tensor types this crate reads (others are named in errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    BF16,
    Other(u32),
}

/// Names of every ggml type id, for error messages.
const GGML_TYPE_NAMES: [(u32, &str); 33] = [
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (4, "Q4_2"),
    (5, "Q4_3"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    pub fn name(self) -> String {
        let id = self.id();
        GGML_TYPE_NAMES.iter().find(|(i, _)| *i == id).map_or_else(|| format!("type {id}"), |(_, n)| n.to_string())
    }

    /// (elements per block, bytes per block), for the types this crate decodes.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((QK, 2 + QK / 2)),
            GgmlType::Q4_1 => Some((QK, 4 + QK / 2)),
            GgmlType::Q5_0 => Some((QK, 2 + 4 + QK / 2)),
            GgmlType::Q5_1 => Some((QK, 4 + 4 + QK / 2)),
            GgmlType::Q8_0 => Some((QK, 2 + QK)),
            // ggml's block_q2_K .. block_q6_K
            GgmlType::Q2K => Some((QK_K, QK_K / 16 + QK_K / 4 + 4)),
            GgmlType::Q3K => Some((QK_K, QK_K / 8 + QK_K / 4 + 12 + 2)),
            GgmlType::Q4K => Some((QK_K, 4 + 12 + QK_K / 2)),
            GgmlType::Q5K => Some((QK_K, 4 + 12 + QK_K / 8 + QK_K / 2)),
            GgmlType::Q6K => Some((QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2)),
            GgmlType::Other(_) => None,
        }
    }

    fn float(self) -> Option<FloatDtype> {
        match self {
            GgmlType::F32 => Some(FloatDtype::F32),
            GgmlType::F16 => Some(FloatDtype::F16),
            GgmlType::BF16 => Some(FloatDtype::BF16),
            _ => None,
        }
    }
}

/// Bytes a tensor of `dims` (ne0 first) takes, or why it cannot be stored as `ty`.
fn tensor_nbytes(ty: GgmlType, dims: &[usize]) -> Result<usize> {
    let (block_elems, block_bytes) =
        ty.block().ok_or_else(|| anyhow!("tensor type {} is not supported (supported: {SUPPORTED})", ty.name()))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % block_elems != 0 {
        bail!("row length {ne0} is not a multiple of the {} block size {block_elems}", ty.name());
    }
    let numel = checked_numel(dims).ok_or_else(|| anyhow!("dimensions {dims:?} overflow"))?;
    (numel / block_elems).checked_mul(block_bytes).ok_or_else(|| anyhow!("dimensions {dims:?} overflow"))
}

fn checked_numel(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

// ---------------------------------------------------------------------------
// Dequantisation (exactly as ggml's dequantize_row_*)

/// Dequantises `bytes` holding `numel` elements of type `ty` (which must match in size).
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    let expected = tensor_nbytes(ty, &[numel])?;
    if bytes.len() != expected {
        bail!("{} data of {numel} elements needs {expected} bytes, got {}", ty.name(), bytes.len());
    }
    if let Some(float) = ty.float() {
        return Ok(float.decode(bytes));
    }
    let (block_elems, block_bytes) = ty.block().expect("checked by tensor_nbytes");
    let mut out = vec![0.0f32; numel];
    for (block, y) in bytes.chunks_exact(block_bytes).zip(out.chunks_exact_mut(block_elems)) {
        match ty {
            GgmlType::Q4_0 => dequant_q4_0(block, y),
            GgmlType::Q4_1 => dequant_q4_1(block, y),
            GgmlType::Q5_0 => dequant_q5(block, y, false),
            GgmlType::Q5_1 => dequant_q5(block, y, true),
            GgmlType::Q8_0 => dequant_q8_0(block, y),
            GgmlType::Q2K => dequant_q2_k(block, y),
            GgmlType::Q3K => dequant_q3_k(block, y),
            GgmlType::Q4K => dequant_q45_k(block, y, false),
            GgmlType::Q5K => dequant_q45_k(block, y, true),
            GgmlType::Q6K => dequant_q6_k(block, y),
            _ => unreachable!("float and unsupported types handled above"),
        }
    }
    Ok(out)
}

/// The tensor types [`dequantize`] reads, for error messages.
const SUPPORTED: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Q5_0 block: f16 d, 4 bytes of fifth bits qh (u32), 16 bytes of nibbles (as Q4_0); element j
/// takes bit j of qh, element j + 16 bit j + 16; x = (q - 16) d. Q5_1 (`with_min`): f16 d, f16
/// m before qh, x = q d + m.
fn dequant_q5(block: &[u8], y: &mut [f32], with_min: bool) {
    let d = f16_at(block);
    let (m, rest) = if with_min { (f16_at(&block[2..]), &block[4..]) } else { (0.0, &block[2..]) };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let off = if with_min { 0 } else { 16 };
    for (j, &q) in rest[4..].iter().enumerate() {
        let x0 = ((q & 0x0F) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - off;
        let x1 = ((q >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - off;
        let (v0, v1) = (x0 as f32 * d, x1 as f32 * d);
        (y[j], y[j + QK / 2]) = if with_min { (v0 + m, v1 + m) } else { (v0, v1) };
    }
}

/// Scale and min j (0..8) of a Q4_K / Q5_K super-block, 6 bits each packed into 12 bytes
/// (ggml's get_scale_min_k4).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) =
        if j < 4 { (q[j] & 63, q[j + 4] & 63) } else { ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)) };
    (sc as f32, m as f32)
}

/// Q2_K super-block: 16 bytes of 4-bit (scale, min) pairs, 64 bytes of 2-bit codes, f16 d,
/// f16 dmin; 16 groups of 16: x = d sc q - dmin m.
fn dequant_q2_k(block: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&block[..16], &block[16..80]);
    let (d, dmin) = (f16_at(&block[80..]), f16_at(&block[82..]));
    let mut is = 0;
    let mut out = y.iter_mut();
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                for &b in &q[16 * part..16 * part + 16] {
                    *out.next().expect("256 outputs") = dl * ((b >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K super-block: 32 bytes of high bits (hmask), 64 bytes of 2-bit codes, 12 bytes of
/// 6-bit scales (offset 32), f16 d; x = d (sc - 32) (q - (high bit ? 0 : 4)).
fn dequant_q3_k(block: &[u8], y: &mut [f32]) {
    let (hm, qs, packed) = (&block[..32], &block[32..96], &block[96..108]);
    let d = f16_at(&block[108..]);
    // the 16 scales: low 4 bits from bytes 0..8 (low then high nibbles), high 2 bits from 8..12
    let scale = |j: usize| -> f32 {
        let low = if j < 8 { packed[j] & 0xF } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        ((low | (high << 4)) as i32 - 32) as f32
    };
    let (mut is, mut m) = (0, 1u8);
    let mut out = y.iter_mut();
    for half in 0..2 {
        let q = &qs[32 * half..32 * half + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scale(is);
                is += 1;
                for l in 16 * part..16 * part + 16 {
                    let v = ((q[l] >> shift) & 3) as i32 - if hm[l] & m != 0 { 0 } else { 4 };
                    *out.next().expect("256 outputs") = dl * v as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// Q4_K super-block: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min), 128 bytes of nibbles;
/// Q5_K (`fifth`) adds 32 bytes of fifth bits before the nibbles. 8 groups of 32:
/// x = d sc q - dmin m.
fn dequant_q45_k(block: &[u8], y: &mut [f32], fifth: bool) {
    let (d, dmin, scales) = (f16_at(block), f16_at(&block[2..]), &block[4..16]);
    let (qh, ql) = if fifth { (&block[16..48], &block[48..]) } else { (&block[16..16], &block[16..]) };
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let q = &ql[32 * g..32 * g + 32];
        for l in 0..32 {
            let (h1, h2) = if fifth { ((qh[l] >> (2 * g)) & 1, (qh[l] >> (2 * g + 1)) & 1) } else { (0, 0) };
            y[64 * g + l] = d * sc1 * ((q[l] & 0xF) + 16 * h1) as f32 - dmin * m1;
            y[64 * g + 32 + l] = d * sc2 * ((q[l] >> 4) + 16 * h2) as f32 - dmin * m2;
        }
    }
}

/// Q6_K super-block: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 i8 scales,
/// f16 d; 16 groups of 16: x = d sc (q - 32).
fn dequant_q6_k(block: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&block[..128], &block[128..192], &block[192..208]);
    let d = f16_at(&block[208..]);
    for half in 0..2 {
        let (ql, qh, sc, y) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..], &mut y[128 * half..]);
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Q4_0 block: f16 d, 16 bytes; element j is the low nibble of byte j, element j+16 the high one.
fn dequant_q4_0(block: &[u8], y: &mut [f32]) {
    let d = f16_at(block);
    for (j, &q) in block[2..].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1 block: f16 d, f16 m, 16 bytes of nibbles (same order as Q4_0); x = q*d + m.
fn dequant_q4_1(block: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(block), f16_at(&block[2..]));
    for (j, &q) in block[4..].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + QK / 2] = (q >> 4) as f32 * d + m;
    }
}

/// Q8_0 block: f16 d, 32 i8; x = q*d.
fn dequant_q8_0(block: &[u8], y: &mut [f32]) {
    let d = f16_at(block);
    for (j, &q) in block[2..].iter().enumerate() {
        y[j] = (q as i8) as f32 * d;
    }
}

// ---------------------------------------------------------------------------
// Quantisation (ggml's quantize_row_*_ref), for writing test files

fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend(half::f16::from_f32(v).to_le_bytes());
}

/// Q4_0: d = (signed value of largest magnitude) / -8, q = min(15, trunc(x/d + 8.5)).
pub fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "quantize: length must be a multiple of 32");
    let mut out = Vec::with_capacity(x.len() / QK * 18);
    for block in x.chunks_exact(QK) {
        let max = block.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(&mut out, d);
        let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        out.extend((0..QK / 2).map(|j| q(block[j]) | (q(block[j + QK / 2]) << 4)));
    }
    out
}

/// Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min)/d + 0.5)).
pub fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "quantize: length must be a multiple of 32");
    let mut out = Vec::with_capacity(x.len() / QK * 20);
    for block in x.chunks_exact(QK) {
        let min = block.iter().copied().fold(f32::MAX, f32::min);
        let max = block.iter().copied().fold(-f32::MAX, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(&mut out, d);
        push_f16(&mut out, min);
        let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        out.extend((0..QK / 2).map(|j| q(block[j]) | (q(block[j + QK / 2]) << 4)));
    }
    out
}

/// Q8_0: d = max|x| / 127, q = round(x/d).
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert_eq!(x.len() % QK, 0, "quantize: length must be a multiple of 32");
    let mut out = Vec::with_capacity(x.len() / QK * 34);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        push_f16(&mut out, d);
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}

// ---------------------------------------------------------------------------
// llama.cpp's Q/K row permutation

/// (Hugging Face row, GGUF row) pairs: HF row `h*hd + half*(hd/2) + i` is GGUF row `h*hd + 2*i + half`.
fn rope_row_pairs(n_head: usize, rows_per_head: usize) -> impl Iterator<Item = (usize, usize)> {
    let half_len = rows_per_head / 2;
    (0..n_head).flat_map(move |h| {
        (0..2).flat_map(move |half| {
            (0..half_len).map(move |i| {
                let base = h * rows_per_head;
                (base + half * half_len + i, base + 2 * i + half)
            })
        })
    })
}

fn move_rows(w: &[f32], n_head: usize, rows_per_head: usize, cols: usize, to_hf: bool) -> Vec<f32> {
    assert_eq!(w.len(), n_head * rows_per_head * cols, "permute: shape mismatch");
    assert_eq!(rows_per_head % 2, 0, "permute: rows per head must be even");
    let mut out = vec![0.0f32; w.len()];
    for (hf, gg) in rope_row_pairs(n_head, rows_per_head) {
        let (dst, src) = if to_hf { (hf, gg) } else { (gg, hf) };
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    out
}

/// Undoes llama.cpp's converter permutation of Q/K rows (GGUF order -> Hugging Face order).
/// Panics if `w.len() != n_head * rows_per_head * cols` or `rows_per_head` is odd.
pub fn unpermute_rows(w: &[f32], n_head: usize, rows_per_head: usize, cols: usize) -> Vec<f32> {
    move_rows(w, n_head, rows_per_head, cols, true)
}

/// The converter's direction (Hugging Face order -> GGUF order):
/// `w.reshape(n_head, 2, hd//2, *rest).swapaxes(1, 2).reshape(w.shape)`.
pub fn permute_rows(w: &[f32], n_head: usize, rows_per_head: usize, cols: usize) -> Vec<f32> {
    move_rows(w, n_head, rows_per_head, cols, false)
}

// ---------------------------------------------------------------------------
// Reading

/// A bounds-checked little-endian cursor; every error names the file and what was being read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// What is being read, for error messages ("header", "metadata 'x'", ...).
    section: String,
    /// How many more metadata array elements the file may hold ([`MAX_METADATA_VALUES`]).
    values_left: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, needed: usize) -> anyhow::Error {
        anyhow!(
            "truncated GGUF file {}: {} needs {needed} bytes at offset {}, but the file has only {} bytes",
            self.path.display(),
            self.section,
            self.pos,
            self.buf.len()
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64 count or size that must fit in memory: at least `min_item_bytes` per item
    /// remain, and at most `max` items.
    fn count(&mut self, what: &str, min_item_bytes: usize, max: usize) -> Result<usize> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_item_bytes) > self.remaining() => bail!(
                "truncated or corrupt GGUF file {}: {} declares {n} {what}, more than the remaining {} bytes can hold",
                self.path.display(),
                self.section,
                self.remaining()
            ),
            Ok(n) if n <= max => Ok(n),
            _ => bail!(
                "corrupt GGUF file {}: {} declares {n} {what}, more than taylorcal accepts ({max})",
                self.path.display(),
                self.section
            ),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count("string bytes", 1, usize::MAX)?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }

    fn value(&mut self, type_id: u32, depth: usize) -> Result<GgufValue> {
        Ok(match type_id {
            0 => GgufValue::U8(self.take(1)?[0]),
            1 => GgufValue::I8(self.take(1)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(self.take(1)?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => self.array_value(depth)?,
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("corrupt GGUF file {}: {} has unknown value type {other}", self.path.display(), self.section),
        })
    }

    fn array_value(&mut self, depth: usize) -> Result<GgufValue> {
        if depth >= MAX_ARRAY_NESTING {
            bail!("corrupt GGUF file {}: {} nests arrays too deeply", self.path.display(), self.section);
        }
        let elem_type = self.u32()?;
        let max = self.values_left;
        let n = self.count("array elements (in all the metadata)", min_value_bytes(elem_type), max)?;
        self.values_left -= n;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(elem_type, depth + 1)?);
        }
        Ok(GgufValue::Array(items))
    }
}

/// The fewest bytes one value of a type id can take (to cap declared array lengths).
fn min_value_bytes(type_id: u32) -> usize {
    match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the innermost, contiguous dimension.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: usize,
}

impl GgufTensorInfo {
    /// The shape in PyTorch order (outermost first): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    data_start: usize,
    map: memmap2::Mmap,
}

impl GgufFile {
    /// Maps and parses the header, metadata and tensor infos, checking that every tensor
    /// of a supported type lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let mut r = Reader { buf: &map, pos: 0, path, section: "the header".into(), values_left: MAX_METADATA_VALUES };
        if r.take(4).ok() != Some(MAGIC.as_slice()) {
            bail!("{} is not a GGUF file (it does not start with 'GGUF')", path.display());
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("{}: GGUF version {version} is not supported (supported: 2, 3; a huge number means a big-endian file)", path.display());
        }
        let n_tensors = r.count("tensors", 24, MAX_TENSORS)?;
        let n_kv = r.count("metadata entries", 13, MAX_METADATA_ENTRIES)?;
        let metadata = read_metadata(&mut r, n_kv)?;
        let tensors = read_tensor_infos(&mut r, n_tensors)?;
        let alignment = alignment(&metadata, path)?;
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let file = GgufFile { path: path.to_path_buf(), version, metadata, tensors, data_start, map };
        file.check_data_ranges()?;
        Ok(file)
    }

    /// Checks that every tensor of a supported type lies inside the file and that no two
    /// share bytes (a writer never overlaps them; a file that does is corrupt or crafted).
    fn check_data_ranges(&self) -> Result<()> {
        let mut ranges = Vec::new();
        for info in self.tensors.iter().filter(|t| t.ty.block().is_some()) {
            let len = self.tensor_bytes(info)?.len();
            if len > 0 {
                ranges.push((info.offset, info.offset + len, &info.name));
            }
        }
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
            if start < end {
                bail!("corrupt GGUF file {}: the data of tensors '{a}' and '{b}' overlap", self.path.display());
            }
        }
        Ok(())
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, bounds-checked against the file.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8]> {
        let nbytes = tensor_nbytes(info.ty, &info.dims).with_context(|| format!("{}: tensor '{}'", self.path.display(), info.name))?;
        let start = self.data_start.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.map.len() => Ok(&self.map[s..e]),
            _ => bail!(
                "truncated GGUF file {}: tensor '{}' ({}, {} bytes at data offset {}) extends past the end of the file ({} bytes)",
                self.path.display(),
                info.name,
                info.ty.name(),
                nbytes,
                info.offset,
                self.map.len()
            ),
        }
    }

    /// A tensor dequantised to f32 (row-major, PyTorch-order shape `info.shape()`).
    pub fn tensor_f32(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(info)?;
        let numel = checked_numel(&info.dims).expect("checked by tensor_bytes");
        dequantize(info.ty, bytes, numel).with_context(|| format!("{}: tensor '{}'", self.path.display(), info.name))
    }
}

fn read_metadata(r: &mut Reader, n_kv: usize) -> Result<HashMap<String, GgufValue>> {
    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        r.section = format!("metadata entry #{i}");
        let key = r.string()?;
        r.section = format!("metadata '{key}'");
        let type_id = r.u32()?;
        let value = r.value(type_id, 0)?;
        if metadata.insert(key, value).is_some() {
            bail!("corrupt GGUF file {}: {} appears twice", r.path.display(), r.section);
        }
    }
    Ok(metadata)
}

fn read_tensor_infos(r: &mut Reader, n_tensors: usize) -> Result<Vec<GgufTensorInfo>> {
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors);
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        r.section = format!("tensor info #{i}");
        let name = r.string()?;
        if !names.insert(name.clone()) {
            bail!("corrupt GGUF file {}: tensor '{name}' appears twice", r.path.display());
        }
        r.section = format!("tensor info '{name}'");
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            bail!("corrupt GGUF file {}: tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})", r.path.display());
        }
        let dims = (0..n_dims)
            .map(|_| {
                let d = r.u64()?;
                usize::try_from(d).map_err(|_| anyhow!("corrupt GGUF file {}: tensor '{name}' has dimension {d}", r.path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let ty = GgmlType::from_id(r.u32()?);
        let offset =
            usize::try_from(r.u64()?).map_err(|_| anyhow!("corrupt GGUF file {}: tensor '{name}' offset overflows", r.path.display()))?;
        tensors.push(GgufTensorInfo { name, dims, ty, offset });
    }
    Ok(tensors)
}

fn alignment(metadata: &HashMap<String, GgufValue>, path: &Path) -> Result<usize> {
    let Some(v) = metadata.get("general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match v.as_i64().and_then(|a| usize::try_from(a).ok()) {
        Some(a) if a.is_power_of_two() => Ok(a),
        _ => bail!("{}: general.alignment must be a power of two, got {v:?}", path.display()),
    }
}

// ---------------------------------------------------------------------------
// Model loading

/// Typed access to GGUF metadata, with errors naming the key and file.
struct Meta<'a> {
    map: &'a HashMap<String, GgufValue>,
    path: &'a Path,
}

impl Meta<'_> {
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| anyhow!("{}: metadata '{key}' must be a non-negative integer, got {v:?}", self.path.display())),
        }
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| anyhow!("{}: metadata '{key}' must be a number, got {v:?}", self.path.display())),
        }
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        Ok(self.opt_f64(key)?.map(|x| x as f32))
    }

    fn req_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        Ok(self.opt_usize(key)?.and_then(|v| u32::try_from(v).ok()))
    }

    fn missing(&self, key: &str) -> anyhow::Error {
        anyhow!("{}: required metadata '{key}' is missing", self.path.display())
    }
}

fn arch_of(name: &str, path: &Path) -> Result<Arch> {
    match name {
        "llama" => Ok(Arch::Llama),
        "qwen2" => Ok(Arch::Qwen2),
        "qwen3" => Ok(Arch::Qwen3),
        other => bail!("unsupported architecture '{other}' in {} (supported: llama, qwen2, qwen3)", path.display()),
    }
}

/// The model configuration a GGUF file's metadata (and tensor list) describes.
pub fn gguf_config(file: &GgufFile) -> Result<ModelConfig> {
    let path = file.path.as_path();
    let m = Meta { map: &file.metadata, path };
    let arch_name =
        file.metadata.get("general.architecture").and_then(GgufValue::as_str).ok_or_else(|| m.missing("general.architecture"))?;
    let arch = arch_of(arch_name, path)?;
    let key = |k: &str| format!("{arch_name}.{k}");

    let hidden_size = m.req_usize(&key("embedding_length"))?;
    let num_attention_heads = m.req_usize(&key("attention.head_count"))?;
    let head_dim = m.opt_usize(&key("attention.key_length"))?.unwrap_or_else(|| default_head_dim(hidden_size, num_attention_heads));
    if let Some(rope_dims) = m.opt_usize(&key("rope.dimension_count"))? {
        if rope_dims != head_dim {
            bail!("{}: partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported", path.display());
        }
    }
    let max_position_embeddings = m.opt_usize(&key("context_length"))?.unwrap_or(2048);
    let cfg = ModelConfig {
        arch,
        hidden_size,
        num_hidden_layers: m.req_usize(&key("block_count"))?,
        num_attention_heads,
        num_key_value_heads: m.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(num_attention_heads),
        head_dim,
        intermediate_size: m.req_usize(&key("feed_forward_length"))?,
        vocab_size: gguf_vocab_size(file, &m, &key("vocab_size"))?,
        rms_norm_eps: m.req_f32(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: m.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: arch == Arch::Qwen2 || file.tensor_info("blk.0.attn_q.bias").is_some(),
        qk_norm: arch == Arch::Qwen3,
        max_position_embeddings,
        bos_token_id: m.opt_u32("tokenizer.ggml.bos_token_id")?,
        eos_token_id: m.opt_u32("tokenizer.ggml.eos_token_id")?,
        rope_scaling: gguf_rope_scaling(file, &m, &key, max_position_embeddings)?,
    };
    let display = path.display().to_string();
    check_config_fields(&cfg, &display, &|field| match gguf_key(field) {
        Some(k) => format!("{field} (metadata '{}')", key(k)),
        None => field.to_string(),
    })?;
    check_fits(&cfg, &display, file.map.len() as u64)?;
    Ok(cfg)
}

/// The GGUF metadata key (after `{arch}.`) a config field is read from.
fn gguf_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "hidden_size" => "embedding_length",
        "num_hidden_layers" => "block_count",
        "num_attention_heads" => "attention.head_count",
        "num_key_value_heads" => "attention.head_count_kv",
        "head_dim" => "attention.key_length",
        "intermediate_size" => "feed_forward_length",
        "max_position_embeddings" => "context_length",
        "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
        "rope_theta" => "rope.freq_base",
        "rope_scaling.factor" => "rope.scaling.factor",
        "rope_scaling.original_max_position_embeddings" => "rope.scaling.original_context_length",
        "rope_scaling.beta_fast" => "rope.scaling.yarn_beta_fast",
        "rope_scaling.beta_slow" => "rope.scaling.yarn_beta_slow",
        "rope_scaling.attention_factor" => "rope.scaling.yarn_attn_factor",
        _ => return None,
    })
}

/// RoPE scaling as llama.cpp reads it: `{arch}.rope.scaling.type` none, linear (the default)
/// or yarn; `.factor` (else the older `{arch}.rope.scale_linear`; absent or 0: no scaling);
/// `.original_context_length` (else the context length); yarn's `.yarn_beta_fast`,
/// `.yarn_beta_slow` and `.yarn_attn_factor` (the attention factor itself, as llama.cpp's
/// converter copies it from config.json; else YaRN's default). A `rope_freqs.weight` tensor
/// holds per-frequency divisors (what llama.cpp's converter writes for Llama 3.x).
fn gguf_rope_scaling(file: &GgufFile, m: &Meta, key: &dyn Fn(&str) -> String, context_length: usize) -> Result<Option<RopeScaling>> {
    let type_key = key("rope.scaling.type");
    let kind = match file.metadata.get(&type_key) {
        None => "linear",
        Some(v) => v.as_str().ok_or_else(|| anyhow!("{}: metadata '{type_key}' must be a string, got {v:?}", m.path.display()))?,
    };
    let factor_key = key("rope.scaling.factor");
    let factor = match m.opt_f64(&factor_key)? {
        None => m.opt_f64(&key("rope.scale_linear"))?,
        f => f,
    }
    .filter(|&f| f != 0.0);
    let scaling = match kind {
        "none" => None,
        "linear" => factor.filter(|&f| f != 1.0).map(|factor| RopeScaling::Linear { factor }),
        "yarn" => {
            let factor = factor.ok_or_else(|| m.missing(&factor_key))?;
            let attention_factor = m.opt_f64(&key("rope.scaling.yarn_attn_factor"))?;
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: m.opt_usize(&key("rope.scaling.original_context_length"))?.unwrap_or(context_length),
                beta_fast: m.opt_f64(&key("rope.scaling.yarn_beta_fast"))?.unwrap_or(32.0),
                beta_slow: m.opt_f64(&key("rope.scaling.yarn_beta_slow"))?.unwrap_or(1.0),
                attention_factor: attention_factor.unwrap_or_else(|| RopeScaling::yarn_attention_factor(factor, None, None)),
                truncate: true,
            })
        }
        other => bail!("{}: unsupported RoPE scaling '{other}' in metadata '{type_key}' (supported: none, linear, yarn)", m.path.display()),
    };
    let Some(info) = file.tensor_info("rope_freqs.weight") else {
        return Ok(scaling);
    };
    if scaling.is_some() {
        bail!("{}: a rope_freqs.weight tensor together with {kind} RoPE scaling is not supported", m.path.display());
    }
    Ok(Some(RopeScaling::FreqFactors { factors: file.tensor_f32(info)? }))
}

/// Vocabulary size: the token list's length, else `{arch}.vocab_size`, else the embedding rows.
fn gguf_vocab_size(file: &GgufFile, m: &Meta, vocab_key: &str) -> Result<usize> {
    if let Some(tokens) = file.metadata.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array) {
        return Ok(tokens.len());
    }
    if let Some(v) = m.opt_usize(vocab_key)? {
        return Ok(v);
    }
    file.tensor_info("token_embd.weight").and_then(|t| t.dims.get(1).copied()).ok_or_else(|| {
        anyhow!("{}: cannot tell the vocabulary size (no tokenizer.ggml.tokens, {vocab_key} or token_embd.weight)", file.path.display())
    })
}

/// The Hugging Face name of a GGUF tensor, or None for tensors the model does not use.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match base {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Puts llama.cpp-permuted Q/K weights and biases back into Hugging Face row order.
fn unpermute_qk(cfg: &ModelConfig, tensors: &mut HashMap<String, HostTensor>) {
    for l in 0..cfg.num_hidden_layers {
        for (proj, n_head) in [("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)] {
            for suffix in ["weight", "bias"] {
                if let Some(t) = tensors.get_mut(&format!("model.layers.{l}.self_attn.{proj}.{suffix}")) {
                    let cols = t.data.len() / (n_head * cfg.head_dim);
                    t.data = unpermute_rows(&t.data, n_head, cfg.head_dim, cols);
                }
            }
        }
    }
}

/// Loads a GGUF model: config from metadata, tensors dequantised to f32 under Hugging Face
/// names (Q/K rows un-permuted for `llama`), and the tokenizer when it can be rebuilt
/// (otherwise `tokenizer` is None and `source` says why).
pub fn load_gguf(path: &Path) -> Result<ModelFiles> {
    let file = GgufFile::open(path)?;
    let config = gguf_config(&file)?;
    let mut tensors = HashMap::new();
    let mut gguf_names = HashMap::new();
    for info in &file.tensors {
        if let Some(name) = hf_tensor_name(&info.name) {
            if let Some(other) = gguf_names.insert(name.clone(), &info.name) {
                bail!("{}: tensors '{other}' and '{}' are both {name}", path.display(), info.name);
            }
            let data = file.tensor_f32(info)?;
            tensors.insert(name, HostTensor::new(info.shape(), data));
        }
    }
    let display = path.display().to_string();
    validate_tensors(&config, &tensors, &display)?;
    if config.arch == Arch::Llama {
        unpermute_qk(&config, &mut tensors);
    }
    let mut source = format!("GGUF v{} file {display}", file.version);
    let tokenizer = match tokenizer_from_gguf(&file.metadata, &display) {
        Ok(t) => Some(t),
        Err(e) => {
            source.push_str(&format!(" (tokenizer not loaded: {e:#})"));
            None
        }
    };
    Ok(ModelFiles { config, tensors, tokenizer, source })
}

// ---------------------------------------------------------------------------
// Writing

/// Tensor data for `write_gguf`, encoded on write (quantised types need the innermost
/// dimension to be a multiple of 32).
#[derive(Clone, Debug)]
pub enum GgufTensorData {
    F32(Vec<f32>),
    F16(Vec<f32>),
    BF16(Vec<f32>),
    Q4_0(Vec<f32>),
    Q4_1(Vec<f32>),
    Q8_0(Vec<f32>),
    /// Already-encoded bytes of any type id (e.g. to test unsupported types).
    Raw {
        type_id: u32,
        bytes: Vec<u8>,
    },
}

impl GgufTensorData {
    fn encode(&self) -> (u32, Vec<u8>) {
        let typed = |t: GgmlType, bytes: Vec<u8>| (t.id(), bytes);
        match self {
            GgufTensorData::F32(x) => typed(GgmlType::F32, FloatDtype::F32.encode(x)),
            GgufTensorData::F16(x) => typed(GgmlType::F16, FloatDtype::F16.encode(x)),
            GgufTensorData::BF16(x) => typed(GgmlType::BF16, FloatDtype::BF16.encode(x)),
            GgufTensorData::Q4_0(x) => typed(GgmlType::Q4_0, quantize_q4_0(x)),
            GgufTensorData::Q4_1(x) => typed(GgmlType::Q4_1, quantize_q4_1(x)),
            GgufTensorData::Q8_0(x) => typed(GgmlType::Q8_0, quantize_q8_0(x)),
            GgufTensorData::Raw { type_id, bytes } => (*type_id, bytes.clone()),
        }
    }

    fn numel(&self) -> Option<usize> {
        match self {
            GgufTensorData::F32(x)
            | GgufTensorData::F16(x)
            | GgufTensorData::BF16(x)
            | GgufTensorData::Q4_0(x)
            | GgufTensorData::Q4_1(x)
            | GgufTensorData::Q8_0(x) => Some(x.len()),
            GgufTensorData::Raw { .. } => None,
        }
    }
}

/// Writes a GGUF v3 file. `tensors` are (GGUF name, PyTorch-order shape, data). The data
/// section is aligned to `general.alignment` from `metadata` (default 32).
pub fn write_gguf(path: &Path, metadata: &[(String, GgufValue)], tensors: &[(String, Vec<usize>, GgufTensorData)]) -> Result<()> {
    let meta_map: HashMap<String, GgufValue> = metadata.iter().cloned().collect();
    let align = alignment(&meta_map, path)?;
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_string(&mut out, key);
        out.extend(value.type_id().to_le_bytes());
        value.write(&mut out).with_context(|| format!("metadata '{key}'"))?;
    }

    let mut data = Vec::new();
    for (name, shape, tensor) in tensors {
        if let Some(n) = tensor.numel() {
            if n != shape.iter().product::<usize>() {
                bail!("tensor '{name}': {n} values do not fill shape {shape:?}");
            }
            if !matches!(tensor, GgufTensorData::F32(_) | GgufTensorData::F16(_) | GgufTensorData::BF16(_))
                && shape.last().is_some_and(|&ne0| ne0 % QK != 0)
            {
                bail!("tensor '{name}': innermost dimension of {shape:?} is not a multiple of {QK}");
            }
        }
        let (type_id, bytes) = tensor.encode();
        data.resize(data.len().div_ceil(align) * align, 0);
        write_string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(type_id.to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        data.extend(bytes);
    }
    out.resize(out.len().div_ceil(align) * align, 0);
    out.extend(data);
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------
// The tokenizer, rebuilt from GGUF metadata

/// GGUF `tokenizer.ggml.token_type` values that mark special tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

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

/// Llama 3's split (its tokenizer.json's): contractions in any case, letters with at most one
/// leading symbol, numbers in runs of up to 3 digits, symbols with their line breaks.
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's and Qwen3's: as Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer `tokenizer.ggml.pre` names (the names llama.cpp's converter writes), as
/// the model's own tokenizer.json has it: SmolLM's (absent too: individual digits, then the
/// GPT-2 byte-level split), GPT-2's, Llama 3's (`llama-bpe`) and Qwen2's (`qwen2`, which
/// Qwen2.5 and Qwen3 files name; with its NFC normaliser). Returns it and whether NFC applies.
fn pre_tokenizer(pre: Option<&str>, source: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(SplitPattern::Regex(re.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow!("{source}: cannot build the pre-tokenizer: {e}"))?;
        Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    Ok(match pre {
        None | Some("smollm" | "starcoder" | "refact" | "command-r" | "codeshell") => {
            (Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(), false)
        }
        Some("gpt-2" | "gpt2" | "phi-2" | "olmo" | "mpt" | "jais") => (ByteLevel::new(false, true, true).into(), false),
        Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral") => (split(LLAMA3_SPLIT)?, false),
        Some("qwen2" | "deepseek-r1-qwen" | "stablelm2") => (split(QWEN2_SPLIT)?, true),
        Some(other) => bail!(
            "{source}: metadata 'tokenizer.ggml.pre' is '{other}', a pre-tokenizer taylorcal does not have \
             (supported: smollm, gpt-2, llama-bpe (Llama 3), qwen2 (Qwen2.5, Qwen3)); \
             convert the model's Hugging Face directory instead, whose tokenizer.json is used as it is"
        ),
    })
}

/// Builds the byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`) a GGUF file
/// describes: vocab from `tokenizer.ggml.tokens`, merges from `tokenizer.ggml.merges`,
/// the pre-tokenizer `tokenizer.ggml.pre` names ([`pre_tokenizer`]),
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

    let pre = match meta.get("tokenizer.ggml.pre") {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| anyhow!("{source}: metadata 'tokenizer.ggml.pre' is not a string"))?),
    };
    let (pre, nfc) = pre_tokenizer(pre, source)?;
    let mut tokenizer = Tokenizer::new(bpe);
    if nfc {
        tokenizer.with_normalizer(Some(NFC));
    }
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let special: Vec<AddedToken> =
        special_token_ids(meta).into_iter().filter_map(|id| tokens.get(id)).map(|t| AddedToken::from(t.to_string(), true)).collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}
