//! The peak FLOP/s that MFU is measured against, per rank: `--peak-tflops` when given; on CUDA
//! the dense peak of a known GPU from its datasheet (bf16 tensor cores for bf16 jobs, plain
//! fp32 otherwise, which is what PyTorch's default matmul precision runs); on CPU a measured f32
//! matmul peak with the threads one rank uses.

use std::time::Instant;

use tessera_protocol::ResolvedJob;
use tessera_protocol::job::DeviceKind;

/// Dense peak TFLOP/s of known GPUs as (name fragment, bf16, fp32), most specific first: the
/// first fragment that the device name contains wins.
const GPUS: [(&str, f64, f64); 8] = [
    ("H200", 989.4, 66.9),
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
    ("A10", 125.0, 31.2),
    ("V100", 125.0, 15.7),
];

/// The peak FLOP/s of one rank of `job`, whose ranks run `threads` libtorch threads each on
/// CPU; `None` for a GPU that the table does not know (the caller says so).
pub fn per_rank(job: &ResolvedJob, given_tflops: Option<f64>, threads: usize) -> Option<f64> {
    if let Some(t) = given_tflops {
        return Some(t * 1e12);
    }
    match job.train.device {
        DeviceKind::Cuda => gpu_name().and_then(|name| known_gpu(&name, job.train.bf16)).map(|t| t * 1e12),
        DeviceKind::Cpu => Some(measured_cpu_matmul(threads)),
    }
}

/// The table's dense peak (TFLOP/s) for a device called `name`.
fn known_gpu(name: &str, bf16: bool) -> Option<f64> {
    GPUS.iter().find(|(fragment, _, _)| name.contains(fragment)).map(|&(_, b, f)| if bf16 { b } else { f })
}

/// The first GPU's name as `nvidia-smi` reports it.
fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader", "-i", "0"]).output().ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// FLOP/s of the best of a few 1024×1024 f32 matmuls on `threads` libtorch threads (about
/// 0.2 s on one core): what one CPU rank could reach on the model's largest kernels.
fn measured_cpu_matmul(threads: usize) -> f64 {
    const N: i64 = 1024;
    let before = tch::get_num_threads();
    tch::set_num_threads(threads.max(1) as i32);
    // Operands from a formula, not `randn`: drawing from libtorch's global generator would
    // change every later random draw of the process (the demo trains tokenizers and scores
    // in-process after starting the job). Values in [-1, 1) keep the kernels off denormals.
    let a = (tch::Tensor::arange(N * N, (tch::Kind::Float, tch::Device::Cpu)).reshape([N, N]) * 0.618_034).frac() * 2.0 - 1.0;
    let b = a.transpose(0, 1).contiguous();
    let _warm = a.mm(&b);
    let best = (0..4)
        .map(|_| {
            let t = Instant::now();
            let c = a.mm(&b);
            let s = t.elapsed().as_secs_f64();
            drop(c);
            s
        })
        .fold(f64::INFINITY, f64::min);
    tch::set_num_threads(before);
    2.0 * (N as f64).powi(3) / best.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_gpus_match_the_most_specific_name() {
        assert_eq!(known_gpu("NVIDIA H100 80GB HBM3", true), Some(989.4));
        assert_eq!(known_gpu("NVIDIA H100 PCIe", true), Some(756.0));
        assert_eq!(known_gpu("NVIDIA H200", false), Some(66.9));
        assert_eq!(known_gpu("NVIDIA A100-SXM4-80GB", true), Some(312.0));
        assert_eq!(known_gpu("NVIDIA L40S", true), Some(362.1));
        assert_eq!(known_gpu("NVIDIA L4", true), Some(121.0));
        assert_eq!(known_gpu("Some Future GPU", true), None);
    }

    #[test]
    fn the_measured_cpu_peak_is_a_plausible_rate() {
        // Between 100 MFLOP/s (a very slow, shared core) and 100 TFLOP/s (no CPU does that).
        let p = measured_cpu_matmul(1);
        assert!((1e8..1e14).contains(&p), "{p}");
    }
}
