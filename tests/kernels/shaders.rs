//! The shader registry (`gpu::SHADERS` and `gpu::INCLUDES` in src/gpu/mod.rs, every file
//! of shaders/): each WGSL file is registered, validates with naga and translates to
//! SPIR-V, MSL and HLSL, in every specialisation the host uses, so a shader that would
//! break on Metal or DX12 fails here.
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use taylorcal::gpu::{resolve_includes, specialise, INCLUDES, SHADERS};

fn variants(name: &str, src: &str) -> Vec<(String, String)> {
    let mut v = vec![(name.to_string(), src.to_string())];
    if src.contains("f16-switch") {
        v.push((format!("{name}[f16]"), specialise(src, &[], true)));
    }
    if name == "attention" || name == "attention_bwd" {
        for (d, bc) in [(128, 16), (256, 8)] {
            v.push((format!("{name}[D={d}]"), specialise(src, &[("D", d), ("BC", bc)], false)));
        }
        v.push((format!("{name}[BR=16]"), specialise(src, &[("BR", 16)], false)));
    }
    if name.starts_with("mma_") {
        // the three products of a linear layer (operand layouts), f16 weights, and the
        // cooperative kernel's workgroup for 64-wide subgroups
        for (ta, tb) in [(0, 1), (1, 1)] {
            v.push((format!("{name}[TA={ta},TB={tb}]"), specialise(src, &[("TA", ta), ("TB", tb)], false)));
        }
        v.push((format!("{name}[64x64,WG=256]"), specialise(src, &[("BM", 64), ("BN", 64), ("SGN", 2), ("WG", 256)], true)));
    }
    if name.starts_with("attn_mma_") || name.starts_with("attn_bwd_mma_") {
        // head dim 128 with blocks of 16 keys, tiles of 64 keys, and 16- and 64-wide subgroups
        v.push((format!("{name}[D=128,SBW=16]"), specialise(src, &[("D", 128), ("SBW", 16)], false)));
        v.push((format!("{name}[BC=64]"), specialise(src, &[("BC", 64)], false)));
        for sg in [16, 64] {
            v.push((format!("{name}[SG={sg}]"), specialise(src, &[("SG", sg)], false)));
        }
    }
    if name == "delta_state" {
        // the state-pass tiles the host picks: key dims 64/128/256, value blocks 8/16/32
        for dk in [64, 128, 256] {
            for bv in [8, 16, 32] {
                v.push((format!("{name}[DK={dk},BV={bv}]"), specialise(src, &[("DK", dk), ("BV", bv)], false)));
            }
        }
    }
    v
}

fn check(label: &str, src: &str) {
    let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{label}: WGSL parse error:\n{}", e.emit_to_string(src)));
    let caps = Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP | Capabilities::COOPERATIVE_MATRIX;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: validation error:\n{}", e.emit_to_string(src)));
    assert!(!module.entry_points.is_empty(), "{label}: no entry points");

    let spv_opts = spv::Options { lang_version: (1, 3), ..Default::default() };
    spv::write_vec(&module, &info, &spv_opts, None).unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"));

    let msl_opts = msl::Options { lang_version: (2, 4), ..Default::default() };
    msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default()).unwrap_or_else(|e| panic!("{label}: MSL: {e}"));

    if src.contains("enable wgpu_cooperative_matrix;") {
        // naga writes no HLSL for cooperative matrices: on DX12 the mma kernels take their
        // fallback (mma_tile), which is checked below like every other shader
        return;
    }
    let hlsl_opts = hlsl::Options { shader_model: hlsl::ShaderModel::V6_2, ..Default::default() };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl::PipelineOptions::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));
}

#[test]
fn every_shader_file_is_registered_validates_and_translates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "wgsl")).collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let src = std::fs::read_to_string(&path).unwrap();
        if let Some(inc) = INCLUDES.iter().find(|(n, _)| *n == name) {
            // an include is checked as part of every shader that pulls it in
            assert_eq!(inc.1, src, "{name}: registered include differs from the file");
            assert!(SHADERS.iter().any(|(_, s)| s.contains(&format!("// #include {name}"))), "include {name} is unused");
            continue;
        }
        let registered = SHADERS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("shaders/{name}.wgsl is not in gpu::SHADERS"));
        assert_eq!(registered.1, src, "{name}: registered source differs from the file");
        for (label, s) in variants(&name, &resolve_includes(registered.1)) {
            check(&label, &s);
        }
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // the checker itself must be able to fail: an undeclared identifier
    let bad = "@compute @workgroup_size(1) fn main() { let x = y; }";
    assert!(naga::front::wgsl::parse_str(bad).is_err());
    let r = std::panic::catch_unwind(|| check("bad", bad));
    assert!(r.is_err());
}
