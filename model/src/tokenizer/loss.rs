//! Reconstruction losses, as ml-4m's `compute_reconst_loss` defines them.

use tch::{Kind, Reduction, Tensor};

use super::config::ReconLoss;

/// The mean reconstruction loss of `pred` against `target`. For values both are `(B, C, …)`
/// or `(B, D)`; for cross-entropy `pred` holds logits `(B, classes, S, S)` and `target`
/// int64 class ids `(B, S, S)`. Cosine is taken along dimension 1 (channels or vector).
pub fn recon_loss(kind: ReconLoss, pred: &Tensor, target: &Tensor) -> Tensor {
    match kind {
        ReconLoss::Mse => pred.mse_loss(target, Reduction::Mean),
        ReconLoss::L1 => pred.l1_loss(target, Reduction::Mean),
        ReconLoss::SmoothL1 => pred.smooth_l1_loss(target, Reduction::Mean, 1.0),
        ReconLoss::CrossEntropy => pred.cross_entropy_loss::<Tensor>(target, None, Reduction::Mean, -100, 0.0),
        ReconLoss::Cosine => 1.0 - Tensor::cosine_similarity(pred, target, 1, 1e-8).mean(Kind::Float),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn tokenizer_losses_match_their_definitions() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 0.0, 4.0]).reshape([1, 2, 2]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 0.5, 4.0]).reshape([1, 2, 2]);
        let v = |k| recon_loss(k, &a, &b).double_value(&[]);
        assert!((v(ReconLoss::Mse) - (4.0 + 0.25) / 4.0).abs() < 1e-6);
        assert!((v(ReconLoss::L1) - 2.5 / 4.0).abs() < 1e-6);
        // Huber(β=1): |d| − 0.5 above 1, d²/2 below.
        assert!((v(ReconLoss::SmoothL1) - (1.5 + 0.125) / 4.0).abs() < 1e-6);
        assert!(recon_loss(ReconLoss::Cosine, &a, &a).double_value(&[]).abs() < 1e-6);
        let logits = Tensor::from_slice(&[10.0f32, -10.0]).reshape([1, 2, 1, 1]);
        let target = Tensor::zeros([1, 1, 1], (Kind::Int64, Device::Cpu));
        assert!(recon_loss(ReconLoss::CrossEntropy, &logits, &target).double_value(&[]) < 1e-6);
    }
}
