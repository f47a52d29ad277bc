//! Per-pixel ray casting of a [`Scene`] into exactly aligned maps: the nearest surface along each
//! pixel's ray gives RGB (albedo × Lambert shading with cast shadows, plus ambient), depth,
//! normal, instance and class; edges are the instance map's boundaries. Occlusion is the
//! z-buffer's: every object a ray crosses is counted (its amodal area), the nearest one is seen.

use super::geometry::{Hit, Ray, Vec3, hit_ground};
use super::scene::{Environment, Scene};

/// Depth written for the sky and clamped for far ground (world units along the view axis).
pub const FAR_DEPTH: f32 = 30.0;

/// The rendered, aligned maps of one scene (row-major, `side × side`).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Image side in pixels.
    pub side: usize,
    /// RGB8, interleaved (sRGB-encoded).
    pub rgb: Vec<u8>,
    /// Depth along the camera's forward axis; [`FAR_DEPTH`] for the sky.
    pub depth: Vec<f32>,
    /// Unit surface normals in camera axes (x right, y up, z towards the camera), interleaved.
    pub normal: Vec<f32>,
    /// Instance id per pixel: 0 background, `i + 1` for object `i`.
    pub instance: Vec<u8>,
    /// Semantic class id per pixel: 0 background, else [`super::ShapeClass::semantic_id`].
    pub semseg: Vec<u8>,
    /// 255 where a 4-neighbour has another instance id, else 0.
    pub edges: Vec<u8>,
    /// Whether the pixel shows the sky (no surface along its ray).
    pub sky: Vec<bool>,
    /// Per object: pixels whose ray crosses it, seen or not (amodal area inside the image).
    pub amodal: Vec<usize>,
    /// Per object: pixels where it is the nearest surface (visible area).
    pub visible: Vec<usize>,
}

impl Frame {
    /// Renders `scene` at `side` × `side` pixels.
    pub fn render(scene: &Scene, side: usize) -> Self {
        let n = side * side;
        let mut f = Frame {
            side,
            rgb: vec![0; n * 3],
            depth: vec![FAR_DEPTH; n],
            normal: vec![0.0; n * 3],
            instance: vec![0; n],
            semseg: vec![0; n],
            edges: vec![0; n],
            sky: vec![false; n],
            amodal: vec![0; scene.objects.len()],
            visible: vec![0; scene.objects.len()],
        };
        let cam = &scene.camera;
        // Rays outside an object's projected bounding sphere cannot hit it: skip the test there.
        let bounds: Vec<[usize; 4]> = scene.objects.iter().map(|o| cam.pixel_bounds(o.centre(), o.bounding_radius(), side)).collect();
        for y in 0..side {
            for x in 0..side {
                let p = y * side + x;
                let ray = cam.ray(x, y, side);
                let mut best: Option<(usize, Hit)> = None;
                for (i, (o, b)) in scene.objects.iter().zip(&bounds).enumerate() {
                    if x < b[0] || x >= b[2] || y < b[1] || y >= b[3] {
                        continue;
                    }
                    if let Some(h) = o.hit(&ray) {
                        f.amodal[i] += 1;
                        if best.is_none_or(|(_, b)| h.t < b.t) {
                            best = Some((i, h));
                        }
                    }
                }
                let (albedo, normal, t) = if let Some((i, h)) = best {
                    f.visible[i] += 1;
                    f.instance[p] = (i + 1) as u8;
                    f.semseg[p] = scene.objects[i].class.semantic_id();
                    (scene.objects[i].albedo(), h.normal, h.t)
                } else if let Some(h) = hit_ground(&ray) {
                    let q = ray.origin + ray.dir * h.t;
                    // A faint 1-unit checker gives the ground texture (and the depth a visible gradient).
                    let check = if (q.x.floor() as i64 + q.z.floor() as i64) & 1 == 0 { 1.0 } else { 0.88 };
                    (scene.env.ground.map(|g| g * check), h.normal, h.t)
                } else {
                    let up = 1.0 - (y as f64 + 0.5) / side as f64;
                    let sky = sky_colour(&scene.env, up);
                    write_rgb(&mut f.rgb[p * 3..p * 3 + 3], sky);
                    f.sky[p] = true;
                    f.normal[p * 3..p * 3 + 3].copy_from_slice(&[0.0, 0.0, 1.0]);
                    continue;
                };
                let point = ray.origin + ray.dir * t;
                let shade = shading(scene, point, normal);
                write_rgb(&mut f.rgb[p * 3..p * 3 + 3], albedo.map(|a| a * shade));
                f.depth[p] = ((t * ray.dir.dot(cam.forward)) as f32).min(FAR_DEPTH);
                let n = cam.to_camera(normal);
                f.normal[p * 3..p * 3 + 3].copy_from_slice(&[n.x as f32, n.y as f32, n.z as f32]);
            }
        }
        f.edges = instance_edges(&f.instance, side);
        f
    }

    /// Number of objects with at least one visible pixel.
    pub fn visible_count(&self) -> usize {
        self.visible.iter().filter(|&&v| v > 0).count()
    }
}

fn sky_colour(env: &Environment, up: f64) -> [f64; 3] {
    let s = up.clamp(0.0, 1.0);
    [0, 1, 2].map(|c| env.sky_low[c] * (1.0 - s) + env.sky_high[c] * s)
}

/// Ambient plus Lambert term, the latter zero where another object blocks the light.
fn shading(scene: &Scene, point: Vec3, normal: Vec3) -> f64 {
    let env = &scene.env;
    let lambert = normal.dot(env.light_dir);
    if lambert <= 0.0 {
        return env.ambient;
    }
    let shadow_ray = Ray { origin: point + normal * 1e-6, dir: env.light_dir };
    let blocked = scene.objects.iter().any(|o| o.hit(&shadow_ray).is_some());
    env.ambient + if blocked { 0.0 } else { env.light * lambert }
}

fn write_rgb(out: &mut [u8], linear: [f64; 3]) {
    for (o, v) in out.iter_mut().zip(linear) {
        // A gamma of 2 (close to sRGB's 2.2, and a square root is cheap), so mid-tones look like a photograph's.
        *o = (v.clamp(0.0, 1.0).sqrt() * 255.0 + 0.5) as u8;
    }
}

/// 255 where the right, left, upper or lower neighbour has another instance id.
pub fn instance_edges(instance: &[u8], side: usize) -> Vec<u8> {
    let mut edges = vec![0u8; instance.len()];
    for y in 0..side {
        for x in 0..side {
            let id = instance[y * side + x];
            let differs = (x > 0 && instance[y * side + x - 1] != id)
                || (x + 1 < side && instance[y * side + x + 1] != id)
                || (y > 0 && instance[(y - 1) * side + x] != id)
                || (y + 1 < side && instance[(y + 1) * side + x] != id);
            if differs {
                edges[y * side + x] = 255;
            }
        }
    }
    edges
}
