//! The sharded optimizer step: each rank clips its gradient shards by the global norm and
//! runs AdamW on the master shards and moments it holds, parameter by parameter (a parameter
//! no rank produced a gradient for is not stepped, as in one process).

use tch::Tensor;
use tessera_model::{AdamWConfig, adamw_update};
use tessera_ops::Collective;

use super::FsdpTrainer;
use crate::error::Result;
use crate::source::BatchSource;

impl<C: Collective + 'static, S: BatchSource> FsdpTrainer<C, S> {
    /// Applies one AdamW update at learning rate `lr` with the reduced gradient shards (one per
    /// unit) whose global norm is `grad_norm`; `used[unit][param]` is non-zero for parameters
    /// that got a gradient on some rank.
    pub(super) fn apply_update(&mut self, grad_shards: &[Tensor], used: &[Vec<i64>], lr: f64, grad_norm: f64) -> Result<()> {
        let t = &self.job.train;
        let scale = match t.clip_grad {
            Some(clip) if grad_norm > clip => clip / (grad_norm + 1e-6),
            _ => 1.0,
        };
        let cfg = AdamWConfig { lr, beta1: t.betas[0], beta2: t.betas[1], eps: t.eps, weight_decay: t.weight_decay };
        for (ui, u) in self.units.iter().enumerate() {
            let grad = &grad_shards[ui];
            if scale != 1.0 {
                let _ = grad.shallow_clone().g_mul_scalar_(scale);
            }
            let s = &self.shards[ui];
            for (pi, used) in used[ui].iter().enumerate() {
                if *used != 0 {
                    self.steps[ui][pi] += 1;
                }
            }
            for (range, pi) in u.shard_segments() {
                if used[ui][pi] == 0 {
                    continue;
                }
                let (a, n) = (range.start as i64, range.len() as i64);
                let wd = if u.params[pi].decay { t.weight_decay } else { 0.0 };
                adamw_update(
                    &s.master.narrow(0, a, n),
                    &grad.narrow(0, a, n),
                    &s.exp_avg.narrow(0, a, n),
                    &s.exp_avg_sq.narrow(0, a, n),
                    &cfg,
                    wd,
                    self.steps[ui][pi],
                )?;
            }
        }
        Ok(())
    }
}
