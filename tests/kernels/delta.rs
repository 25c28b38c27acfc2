//! The gated delta rule (src/ops/delta.rs with its f64 references ops/delta/cpu.rs and
//! chunk_ref.rs; shaders/delta_chunk.wgsl, delta_state.wgsl, delta_out.wgsl,
//! delta_bwd.wgsl, delta_step.wgsl): the f64 reference backward against finite
//! differences, and the WGSL chunked forward / one-step / chunked backward kernels
//! against the f64 reference.
use crate::common::*;
use rand::Rng;
use taylorcal::gpu::Tensor;
use taylorcal::ops::delta::{self, cpu, DeltaInputs, DeltaShape, DeltaTiles, DeltaWorkspace};

#[derive(Clone)]
struct Inputs {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    g: Vec<f64>,
    beta: Vec<f64>,
    h0: Option<Vec<f64>>,
}

impl Inputs {
    /// The inputs as the references take them.
    fn refs(&self) -> cpu::Inputs<'_> {
        DeltaInputs { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta, h0: self.h0.as_deref() }
    }
}

/// Random inputs: g = -exp(U(lo, hi)) (weak to strong decay), beta in (0, 1); without
/// in-op L2 norm the keys are normalised here (unit-norm keys keep the recurrence stable).
fn inputs(r: &mut impl Rng, s: &DeltaShape, with_h0: bool, glog: (f64, f64)) -> Inputs {
    let nk = s.b * s.t * s.h * s.dk;
    let nv = s.b * s.t * s.h * s.dv;
    let ng = s.b * s.t * s.h;
    let q: Vec<f64> = (0..nk).map(|_| r.random_range(-1.0..1.0)).collect();
    let mut k: Vec<f64> = (0..nk).map(|_| r.random_range(-1.0..1.0)).collect();
    if !s.l2norm {
        for row in k.chunks_mut(s.dk) {
            let n = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-3);
            row.iter_mut().for_each(|x| *x /= n);
        }
    }
    let v = (0..nv).map(|_| r.random_range(-1.0..1.0)).collect();
    let g = (0..ng).map(|_| -r.random_range(glog.0..glog.1).exp()).collect();
    let beta = (0..ng).map(|_| r.random_range(0.02..0.98)).collect();
    let h0 = with_h0.then(|| (0..s.b * s.h * s.dv * s.dk).map(|_| r.random_range(-1.0..1.0)).collect());
    Inputs { q, k, v, g, beta, h0 }
}

#[test]
fn reference_backward_matches_finite_differences() {
    let mut r = rng(11);
    for &(l2norm, with_h0, with_dht) in &[(false, false, false), (true, true, true), (true, false, true), (false, true, false)] {
        let s = DeltaShape { b: 2, t: 5, h: 2, dk: 4, dv: 3, scale: 0.7, l2norm };
        let x = inputs(&mut r, &s, with_h0, (-3.0, 1.0));
        let w_o: Vec<f64> = (0..s.b * s.t * s.h * s.dv).map(|_| r.random_range(-1.0..1.0)).collect();
        let w_h: Vec<f64> = (0..s.b * s.h * s.dv * s.dk).map(|_| r.random_range(-1.0..1.0)).collect();
        let loss = |x: &Inputs| {
            let (o, ht) = cpu::forward(&s, &x.refs());
            let lo: f64 = o.iter().zip(&w_o).map(|(a, b)| a * b).sum();
            let lh: f64 = if with_dht { ht.iter().zip(&w_h).map(|(a, b)| a * b).sum() } else { 0.0 };
            lo + lh
        };
        let gr = cpu::backward(&s, &x.refs(), &w_o, with_dht.then_some(&w_h[..]));
        let check = |name: &str, field: fn(&mut Inputs) -> &mut Vec<f64>, want: &[f64]| {
            let fd = numeric_grad(field(&mut x.clone()), 1e-5, |v| {
                let mut x2 = x.clone();
                *field(&mut x2) = v.to_vec();
                loss(&x2)
            });
            let e = rel_rms_f64(want, &fd);
            eprintln!("fd l2norm={l2norm} h0={with_h0} dht={with_dht} {name}: rel rms {e:.2e}");
            assert!(e < 1e-7, "{name}: analytic vs finite differences rel rms {e:.3e}");
        };
        check("dq", |x| &mut x.q, &gr.dq);
        check("dk", |x| &mut x.k, &gr.dk);
        check("dv", |x| &mut x.v, &gr.dv);
        check("dg", |x| &mut x.g, &gr.dg);
        check("dbeta", |x| &mut x.beta, &gr.dbeta);
        if with_h0 {
            check("dh0", |x| x.h0.as_mut().unwrap(), &gr.dh0);
        }
    }
}

fn shape(b: usize, t: usize, h: usize, d: usize, l2norm: bool) -> DeltaShape {
    DeltaShape::new(b, t, h, d, l2norm)
}

#[test]
fn chunked_f64_model_matches_naive_recurrence() {
    let mut r = rng(12);
    for &(t, c, l2norm, with_h0) in &[(1, 4, false, true), (9, 4, true, false), (13, 4, false, true), (70, 16, true, true)] {
        let mut s = shape(2, t, 2, 6, l2norm);
        s.dv = 5;
        let x = inputs(&mut r, &s, with_h0, (-4.0, 1.6));
        let (o, ht) = cpu::forward(&s, &x.refs());
        let (oc, htc, _) = delta::chunk_ref::forward(&s, c, &x.refs());
        let (eo, eh) = (rel_rms_f64(&oc, &o), rel_rms_f64(&htc, &ht));
        eprintln!("chunk model T={t} C={c}: o {eo:.1e} ht {eh:.1e}");
        assert!(eo < 1e-12 && eh < 1e-12);
        let dout: Vec<f64> = (0..o.len()).map(|_| r.random_range(-1.0..1.0)).collect();
        let dht: Vec<f64> = (0..ht.len()).map(|_| r.random_range(-1.0..1.0)).collect();
        let want = cpu::backward(&s, &x.refs(), &dout, Some(&dht));
        let got = delta::chunk_ref::backward(&s, c, &x.refs(), &dout, Some(&dht));
        for (name, a, b) in [
            ("dq", &got.dq, &want.dq),
            ("dk", &got.dk, &want.dk),
            ("dv", &got.dv, &want.dv),
            ("dg", &got.dg, &want.dg),
            ("dbeta", &got.dbeta, &want.dbeta),
            ("dh0", &got.dh0, &want.dh0),
        ] {
            let e = rel_rms_f64(a, b);
            eprintln!("chunk model T={t} C={c} {name}: {e:.1e}");
            assert!(e < 1e-10, "{name}: {e:.3e}");
        }
    }
}

/// An f64 vector rounded to f32 as a tensor of `shape` on the default context.
fn up64(v: &[f64], shape: &[usize]) -> Tensor {
    up(gpu(), shape, &f32v(v))
}

/// A tensor of the default context read back as f64.
fn down(t: &Tensor) -> Vec<f64> {
    f64v(&read(gpu(), t))
}

/// Inputs rounded to f32 (what the GPU sees), so the f64 reference gets the same values.
fn rounded(x: &Inputs) -> Inputs {
    let r = |v: &Vec<f64>| v.iter().map(|&a| a as f32 as f64).collect::<Vec<_>>();
    Inputs { q: r(&x.q), k: r(&x.k), v: r(&x.v), g: r(&x.g), beta: r(&x.beta), h0: x.h0.as_ref().map(r) }
}

struct Gpu5 {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    h0: Option<Tensor>,
}

impl Gpu5 {
    fn inputs(&self) -> DeltaInputs<'_> {
        DeltaInputs { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta, h0: self.h0.as_ref() }
    }
}

fn upload(s: &DeltaShape, x: &Inputs) -> Gpu5 {
    Gpu5 {
        q: up64(&x.q, &[s.b, s.t, s.h, s.dk]),
        k: up64(&x.k, &[s.b, s.t, s.h, s.dk]),
        v: up64(&x.v, &[s.b, s.t, s.h, s.dv]),
        g: up64(&x.g, &[s.b, s.t, s.h]),
        beta: up64(&x.beta, &[s.b, s.t, s.h]),
        h0: x.h0.as_ref().map(|h| up64(h, &[s.b, s.h, s.dv, s.dk])),
    }
}

/// GPU chunked forward: (o, final state)
fn gpu_forward(s: &DeltaShape, t: &Gpu5) -> (Vec<f64>, Vec<f64>) {
    gpu_forward_tiles(s, t, None)
}

/// GPU chunked forward with the given state-pass tiles (default: the automatic choice).
fn gpu_forward_tiles(s: &DeltaShape, t: &Gpu5, tiles: Option<DeltaTiles>) -> (Vec<f64>, Vec<f64>) {
    let g = gpu();
    let o = g.zeros(&[s.b, s.t, s.h, s.dv]).unwrap();
    let ht = g.zeros(&[s.b, s.h, s.dv, s.dk]).unwrap();
    let ws = DeltaWorkspace::with_tiles(g, s, false, tiles.unwrap_or_else(|| DeltaTiles::auto(g, s))).unwrap();
    g.run(|b| delta::chunk_forward_ws(b, &ws, &t.inputs(), &o, Some(&ht))).unwrap();
    (down(&o), down(&ht))
}

fn check_forward(label: &str, s: &DeltaShape, x: &Inputs) -> (f64, f64) {
    check_forward_tiles(label, s, x, None)
}

fn check_forward_tiles(label: &str, s: &DeltaShape, x: &Inputs, tiles: Option<DeltaTiles>) -> (f64, f64) {
    let x = rounded(x);
    let (o, ht) = gpu_forward_tiles(s, &upload(s, &x), tiles);
    assert!(o.iter().chain(&ht).all(|v| v.is_finite()), "{label}: non-finite output");
    let (wo, wh) = cpu::forward(s, &x.refs());
    let (eo, eh) = (rel_rms_f64(&o, &wo), rel_rms_f64(&ht, &wh));
    eprintln!("forward {label}: o rel rms {eo:.2e}, ht rel rms {eh:.2e}");
    (eo, eh)
}

/// GPU backward vs the f64 reference; returns the worst rel rms.
fn check_backward(label: &str, s: &DeltaShape, x: &Inputs, with_dht: bool, seed: u64) -> f64 {
    check_backward_tiles(label, s, x, with_dht, seed, None)
}

fn check_backward_tiles(label: &str, s: &DeltaShape, x: &Inputs, with_dht: bool, seed: u64, tiles: Option<DeltaTiles>) -> f64 {
    let g = gpu();
    let tiles = tiles.unwrap_or_else(|| DeltaTiles::auto(g, s));
    let x = rounded(x);
    let mut r = rng(seed);
    let nv = s.rows() * s.dv;
    let dout: Vec<f64> = (0..nv).map(|_| r.random_range(-1.0f32..1.0) as f64).collect();
    let dht: Vec<f64> = (0..s.b * s.h * s.dv * s.dk).map(|_| r.random_range(-1.0f32..1.0) as f64).collect();
    let t = upload(s, &x);
    let tdo = up64(&dout, &[s.b, s.t, s.h, s.dv]);
    let tdht = up64(&dht, &[s.b, s.h, s.dv, s.dk]);
    let gr = delta::DeltaGrads::new(g, s, x.h0.is_some()).unwrap();
    // odd seeds: the backward takes the forward's intermediates from the shared workspace
    let reuse = seed % 2 == 1;
    if reuse {
        let ws = DeltaWorkspace::with_tiles(g, s, true, tiles).unwrap();
        let o = g.zeros(&[s.b, s.t, s.h, s.dv]).unwrap();
        g.run(|b| delta::chunk_forward_ws(b, &ws, &t.inputs(), &o, None)).unwrap();
        g.run(|b| delta::chunk_backward_after_forward(b, &ws, &t.inputs(), &tdo, with_dht.then_some(&tdht), &gr)).unwrap();
    } else {
        let ws = DeltaWorkspace::with_tiles(g, s, true, tiles).unwrap();
        g.run(|b| delta::chunk_backward_ws(b, &ws, &t.inputs(), &tdo, with_dht.then_some(&tdht), &gr)).unwrap();
    }
    let want = cpu::backward(s, &x.refs(), &dout, with_dht.then_some(&dht[..]));
    let mut worst = 0.0f64;
    let mut line = format!("backward{} {label}:", if reuse { " (after forward)" } else { "" });
    let mut all = vec![
        ("dq", &gr.dq, &want.dq),
        ("dk", &gr.dk, &want.dk),
        ("dv", &gr.dv, &want.dv),
        ("dg", &gr.dg, &want.dg),
        ("dbeta", &gr.dbeta, &want.dbeta),
    ];
    if let Some(d) = &gr.dh0 {
        all.push(("dh0", d, &want.dh0));
    }
    for (name, got, want) in all {
        let got = down(got);
        assert!(got.iter().all(|v| v.is_finite()), "{label} {name}: non-finite");
        let e = rel_rms_f64(&got, want);
        line += &format!(" {name} {e:.1e}");
        worst = worst.max(e);
    }
    eprintln!("{line}");
    worst
}

/// log-range of -g: g = -exp(U(lo, hi)); weak decay (g in [-0.14, -0.0025]), strong
/// (g in [-5, -1]) and mixed.
const WEAK: (f64, f64) = (-6.0, -2.0);
const STRONG: (f64, f64) = (0.0, 1.6);
const MIXED: (f64, f64) = (-6.0, 1.6);

#[test]
fn chunk_forward_matches_naive_recurrence() {
    let mut r = rng(40);
    let mut worst = (0.0f64, 0.0f64);
    let mut cases = vec![];
    for (i, &t) in [1, 2, 63, 64, 65, 130, 300].iter().enumerate() {
        let gate = [WEAK, STRONG, MIXED][i % 3];
        cases.push((2, t, 1 + 2 * (i % 2), 16, 16, i % 2 == 0, i % 3 != 1, gate));
        cases.push((1, t, 3 - 2 * (i % 2), 16, 16, i % 2 == 1, i % 3 == 1, gate));
    }
    for &(t, gate) in &[(1, MIXED), (65, STRONG), (300, WEAK)] {
        cases.push((1, t, 3, 64, 64, true, true, gate));
        cases.push((2, t, 1, 64, 64, false, false, MIXED));
    }
    cases.push((1, 130, 2, 128, 128, true, true, MIXED));
    cases.push((1, 64, 1, 128, 128, false, true, STRONG));
    cases.push((1, 1, 1, 128, 128, true, false, WEAK));
    cases.push((2, 100, 2, 32, 48, true, true, MIXED));
    // dk > 128: the state kernels' 256-row variant, with padding past dk
    cases.push((1, 70, 1, 160, 96, true, true, MIXED));
    for (b, t, h, dk, dv, l2, h0, gate) in cases {
        let s = DeltaShape { b, t, h, dk, dv, scale: 1.0 / (dk as f32).sqrt(), l2norm: l2 };
        let x = inputs(&mut r, &s, h0, gate);
        let (eo, eh) = check_forward(&format!("B={b} T={t} H={h} dk={dk} dv={dv} l2={l2} h0={h0} g={gate:?}"), &s, &x);
        assert!(eo <= 1e-5 && eh <= 1e-5, "o {eo:.2e} ht {eh:.2e}");
        worst = (worst.0.max(eo), worst.1.max(eh));
    }
    eprintln!("forward worst: o {:.2e} ht {:.2e}", worst.0, worst.1);
}

#[test]
fn chunk_forward_equals_chained_steps() {
    let g = gpu();
    let mut r = rng(41);
    for &(b, t, h, d, l2) in &[(2, 130, 2, 16, true), (1, 70, 1, 64, false)] {
        let s = shape(b, t, h, d, l2);
        let x = rounded(&inputs(&mut r, &s, true, MIXED));
        let tx = upload(&s, &x);
        let (o_chunk, ht_chunk) = gpu_forward(&s, &tx);
        // T single-token calls, each on a [B, 1, H, *] slice, state in place
        let st = up64(x.h0.as_ref().unwrap(), &[b, h, d, d]);
        let one = DeltaShape { t: 1, ..s };
        let slice = |v: &[f64], w: usize, tt: usize| -> Vec<f64> {
            (0..b).flat_map(|bb| v[((bb * t + tt) * h) * w..((bb * t + tt) * h + h) * w].to_vec()).collect()
        };
        let mut steps = vec![];
        for tt in 0..t {
            let ts = Gpu5 {
                q: up64(&slice(&x.q, d, tt), &[b, 1, h, d]),
                k: up64(&slice(&x.k, d, tt), &[b, 1, h, d]),
                v: up64(&slice(&x.v, d, tt), &[b, 1, h, d]),
                g: up64(&slice(&x.g, 1, tt), &[b, 1, h]),
                beta: up64(&slice(&x.beta, 1, tt), &[b, 1, h]),
                h0: None,
            };
            steps.push((ts, g.zeros(&[b, 1, h, d]).unwrap()));
        }
        g.run(|bt| {
            for (ts, o) in &steps {
                delta::recurrent_step(bt, &one, &ts.inputs(), &st, o)?;
            }
            Ok(())
        })
        .unwrap();
        let mut o_steps = vec![0.0; b * t * h * d];
        for (tt, (_, o)) in steps.iter().enumerate() {
            let ov = down(o);
            for bb in 0..b {
                o_steps[((bb * t + tt) * h) * d..((bb * t + tt) * h + h) * d].copy_from_slice(&ov[bb * h * d..(bb + 1) * h * d]);
            }
        }
        let (eo, eh) = (rel_rms_f64(&o_steps, &o_chunk), rel_rms_f64(&down(&st), &ht_chunk));
        let (wo, wh) = cpu::forward(&s, &x.refs());
        let (ro, rh) = (rel_rms_f64(&o_steps, &wo), rel_rms_f64(&down(&st), &wh));
        eprintln!("{t} chained steps vs chunked (B={b} H={h} d={d} l2={l2}): o {eo:.2e} ht {eh:.2e}; steps vs f64: o {ro:.2e} ht {rh:.2e}");
        assert!(eo <= 1e-5 && eh <= 1e-5 && ro <= 1e-5 && rh <= 1e-5);
    }
}

#[test]
fn chunk_backward_matches_reference_backward() {
    let mut r = rng(42);
    let mut worst = 0.0f64;
    let mut cases = vec![];
    for (i, &t) in [1, 2, 63, 64, 65, 130, 300].iter().enumerate() {
        let gate = [WEAK, STRONG, MIXED][i % 3];
        cases.push((1 + i % 2, t, 1 + 2 * (i % 2), 16, 16, i % 2 == 0, i % 3 != 1, i % 2 == 1, gate));
    }
    cases.push((1, 65, 3, 64, 64, true, true, true, MIXED));
    cases.push((2, 300, 1, 64, 64, false, false, false, WEAK));
    cases.push((1, 130, 1, 128, 128, true, true, true, MIXED));
    cases.push((1, 100, 2, 32, 48, true, true, true, STRONG));
    cases.push((1, 70, 1, 160, 96, true, true, true, MIXED));
    for (i, (b, t, h, dk, dv, l2, h0, dht, gate)) in cases.into_iter().enumerate() {
        let s = DeltaShape { b, t, h, dk, dv, scale: 1.0 / (dk as f32).sqrt(), l2norm: l2 };
        let x = inputs(&mut r, &s, h0, gate);
        let e =
            check_backward(&format!("B={b} T={t} H={h} dk={dk} dv={dv} l2={l2} h0={h0} dht={dht} g={gate:?}"), &s, &x, dht, 100 + i as u64);
        assert!(e <= 1e-4, "worst gradient rel rms {e:.2e}");
        worst = worst.max(e);
    }
    eprintln!("backward worst rel rms: {worst:.2e}");
}

#[test]
fn long_sequence_extreme_gates_stay_finite() {
    // one T = 8192 sequence: beta = 0 on the first quarter, beta = 1 on the second, then
    // 0 / 1 / random interleaved; strong decay with g = -20 spikes throughout
    let mut r = rng(43);
    let s = shape(1, 8192, 1, 16, true);
    let mut x = inputs(&mut r, &s, true, STRONG);
    for (i, gv) in x.g.iter_mut().enumerate() {
        if i % 97 == 13 || i % 1000 == 999 {
            *gv = -20.0;
        }
    }
    for (i, b) in x.beta.iter_mut().enumerate() {
        *b = match i {
            0..2048 => 0.0,
            2048..4096 => 1.0,
            _ => [0.0, 1.0, *b][i % 3],
        };
    }
    let (eo, eh) = check_forward("T=8192 g=-20 spikes, beta 0 / 1 / mixed", &s, &x);
    let e = check_backward("T=8192 g=-20 spikes, beta 0 / 1 / mixed", &s, &x, true, 44);
    assert!(eo <= 1e-5 && eh <= 1e-5 && e <= 1e-4);
}

#[test]
fn every_state_pass_tile_matches_the_reference() {
    // each value-column block the state passes take (8, 16, 32 columns per workgroup), at
    // key dims padded to 64, 128 and 256 and value dims that leave a partial block
    let mut r = rng(45);
    for (i, &(dk, dv)) in [(48, 40), (100, 68), (160, 20)].iter().enumerate() {
        let s = DeltaShape { b: 1, t: 130, h: 2, dk, dv, scale: 1.0 / (dk as f32).sqrt(), l2norm: true };
        let x = inputs(&mut r, &s, true, MIXED);
        let limit = gpu().limits.max_compute_workgroup_storage_size as usize;
        let dk_pad = s.dk_pad();
        // every block that fits this adapter (lavapipe: 32 KiB, all but 32 columns at dk 256)
        let fits: Vec<usize> =
            [8, 16, 32].into_iter().filter(|&bv| DeltaTiles::smem_fwd(dk_pad, bv).max(DeltaTiles::smem_bwd(dk_pad, bv)) <= limit).collect();
        assert!(fits.len() >= 2, "dk={dk}: only {fits:?} fit {limit} bytes");
        for bv in fits {
            let tiles = DeltaTiles { bv_fwd: bv, bv_bwd: bv };
            let label = format!("dk={dk} dv={dv} BV={bv}");
            let (eo, eh) = check_forward_tiles(&label, &s, &x, Some(tiles));
            let e = check_backward_tiles(&label, &s, &x, true, 200 + i as u64 + bv as u64, Some(tiles));
            assert!(eo <= 1e-5 && eh <= 1e-5 && e <= 1e-4, "{label}: o {eo:.2e} ht {eh:.2e} grads {e:.2e}");
        }
    }
}

#[test]
fn low_tile_puts_the_lower_tiles_first_and_covers_every_tile_once() {
    let g = gpu();
    let map = delta::low_tile_map(g).unwrap();
    assert_eq!(map.len(), 256);
    let mut seen = [[false; 16]; 16];
    for (lid, &(ti, tj)) in map.iter().enumerate() {
        assert!(ti < 16 && tj < 16, "invocation {lid}: tile ({ti}, {tj})");
        assert!(!seen[ti as usize][tj as usize], "invocation {lid}: tile ({ti}, {tj}) taken twice");
        seen[ti as usize][tj as usize] = true;
        // invocations 0..135 hold the 136 tiles on or below the diagonal, the rest the upper ones
        assert_eq!(tj <= ti, lid < 136, "invocation {lid}: tile ({ti}, {tj})");
    }
    // the upper tiles are the strictly lower ones transposed, in the same order
    for x in 0..120 {
        let (ti, tj) = map[136 + x];
        assert!(map[..136].contains(&(tj, ti)) && tj > ti, "upper invocation {}: ({ti}, {tj})", 136 + x);
    }
}
