//! The six initialisation strategies compared in the ablation.
use anyhow::{bail, Result};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Naive,
    ZeroGate,
    SmallGate,
    TaylorInit,
    AlignmentOnly,
    TaylorCalibrate,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Naive,
        Strategy::ZeroGate,
        Strategy::SmallGate,
        Strategy::TaylorInit,
        Strategy::AlignmentOnly,
        Strategy::TaylorCalibrate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Naive => "naive",
            Strategy::ZeroGate => "zero-gate",
            Strategy::SmallGate => "small-gate",
            Strategy::TaylorInit => "taylor-init",
            Strategy::AlignmentOnly => "alignment-only",
            Strategy::TaylorCalibrate => "taylor-calibrate",
        }
    }

    pub fn parse(s: &str) -> Result<Strategy> {
        match Strategy::ALL.iter().find(|x| x.name() == s) {
            Some(x) => Ok(*x),
            None => bail!("unknown strategy '{s}' (choose from {})", Strategy::ALL.map(|x| x.name()).join(", ")),
        }
    }

    pub fn phase1(self) -> bool {
        matches!(self, Strategy::TaylorInit | Strategy::TaylorCalibrate)
    }

    pub fn phase2(self) -> bool {
        matches!(self, Strategy::AlignmentOnly | Strategy::TaylorCalibrate)
    }
}
