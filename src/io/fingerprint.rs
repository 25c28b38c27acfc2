//! Content fingerprints: a 64-bit hash of files, token ids or tensors, so that a resumed
//! run can tell it reads the same training text, evaluation text and teacher as the run
//! that wrote the checkpoint. Not cryptographic (it tells inputs apart, it does not resist
//! forgery), and defined here rather than taken from a crate so that a fingerprint written
//! today compares equal on every platform and build.
use super::HostTensor;
use anyhow::{Context as _, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The hash state: FxHash's word step (rotate, xor, multiply) over 64-bit little-endian
/// words, with every length mixed in and a final avalanche.
#[derive(Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    /// Mix in `bytes` and their length.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        last[..words.remainder().len()].copy_from_slice(words.remainder());
        self.word(u64::from_le_bytes(last));
        self.word(bytes.len() as u64);
        self
    }

    /// Mix in 32-bit values (two to a word) and their count.
    pub fn u32s(&mut self, values: impl IntoIterator<Item = u32>) -> &mut Self {
        let (mut n, mut pending) = (0u64, None);
        for v in values {
            match pending.take() {
                None => pending = Some(v),
                Some(lo) => self.word(lo as u64 | (v as u64) << 32),
            }
            n += 1;
        }
        if let Some(lo) = pending {
            self.word(lo as u64);
        }
        self.word(n);
        self
    }

    /// The fingerprint as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.value())
    }

    /// The fingerprint as a number (what [`Fingerprint::hex`] writes).
    pub fn value(&self) -> u64 {
        // splitmix64's finaliser: every input bit reaches every output bit
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The fingerprint of the files' bytes, in order (read in blocks: a file of any size).
pub fn of_files(paths: &[impl AsRef<Path>]) -> Result<String> {
    const BLOCK: u64 = 1 << 20;
    let mut fp = Fingerprint::default();
    let mut buf = Vec::with_capacity(BLOCK as usize);
    for path in paths {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        loop {
            buf.clear();
            // whole blocks until the end, whatever sizes the OS reads return
            let n = (&mut file).take(BLOCK).read_to_end(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            fp.bytes(&buf);
            if (n as u64) < BLOCK {
                break;
            }
        }
    }
    Ok(fp.hex())
}

/// The fingerprint [`of_files`] gives a file holding `bytes`.
pub fn of_bytes(bytes: &[u8]) -> String {
    const BLOCK: usize = 1 << 20;
    let mut fp = Fingerprint::default();
    let mut blocks = bytes.chunks(BLOCK);
    loop {
        let b = blocks.next().unwrap_or(&[]);
        fp.bytes(b);
        if b.len() < BLOCK {
            return fp.hex();
        }
    }
}

/// The fingerprint of tensors: names, shapes and values, in name order.
pub fn of_tensors(tensors: &HashMap<String, HostTensor>) -> String {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut fp = Fingerprint::default();
    for name in names {
        let t = &tensors[name];
        fp.bytes(name.as_bytes()).u32s(t.shape.iter().map(|&d| d as u32)).u32s(t.data.iter().map(|x| x.to_bits()));
    }
    fp.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_gives_equal_fingerprints_and_any_change_another() {
        let fp = |b: &[u8]| Fingerprint::default().bytes(b).hex();
        let text: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(fp(&text), fp(&text.clone()));
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(fp(&text)));
        for i in [0, 7, 8, 1500, 2999] {
            let mut t = text.clone();
            t[i] ^= 0x80;
            assert!(seen.insert(fp(&t)), "flipping byte {i}");
        }
        // lengths count: trailing zeros and splits of one text differ
        assert!(seen.insert(fp(&[&text[..], &[0]].concat())));
        assert!(seen.insert(Fingerprint::default().bytes(&text[..8]).bytes(&text[8..]).hex()));
        assert_ne!(Fingerprint::default().u32s([1, 2, 3]).hex(), Fingerprint::default().u32s([1, 2, 3, 0]).hex());
        assert_eq!(fp(b"").len(), 16);
    }

    #[test]
    fn file_fingerprints_follow_every_block_and_the_order_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let big: Vec<u8> = (0..(3 << 20) + 5).map(|i: u32| (i % 253) as u8).collect();
        std::fs::write(&a, &big).unwrap();
        std::fs::write(&b, b"second").unwrap();
        let whole = of_files(&[&a, &b]).unwrap();
        assert_eq!(whole, of_files(&[&a, &b]).unwrap());
        assert_ne!(whole, of_files(&[&b, &a]).unwrap(), "the order of the files counts");
        // a change in a later block, or one byte more, is seen
        for at in [(1 << 20) + 1, (3 << 20) + 4] {
            let mut changed = big.clone();
            changed[at] ^= 1;
            std::fs::write(&a, &changed).unwrap();
            assert_ne!(of_files(&[&a, &b]).unwrap(), whole, "byte {at}");
        }
        std::fs::write(&a, [&big[..], &[0]].concat()).unwrap();
        assert_ne!(of_files(&[&a, &b]).unwrap(), whole);
        let err = of_files(&[dir.path().join("missing")]).unwrap_err();
        assert!(format!("{err:#}").contains("missing"), "{err:#}");
    }
}
