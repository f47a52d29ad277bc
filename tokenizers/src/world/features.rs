//! Deterministic feature descriptors standing in for learned image features: a global vector
//! (a fixed random projection of scene statistics, L2-normalised) and a dense map with one
//! vector per [`PATCH`]-pixel patch (a fixed random projection of the patch's class
//! histogram, mean colour, mean normal, mean depth and edge density). The projections are
//! drawn once from a constant seed, so the features of a scene never change between runs.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::annotate::{ImageStats, Visible};
use super::render::{FAR_DEPTH, Frame};
use super::scene::{COLOURS, Scene, ShapeClass};

/// Length of the global feature vector.
pub const GLOBAL_DIM: usize = 64;
/// Channels of the dense feature map.
pub const MAP_DIM: usize = 32;
/// Side of the square patch of one feature-map cell, in pixels.
pub const PATCH: usize = 16;

const CLASSES: usize = ShapeClass::ALL.len() + 1;
const GLOBAL_IN: usize = CLASSES + COLOURS.len() + 3 + 2 + 1 + 1 + 3 + 2;
const PATCH_IN: usize = CLASSES + 3 + 3 + 1 + 1;

/// Row-major `(out, in)` Gaussian matrix scaled by `1/sqrt(in)`.
fn projection(seed: u64, out: usize, inp: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scale = 1.0 / (inp as f64).sqrt();
    (0..out * inp).map(|_| (rng.sample::<f64, _>(StandardNormal) * scale) as f32).collect()
}

fn global_projection() -> &'static [f32] {
    static P: OnceLock<Vec<f32>> = OnceLock::new();
    P.get_or_init(|| projection(0x5EED_0001, GLOBAL_DIM, GLOBAL_IN))
}

fn patch_projection() -> &'static [f32] {
    static P: OnceLock<Vec<f32>> = OnceLock::new();
    P.get_or_init(|| projection(0x5EED_0002, MAP_DIM, PATCH_IN))
}

fn project(m: &[f32], x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(m.chunks_exact(x.len())) {
        *o = row.iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

/// The global feature vector (`GLOBAL_DIM` values, unit length).
pub fn global_feature(scene: &Scene, frame: &Frame, visible: &[Visible], stats: &ImageStats) -> Vec<f32> {
    let n = frame.instance.len().max(1) as f32;
    let mut x = Vec::with_capacity(GLOBAL_IN);
    let mut class_area = [0f32; CLASSES];
    let mut colour_area = [0f32; COLOURS.len()];
    for v in visible {
        let o = &scene.objects[v.object];
        class_area[usize::from(o.class.semantic_id())] += v.pixels as f32 / n;
        colour_area[o.colour] += v.pixels as f32 / n;
    }
    class_area[0] = 1.0 - class_area[1..].iter().sum::<f32>();
    x.extend(class_area);
    x.extend(colour_area);
    let mut mean = [0f32; 3];
    for px in frame.rgb.chunks_exact(3) {
        (0..3).for_each(|c| mean[c] += f32::from(px[c]) / 255.0 / n);
    }
    x.extend(mean);
    x.extend([(stats.brightness / 255.0) as f32, (stats.contrast / 127.0) as f32]);
    x.push(frame.depth.iter().sum::<f32>() / n / FAR_DEPTH);
    x.push(visible.len() as f32 / 6.0);
    let l = scene.env.light_dir;
    x.extend([l.x as f32, l.y as f32, l.z as f32, scene.env.ambient as f32, scene.env.light as f32]);
    let mut out = vec![0f32; GLOBAL_DIM];
    project(global_projection(), &x, &mut out);
    let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    out.iter_mut().for_each(|v| *v /= norm);
    out
}

/// The dense feature map, `(MAP_DIM, side / PATCH, side / PATCH)` in C order.
pub fn feature_map(frame: &Frame) -> Vec<f32> {
    let side = frame.side;
    let g = side / PATCH;
    let mut out = vec![0f32; MAP_DIM * g * g];
    let area = (PATCH * PATCH) as f32;
    let mut x = [0f32; PATCH_IN];
    let mut cell = [0f32; MAP_DIM];
    for gy in 0..g {
        for gx in 0..g {
            x.fill(0.0);
            for y in gy * PATCH..(gy + 1) * PATCH {
                for xx in gx * PATCH..(gx + 1) * PATCH {
                    let p = y * side + xx;
                    x[usize::from(frame.semseg[p])] += 1.0 / area;
                    (0..3).for_each(|c| x[CLASSES + c] += f32::from(frame.rgb[3 * p + c]) / 255.0 / area);
                    (0..3).for_each(|c| x[CLASSES + 3 + c] += frame.normal[3 * p + c] / area);
                    x[CLASSES + 6] += frame.depth[p] / FAR_DEPTH / area;
                    x[CLASSES + 7] += f32::from(frame.edges[p] > 0) / area;
                }
            }
            project(patch_projection(), &x, &mut cell);
            for (c, v) in cell.iter().enumerate() {
                out[(c * g + gy) * g + gx] = *v;
            }
        }
    }
    out
}
