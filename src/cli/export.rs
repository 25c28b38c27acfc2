//! The `export` subcommand: a student read from any layout (`io::load_student`), written
//! for Python tools in the layout --to names (`taylorcal::io::export`).
use super::args::ExportArgs;
use super::claim_out;
use anyhow::{ensure, Result};
use serde_json::json;
use taylorcal::io::out_dir::{self, Kind};
use taylorcal::io::{self, export};

/// `taylorcal export`: --out is checked first, then the student read and checked against
/// the layout, and only then --out claimed and written.
pub fn export(a: &ExportArgs) -> Result<()> {
    let model = a.model.as_path();
    ensure!(
        io::is_student(model),
        "{} is not a hybrid student (a taylorcal checkpoint, or a directory `taylorcal export` wrote); convert a teacher with \
         `taylorcal convert` first",
        model.display()
    );
    let kind = Kind::Model(export::is_own_export);
    out_dir::check(&a.out, kind, &[model], a.force)?;
    let ck = io::load_student(model)?;
    export::check_student(&ck, a.to)?;
    let _out = claim_out(&a.out, kind, model, &[], a.force)?;
    let done = export::save_export(&a.out, &ck, a.to, a.dtype)?;
    for w in &done.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        let summary = json!({
            "out": a.out, "to": a.to.name(), "model_type": a.to.model_type(), "dtype": a.dtype.name(), "tensors": done.tensors,
            "bytes": done.bytes, "kept_layers": ck.config.attn_layers, "files": export::EXPORT_FILES, "warnings": done.warnings,
        });
        println!("{summary}");
    } else {
        println!(
            "exported {} tensors ({:.1} MiB, {}) as {} (model_type {}, kept softmax layers {:?}) to {}",
            done.tensors,
            done.bytes as f64 / 1048576.0,
            a.dtype.name(),
            a.to.name(),
            a.to.model_type(),
            ck.config.attn_layers,
            a.out.display()
        );
    }
    Ok(())
}
