//! Embedding gather, residual add and SwiGLU, forward and backward
//! (src/ops/elementwise.rs, shaders/elementwise.wgsl), against the f64 references; the f64
//! backward against finite differences; the embedding table split over bindings. (The
//! split backward of SwiGLU and of the embedding runs with RMSNorm's in rmsnorm.rs.)
use crate::common::*;
use taylorcal::ops::elementwise;

#[test]
fn elementwise_kernels_match_reference() {
    let g = gpu();
    let mut r = rng(6);
    let n = 1000;
    let (a, b2, c) = (randn(&mut r, n, 3.0), randn(&mut r, n, 3.0), randn(&mut r, n, 1.0));
    let (ta, tb, tc) = (up(g, &[n], &a), up(g, &[n], &b2), up(g, &[n], &c));
    let out = g.zeros(&[n]).unwrap();
    // embedding: vocab 37, dim 19, 11 ids
    let table = randn(&mut r, 37 * 19, 1.0);
    let ids: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 37).collect();
    let (tt, tid) = (up(g, &[37, 19], &table), g.upload_u32(&[11], &ids).unwrap());
    let emb = g.zeros(&[11, 19]).unwrap();
    g.run(|bt| {
        elementwise::swiglu(bt, &ta, &tb, &out);
        elementwise::add(bt, &ta, &tc);
        elementwise::embed(bt, &tid, &tt, &emb);
        Ok(())
    })
    .unwrap();
    assert_close("swiglu", &read(g, &out), &elementwise::cpu::swiglu(&f64v(&a), &f64v(&b2)), 1e-5);
    let want_add: Vec<f64> = a.iter().zip(&c).map(|(x, y)| *x as f64 + *y as f64).collect();
    assert_close("add", &read(g, &tc), &want_add, 1e-6);
    assert_close("embed", &read(g, &emb), &elementwise::cpu::embed(&ids, &f64v(&table), 19), 0.0);
}

// ---------------------------------------------------------------------------------------
// backward

#[test]
fn swiglu_backward_matches_reference() {
    let g = gpu();
    let mut r = rng(23);
    for &(rows, cols) in &[(1, 1), (1, 67), (7, 577), (130, 67)] {
        let n = rows * cols;
        let (gate, upv, dact) = (randn(&mut r, n, 6.0), randn(&mut r, n, 2.0), randn(&mut r, n, 1.0));
        let (tg, tu, td) = (up(g, &[rows, cols], &gate), up(g, &[rows, cols], &upv), up(g, &[rows, cols], &dact));
        let (dg, du) = (up(g, &[rows, cols], &vec![5.0; n]), up(g, &[rows, cols], &vec![5.0; n]));
        g.run(|b| {
            elementwise::swiglu_backward(b, &tg, &tu, &td, &dg, &du);
            Ok(())
        })
        .unwrap();
        let (wg, wu) = elementwise::cpu::swiglu_backward(&f64v(&gate), &f64v(&upv), &f64v(&dact));
        check(&format!("swiglu_backward {rows}x{cols} dgate"), &read(g, &dg), &wg, 1e-5);
        check(&format!("swiglu_backward {rows}x{cols} dup"), &read(g, &du), &wu, 1e-5);
    }
}

#[test]
fn swiglu_reference_gradient_matches_finite_differences() {
    let mut r = rng(24);
    let n = 9;
    let (gate, upv, dact) = (f64v(&randn(&mut r, n, 6.0)), f64v(&randn(&mut r, n, 2.0)), f64v(&randn(&mut r, n, 1.0)));
    let f = |g: &[f64], u: &[f64]| elementwise::cpu::swiglu(g, u).iter().zip(&dact).map(|(a, b)| a * b).sum::<f64>();
    let (dg, du) = elementwise::cpu::swiglu_backward(&gate, &upv, &dact);
    let eg = rel_err_f64(&dg, &numeric_grad(&gate, 1e-5, |v| f(v, &upv)));
    let eu = rel_err_f64(&du, &numeric_grad(&upv, 1e-5, |v| f(&gate, v)));
    eprintln!("swiglu f64 gradient vs finite differences: dgate {eg:.1e}, dup {eu:.1e}");
    assert!(eg < 1e-7 && eu < 1e-7, "swiglu reference gradient vs finite differences: dgate {eg:.2e}, dup {eu:.2e}");
}

#[test]
fn embed_backward_with_repeated_ids_matches_reference() {
    let g = gpu();
    let mut r = rng(25);
    for &(vocab, dim, t) in &[(1, 1, 1), (37, 19, 11), (1000, 67, 131), (50, 577, 200)] {
        // repeated ids (every fourth position reuses id 3 % vocab), first and last rows included
        let mut ids: Vec<u32> = (0..t as u32).map(|i| if i % 4 == 0 { 3 % vocab as u32 } else { (i * 7919 + 5) % vocab as u32 }).collect();
        ids[t - 1] = vocab as u32 - 1;
        if t > 2 {
            ids[1] = 0;
        }
        let dx = randn(&mut r, t * dim, 1.0);
        let table0 = randn(&mut r, vocab * dim, 1.0);
        let (tdx, dtable) = (up(g, &[t, dim], &dx), up(g, &[vocab, dim], &table0));
        g.run(|b| {
            elementwise::embed_backward(b, &ids, &tdx, &dtable);
            Ok(())
        })
        .unwrap();
        let want: Vec<f64> =
            elementwise::cpu::embed_backward(&ids, &f64v(&dx), vocab, dim).iter().zip(&table0).map(|(a, b)| a + *b as f64).collect();
        check(&format!("embed_backward V{vocab} D{dim} T{t}"), &read(g, &dtable), &want, 1e-6);
    }
}

#[test]
fn id_groups_are_csr_by_id() {
    let (uniq, offsets, pos) = elementwise::group_ids(&[5, 2, 5, 0, 2, 5]);
    assert_eq!(uniq, [0, 2, 5]);
    assert_eq!(offsets, [0, 1, 3, 6]);
    assert_eq!(pos, [3, 1, 4, 0, 2, 5]);
    let (u, o, p) = elementwise::group_ids(&[]);
    assert!(u.is_empty() && p.is_empty() && o == [0]);
}

// ---------------------------------------------------------------------------------------
// split over bindings

#[test]
fn embed_split_table_matches_reference() {
    let g = split_gpu();
    let (vocab, dim) = (500, 19);
    assert!((vocab * dim * 4) as u64 > MAX_BINDING);
    let step = g.rows_per_binding(&[(dim * 4) as u64]);
    assert!(step < vocab, "no split: {step} table rows per binding");
    let mut r = rng(22);
    let table = randn(&mut r, vocab * dim, 1.0);
    // ids from every part of the table, first and last rows included
    let mut ids: Vec<u32> = (0..97).map(|i| (i * 173 + 11) % vocab as u32).collect();
    ids.extend([0, vocab as u32 - 1, step as u32 - 1, step as u32]);
    let (tt, tid) = (up(g, &[vocab, dim], &table), g.upload_u32(&[ids.len()], &ids).unwrap());
    let out = g.zeros(&[ids.len(), dim]).unwrap();
    g.run(|b| {
        elementwise::embed(b, &tid, &tt, &out);
        Ok(())
    })
    .unwrap();
    assert_close("split embed", &read(g, &out), &elementwise::cpu::embed(&ids, &f64v(&table), dim), 0.0);
}
