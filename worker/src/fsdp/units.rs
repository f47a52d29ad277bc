//! The flat-parameter layout of FSDP: which parameters form a unit, where each lies in the
//! unit's flat vector, and which part of that vector this rank owns.

use std::collections::BTreeMap;
use std::ops::Range;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tessera_model::is_no_decay;
use tessera_ops::shard_range;

/// One parameter inside a unit.
#[derive(Debug)]
pub struct UnitParam {
    /// ml-4m state-dict name.
    pub name: String,
    /// The model's variable (shared storage).
    pub tensor: Tensor,
    /// Offset in the unit's flat vector.
    pub offset: usize,
    /// Number of elements.
    pub numel: usize,
    /// Shape (the variable itself is emptied between uses).
    pub shape: Vec<i64>,
    /// Whether AdamW's weight decay applies (ml-4m's name rule).
    pub decay: bool,
}

/// A group of parameters gathered and reduced together.
#[derive(Debug)]
pub struct Unit {
    /// `encoder.3`, `decoder.0` or `rest`.
    pub name: String,
    /// Its parameters in name order.
    pub params: Vec<UnitParam>,
    /// Total elements.
    pub numel: usize,
    /// This rank's slice of the flat vector.
    pub shard: Range<usize>,
}

impl Unit {
    /// The parts of flat range `range` inside this unit's parameters: (parameter index, range
    /// inside that parameter's flattened elements), in order.
    pub fn flat_segments(&self, range: Range<usize>) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let (lo, hi) = (p.offset.max(range.start), (p.offset + p.numel).min(range.end));
            if lo < hi {
                out.push((i, lo - p.offset..hi - p.offset));
            }
        }
        out
    }

    /// Sets `used[i]` to 1 for each parameter `i` that has a gradient now.
    pub fn mark_used(&self, used: &mut [i64]) {
        for (flag, p) in used.iter_mut().zip(&self.params) {
            if p.tensor.grad().defined() {
                *flag = 1;
            }
        }
    }

    /// Writes `src` over flat elements `range` of the unit's (allocated) parameters.
    pub fn write_flat(&self, range: Range<usize>, src: &[f32]) {
        let mut at = 0;
        for (i, r) in self.flat_segments(range) {
            let n = r.len();
            let dst = self.params[i].tensor.view([-1]).narrow(0, r.start as i64, n as i64);
            tch::no_grad(|| dst.shallow_clone().copy_(&Tensor::from_slice(&src[at..at + n])));
            at += n;
        }
    }

    /// Appends the gradients of flat elements `range` (zeros where a parameter has none) to `out`.
    pub fn append_flat_grads(&self, range: Range<usize>, out: &mut Vec<f32>) {
        for (i, r) in self.flat_segments(range) {
            let g = self.params[i].tensor.grad();
            if g.defined() {
                super::tensors::append_f32(&g.reshape([-1]).narrow(0, r.start as i64, r.len() as i64), out);
            } else {
                out.resize(out.len() + r.len(), 0.0);
            }
        }
    }

    /// The parts of this rank's shard: (range inside the shard, parameter index).
    pub fn shard_segments(&self) -> Vec<(Range<usize>, usize)> {
        let start = self.shard.start;
        self.flat_segments(self.shard.clone())
            .into_iter()
            .map(|(i, r)| {
                let at = self.params[i].offset;
                (at + r.start - start..at + r.end - start, i)
            })
            .collect()
    }
}

/// The unit a parameter belongs to: its transformer block, else `rest`.
fn unit_name(name: &str) -> String {
    for stack in ["encoder.", "decoder."] {
        if let Some(rest) = name.strip_prefix(stack)
            && let Some((i, _)) = rest.split_once('.')
            && i.parse::<usize>().is_ok()
        {
            return format!("{stack}{i}");
        }
    }
    "rest".to_string()
}

/// The units of every trainable variable of `vs`, sharded for `rank` of `world`: blocks in
/// stack order, then `rest`. Buffers (no gradient) are not sharded: every rank has them.
pub fn units_of(vs: &VarStore, world: usize, rank: usize) -> Vec<Unit> {
    units_with_shapes(vs, world, rank, &BTreeMap::new())
}

/// [`units_of`] where the variables named in `freed` were already emptied ([`free_param`]):
/// their shapes are taken from there.
pub fn units_with_shapes(vs: &VarStore, world: usize, rank: usize, freed: &BTreeMap<String, Vec<i64>>) -> Vec<Unit> {
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().filter(|n| vars[*n].requires_grad()).collect();
    names.sort();
    let mut units: Vec<Unit> = Vec::new();
    for name in names {
        let u = unit_name(name);
        let idx = match units.iter().position(|x| x.name == u) {
            Some(i) => i,
            None => {
                units.push(Unit { name: u, params: Vec::new(), numel: 0, shard: 0..0 });
                units.len() - 1
            }
        };
        let unit = &mut units[idx];
        let t = vars[name].shallow_clone();
        let shape = freed.get(name.as_str()).cloned().unwrap_or_else(|| t.size());
        let numel = shape.iter().product::<i64>() as usize;
        unit.params.push(UnitParam { name: name.clone(), tensor: t, offset: unit.numel, numel, shape, decay: !is_no_decay(name) });
        unit.numel += numel;
    }
    let key = |u: &Unit| -> (u8, usize) {
        match u.name.split_once('.') {
            Some(("encoder", i)) => (0, i.parse().unwrap_or(0)),
            Some(("decoder", i)) => (1, i.parse().unwrap_or(0)),
            _ => (2, 0),
        }
    };
    units.sort_by_key(key);
    for u in &mut units {
        u.shard = shard_range(u.numel, world, rank);
    }
    units
}

/// The trainable variables of transformer block `block` (`encoder.3`) in `vs`, in name order:
/// its unit's parameters in the unit's flat order.
pub fn block_params(vs: &VarStore, block: &str) -> Vec<(String, Tensor)> {
    let prefix = format!("{block}.");
    let mut out: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(n, t)| n.starts_with(&prefix) && t.requires_grad()).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Elements `range` of the flat fp32 vector that `params` (flattened, in order) make up, as a
/// new tensor on `device`: a rank's master shard, copied without concatenating the whole unit.
pub fn flat_slice<'a>(params: impl IntoIterator<Item = &'a Tensor>, range: Range<usize>, device: Device) -> Tensor {
    let mut parts = Vec::new();
    let mut offset = 0;
    for t in params {
        let n = t.numel();
        let (lo, hi) = (range.start.max(offset), range.end.min(offset + n));
        if lo < hi {
            parts.push(t.detach().to_kind(Kind::Float).view([-1]).narrow(0, (lo - offset) as i64, (hi - lo) as i64));
        }
        offset += n;
    }
    // `cat` copies, even a single part: the shard never shares the parameter's storage.
    if parts.is_empty() { Tensor::empty([0], (Kind::Float, device)) } else { Tensor::cat(&parts, 0) }
}

/// Empties a parameter's storage (it keeps its identity, autograd flag and optimizer
/// registration): how a unit is freed between uses.
pub fn free_param(t: &Tensor, device: Device) {
    let mut var = t.shallow_clone();
    var.set_data(&Tensor::empty([0], (Kind::Float, device)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert_eq!(unit_name("encoder.3.attn.qkv.weight"), "encoder.3");
        assert_eq!(unit_name("decoder.11.mlp.fc1.weight"), "decoder.11");
        assert_eq!(unit_name("encoder_embeddings.caption.token_emb.weight"), "rest");
        assert_eq!(unit_name("encoder_norm.weight"), "rest");
    }
}
