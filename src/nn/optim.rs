//! AdamW over named parameter slots with per-group learning rates, gradient clipping and
//! a warmup + cosine schedule: the one optimizer used by phase 2 alignment, stage 1 and
//! stage 2 distillation.
use crate::gpu::{Batch, Gpu, Tensor};
use crate::io::HostTensor;
use crate::ops::optim::{self, AdamW, Reducer};
use anyhow::{anyhow, ensure, Result};
use std::collections::HashMap;

/// Linear warmup over `warmup` steps, then cosine decay from `peak` to `peak * min_ratio`
/// at step `total`. `step` is 0-based.
pub fn cosine_lr(step: usize, total: usize, warmup: usize, peak: f32, min_ratio: f32) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1);
    let t = ((step - warmup) as f32 / span as f32).min(1.0);
    let cos = 0.5 * (1.0 + (std::f32::consts::PI * t).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cos)
}

/// One trained tensor: the parameter, its gradient and AdamW's two moments.
pub struct Slot {
    pub name: String,
    pub param: Tensor,
    pub grad: Tensor,
    pub m: Tensor,
    pub v: Tensor,
    /// Index into the learning rates passed to [`Optimizer::step`].
    pub group: usize,
}

/// AdamW with a global gradient-norm clip over a set of parameter slots.
pub struct Optimizer {
    pub slots: Vec<Slot>,
    /// Steps taken so far (AdamW's bias correction uses step + 1).
    pub step: u32,
    pub hyper: AdamW,
    norm: Reducer,
}

impl Optimizer {
    /// `params`: (name, parameter, gradient buffer, group).
    pub fn new(gpu: &Gpu, params: Vec<(String, Tensor, Tensor, usize)>, hyper: AdamW) -> Result<Optimizer> {
        ensure!(!params.is_empty(), "nothing to train");
        // the norm's partial sums round up per tensor: room for one extra workgroup each
        let total: usize = params.iter().map(|p| p.1.numel() + 256).sum();
        let slots = params
            .into_iter()
            .map(|(name, param, grad, group)| {
                assert_eq!(param.shape, grad.shape, "{name}: gradient shape");
                Ok(Slot { m: gpu.zeros(&param.shape)?, v: gpu.zeros(&param.shape)?, name, param, grad, group })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer { slots, step: 0, hyper, norm: Reducer::new(gpu, total, 1)? })
    }

    pub fn zero_grad(&self, b: &mut Batch) {
        for s in &self.slots {
            b.clear(&s.grad);
        }
    }

    /// One AdamW step with learning rate `lrs[slot.group]` per slot; the squared gradient
    /// norm (before clipping) is left in [`Optimizer::grad_norm_sq`]'s buffer.
    pub fn step(&mut self, b: &mut Batch, lrs: &[f32]) {
        let grads: Vec<&Tensor> = self.slots.iter().map(|s| &s.grad).collect();
        optim::sum_squares(b, &grads, &self.norm, 0);
        self.step += 1;
        for s in &self.slots {
            let o = AdamW { lr: lrs[s.group], ..self.hyper };
            optim::adamw(b, &o, self.step, &s.param, &s.grad, &s.m, &s.v, &self.norm);
        }
    }

    /// The buffer whose first element is the last step's squared global gradient norm.
    pub fn grad_norm_sq(&self) -> &Tensor {
        &self.norm.out
    }

    /// The moments as host tensors named `m.<param>` and `v.<param>`.
    pub fn state(&self, gpu: &Gpu) -> Result<HashMap<String, HostTensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), HostTensor::new(s.m.shape.clone(), gpu.read(&s.m)?));
            out.insert(format!("v.{}", s.name), HostTensor::new(s.v.shape.clone(), gpu.read(&s.v)?));
        }
        Ok(out)
    }

    /// Restore moments saved by [`Optimizer::state`] and the step count.
    pub fn load_state(&mut self, gpu: &Gpu, state: &HashMap<String, HostTensor>, step: u32) -> Result<()> {
        for s in &self.slots {
            for (prefix, t) in [("m", &s.m), ("v", &s.v)] {
                let key = format!("{prefix}.{}", s.name);
                let h = state.get(&key).ok_or_else(|| anyhow!("optimizer state has no {key}"))?;
                ensure!(h.shape == t.shape, "optimizer state {key} has shape {:?}, expected {:?}", h.shape, t.shape);
                gpu.write(t, &h.data);
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::cosine_lr;

    #[test]
    fn warmup_then_cosine() {
        assert!((cosine_lr(0, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-6);
        assert!((cosine_lr(9, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-6);
        assert!((cosine_lr(10, 100, 10, 1.0, 0.1) - 1.0).abs() < 1e-6);
        assert!((cosine_lr(55, 100, 10, 1.0, 0.1) - 0.55).abs() < 1e-6);
        assert!((cosine_lr(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-6);
        assert!((cosine_lr(5, 100, 0, 2.0, 0.0) - 2.0 * 0.5 * (1.0 + (std::f32::consts::PI * 0.05).cos())).abs() < 1e-5);
    }
}
