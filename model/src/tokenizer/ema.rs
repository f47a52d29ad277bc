//! The EMA cosine-similarity codebook (ml-4m's `lucid` `CosineSimCodebook`): latents and codes
//! are l2-normalised and a latent takes the code of largest dot product. Codes are not trained
//! by gradient: after each step every code moves (EMA) towards the normalised mean of the
//! latents assigned to it, and a code whose EMA cluster size falls below the dead threshold is
//! replaced by a random latent of the batch, so that no code stays unused.
//!
//! Shape legend: H heads (independent codebooks), N latents per head, K codes, D code dim.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor, nn};

use super::mix;

/// The codebook state; every tensor is a non-trainable variable of the tokenizer's store, so
/// it is saved, loaded and resumed with the weights.
#[derive(Debug)]
pub struct EmaCosineCodebook {
    /// Unit-norm codes `(H, K, D)`.
    embed_HKD: Tensor,
    /// EMA of the number of latents assigned to each code `(H, K)`.
    cluster_size_HK: Tensor,
    /// Updates applied so far (one i64): seeds dead-code sampling so a resumed run draws the
    /// same latents as an uninterrupted one.
    updates: Tensor,
    decay: f64,
    dead_threshold: f64,
    seed: u64,
}

/// l2-normalises along the last dimension (eps keeps zero vectors finite).
pub fn l2norm(x: &Tensor) -> Tensor {
    x / x.square().sum_dim_intlist(-1, true, Kind::Float).sqrt().clamp_min(1e-12)
}

impl EmaCosineCodebook {
    /// Creates the codebook under `p` with uniform random unit codes (ml-4m: uniform init, then
    /// l2-normalisation; k-means init off). Draws from libtorch's generator: callers hold the
    /// crate's RNG lock.
    pub fn new(p: &nn::Path, heads: usize, codebook_size: usize, dim: usize, decay: f64, dead_threshold: f64, seed: u64) -> Self {
        let (h, k, d) = (heads as i64, codebook_size as i64, dim as i64);
        let init = l2norm(&(Tensor::rand([h, k, d], (Kind::Float, p.device())) * 2.0 - 1.0));
        let embed_HKD = p.add("embed", init, false);
        let cluster_size_HK = p.add("cluster_size", Tensor::zeros([h, k], (Kind::Float, p.device())), false);
        let updates = p.add("updates", Tensor::zeros([1], (Kind::Int64, p.device())), false);
        Self { embed_HKD, cluster_size_HK, updates, decay, dead_threshold, seed }
    }

    /// Codes per head.
    pub fn size(&self) -> i64 {
        self.embed_HKD.size()[1]
    }

    /// Nearest code (cosine) of each latent: returns the normalised latents `(H, N, D)`, the
    /// unit codes they map to `(H, N, D)` and the ids `(H, N)`.
    pub fn quantize(&self, z_HND: &Tensor) -> (Tensor, Tensor, Tensor) {
        let zn_HND = l2norm(z_HND);
        let ids_HN = tch::no_grad(|| zn_HND.matmul(&self.embed_HKD.transpose(1, 2)).argmax(-1, false));
        (zn_HND, self.lookup(&ids_HN), ids_HN)
    }

    /// The unit codes of ids `(H, N)` → `(H, N, D)`.
    pub fn lookup(&self, ids_HN: &Tensor) -> Tensor {
        let (h, k, d) = (self.embed_HKD.size()[0], self.size(), self.embed_HKD.size()[2]);
        let n = ids_HN.size()[1];
        let offset_H1 = Tensor::arange(h, (Kind::Int64, ids_HN.device())).unsqueeze(1) * k;
        let flat = (ids_HN + offset_H1).reshape([-1]);
        self.embed_HKD.reshape([h * k, d]).index_select(0, &flat).reshape([h, n, d])
    }

    /// One EMA step from a batch's normalised latents and their ids, then dead-code
    /// replacement. Returns how many codes were replaced.
    pub fn update(&mut self, zn_HND: &Tensor, ids_HN: &Tensor) -> usize {
        tch::no_grad(|| {
            let zn_HND = zn_HND.detach().to_kind(Kind::Float);
            let k = self.size();
            let onehot_HNK = ids_HN.one_hot(k).to_kind(Kind::Float);
            let bins_HK = onehot_HNK.sum_dim_intlist(1, false, Kind::Float);
            let _ = self.cluster_size_HK.lerp_(&bins_HK, 1.0 - self.decay);
            let sum_HKD = onehot_HNK.transpose(1, 2).matmul(&zn_HND);
            let mean_HKD = l2norm(&(sum_HKD / bins_HK.clamp_min(1.0).unsqueeze(-1)));
            // Codes with no hit in this batch keep their vector (lucid's `zero_mask`).
            let target_HKD = mean_HKD.where_self(&bins_HK.gt(0.0).unsqueeze(-1), &self.embed_HKD);
            let moved = l2norm(&self.embed_HKD.lerp(&target_HKD, 1.0 - self.decay));
            self.embed_HKD.copy_(&moved);
            let replaced = self.expire(&zn_HND);
            let _ = self.updates.g_add_scalar_(1);
            replaced
        })
    }

    /// Replaces every code with EMA cluster size below the threshold by a random latent of the
    /// batch (lucid's `batch_random` expiry) and resets its cluster size to the threshold, so
    /// a revived code gets a few steps to attract latents before it can expire again.
    fn expire(&mut self, zn_HND: &Tensor) -> usize {
        let (h, n, d) = (zn_HND.size()[0], zn_HND.size()[1], zn_HND.size()[2]);
        let k = self.size();
        let dead = self.cluster_size_HK.lt(self.dead_threshold).reshape([-1]).to_device(tch::Device::Cpu);
        let dead: Vec<bool> = Vec::try_from(&dead).unwrap_or_default();
        let dead_idx: Vec<i64> = dead.iter().enumerate().filter(|(_, d)| **d).map(|(i, _)| i as i64).collect();
        if dead_idx.is_empty() || n == 0 {
            return 0;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed, self.updates.int64_value(&[0]) as usize, 0xDEAD));
        // Per head, distinct latents while the batch has enough of them (lucid: randperm),
        // otherwise with replacement (lucid: randint).
        let mut src = Vec::with_capacity(dead_idx.len());
        for head in 0..h {
            let codes: Vec<&i64> = dead_idx.iter().filter(|&&i| i / k == head).collect();
            let mut pool: Vec<i64> = (0..n).collect();
            for (j, _) in codes.iter().enumerate() {
                let pick = if (codes.len() as i64) <= n {
                    let r = rng.random_range(j..pool.len());
                    pool.swap(j, r);
                    pool[j]
                } else {
                    rng.random_range(0..n)
                };
                src.push(head * n + pick);
            }
        }
        let device = zn_HND.device();
        let dead_t = Tensor::from_slice(&dead_idx).to_device(device);
        let src_t = Tensor::from_slice(&src).to_device(device);
        let fresh = zn_HND.reshape([h * n, d]).index_select(0, &src_t);
        let _ = self.embed_HKD.view([h * k, d]).index_copy_(0, &dead_t, &fresh);
        let _ = self.cluster_size_HK.view([h * k]).index_fill_(0, &dead_t, self.dead_threshold);
        dead_idx.len()
    }

    /// The EMA cluster sizes `(H, K)`.
    pub fn cluster_size(&self) -> &Tensor {
        &self.cluster_size_HK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn book(k: usize, threshold: f64) -> (nn::VarStore, EmaCosineCodebook) {
        let _guard = crate::weights::RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cb = EmaCosineCodebook::new(&vs.root(), 1, k, 4, 0.9, threshold, 7);
        (vs, cb)
    }

    #[test]
    fn tokenizer_ema_codes_are_unit_and_nearest_by_cosine() {
        let (_vs, cb) = book(16, 0.0);
        let z = super::super::seeded_randn(5, &[1, 50, 4]) * 5.0;
        let (zn, q, ids) = cb.quantize(&z);
        let norms = q.square().sum_dim_intlist(-1, false, Kind::Float).sqrt();
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        // The chosen code has the largest cosine among all codes, checked by brute force.
        let sims = zn.matmul(&cb.embed_HKD.transpose(1, 2));
        let best = sims.max_dim(-1, false).0;
        let chosen = (&zn * &q).sum_dim_intlist(-1, false, Kind::Float);
        assert!((best - chosen).abs().max().double_value(&[]) < 1e-5);
        assert_eq!(ids.size(), [1, 50]);
    }

    /// A batch of two tight clusters hits at most two codes, whatever the initial codes; every
    /// other code is dead after one update and must be replaced by one of the batch latents,
    /// after which codes that matched nothing before win assignments (the latent a code was
    /// copied from has cosine 1 with it).
    #[test]
    fn tokenizer_dead_codes_are_revived_from_batch_latents() {
        let (_vs, mut cb) = book(8, 0.5);
        let base = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).reshape([2, 4]);
        // Noise far below any Voronoi margin of random codes, from a private RNG.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let noise: Vec<f32> = (0..256).map(|_| rng.random_range(-1e-3f32..1e-3)).collect();
        let z = base.repeat([32, 1]).reshape([1, 64, 4]) + Tensor::from_slice(&noise).reshape([1, 64, 4]);
        let (zn, _, ids) = cb.quantize(&z);
        let used_before: std::collections::BTreeSet<i64> = Vec::<i64>::try_from(ids.reshape([-1])).unwrap().into_iter().collect();
        assert!(used_before.len() <= 2, "two tight clusters use at most two codes: {used_before:?}");
        let replaced = cb.update(&zn, &ids);
        assert_eq!(replaced, 8 - used_before.len(), "every unused code was dead and must be replaced");
        // Revived codes now sit exactly on batch latents (the used ones moved by EMA only).
        let sims = Vec::<f32>::try_from(cb.embed_HKD.matmul(&zn.transpose(1, 2)).max_dim(-1, false).0.reshape([-1])).unwrap();
        for (code, sim) in sims.iter().enumerate() {
            if !used_before.contains(&(code as i64)) {
                assert!(*sim > 0.999, "revived code {code} equals a batch latent: cosine {sim}");
            }
        }
        let (_, _, ids2) = cb.quantize(&z);
        let used_after: std::collections::BTreeSet<i64> = Vec::<i64>::try_from(ids2.reshape([-1])).unwrap().into_iter().collect();
        assert!(used_after.len() > used_before.len(), "revived codes take assignments: {used_before:?} -> {used_after:?}");
        let cs = Vec::<f32>::try_from(cb.cluster_size().reshape([-1])).unwrap();
        assert!(cs.iter().all(|&c| c >= 0.5 - 1e-6), "revived codes restart at the threshold: {cs:?}");
    }

    #[test]
    fn tokenizer_ema_moves_codes_towards_assigned_means() {
        let (_vs, mut cb) = book(4, 0.0);
        let z = super::super::seeded_randn(6, &[1, 32, 4]);
        let (zn, _, ids) = cb.quantize(&z);
        let before = cb.embed_HKD.copy();
        let loss = |e: &Tensor| {
            let q = e.reshape([4, 4]).index_select(0, &ids.reshape([-1]));
            let mean_cos: Tensor = (&q * zn.reshape([32, 4])).sum(Kind::Float) / 32.0;
            1.0 - mean_cos.double_value(&[])
        };
        for _ in 0..20 {
            cb.update(&zn, &ids);
        }
        assert!(loss(&cb.embed_HKD) < loss(&before), "EMA raises the cosine of codes with their latents");
    }
}
