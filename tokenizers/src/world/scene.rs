//! Scene sampling: a ground plane under a sky gradient, a directional light and 2–6 objects of
//! four shape classes, each with a named colour, a named size, a position on the ground and a
//! yaw. Everything is drawn from one seeded RNG, so a (seed, index) pair fixes the scene.

use rand::Rng;
use serde::Serialize;

use super::geometry::{Hit, Ray, Vec3, hit_box, hit_cone, hit_cylinder, hit_sphere, may_hit_sphere};

/// The object shape classes; the semantic id is the position + 1 (0 is background).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeClass {
    /// A ball resting on the ground.
    Sphere,
    /// A cube turned about the vertical axis.
    Cube,
    /// An upright capped cylinder.
    Cylinder,
    /// An upright cone.
    Cone,
}

impl ShapeClass {
    /// Every class, in semantic-id order.
    pub const ALL: [ShapeClass; 4] = [Self::Sphere, Self::Cube, Self::Cylinder, Self::Cone];

    /// The class name used in captions and detections (a word of ml-4m's WordPiece vocabulary).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sphere => "sphere",
            Self::Cube => "cube",
            Self::Cylinder => "cylinder",
            Self::Cone => "cone",
        }
    }

    /// The semantic segmentation id (1..=4; 0 is background).
    pub fn semantic_id(self) -> u8 {
        self as u8 + 1
    }

    /// The class with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The named object colours and their albedos (linear, 0..1).
pub const COLOURS: [(&str, [f64; 3]); 8] = [
    ("red", [0.86, 0.12, 0.10]),
    ("green", [0.15, 0.70, 0.20]),
    ("blue", [0.12, 0.25, 0.88]),
    ("yellow", [0.92, 0.85, 0.12]),
    ("purple", [0.55, 0.18, 0.75]),
    ("orange", [0.95, 0.50, 0.08]),
    ("white", [0.92, 0.92, 0.90]),
    ("gray", [0.45, 0.45, 0.47]),
];

/// The named object sizes and their half-extent ranges (world units).
pub const SIZES: [(&str, f64, f64); 2] = [("small", 0.28, 0.38), ("large", 0.55, 0.72)];

/// Objects per scene (before placement can drop one that does not fit).
pub const OBJECTS_PER_SCENE: std::ops::RangeInclusive<usize> = 2..=6;

/// One object standing on the ground.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    /// The shape class.
    pub class: ShapeClass,
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`SIZES`].
    pub size: usize,
    /// Half-extent: sphere/cylinder/cone radius, half the cube's side; height is twice this.
    pub half: f64,
    /// Centre of the footprint on the ground (y = 0).
    pub base: Vec3,
    /// Rotation about the vertical axis (cubes only; radians).
    pub yaw: f64,
    /// `yaw.sin_cos()`, cached: the box test runs for every pixel.
    rot: (f64, f64),
}

impl Object {
    /// The colour name.
    pub fn colour_name(&self) -> &'static str {
        COLOURS[self.colour].0
    }

    /// The size name.
    pub fn size_name(&self) -> &'static str {
        SIZES[self.size].0
    }

    /// The albedo.
    pub fn albedo(&self) -> [f64; 3] {
        COLOURS[self.colour].1
    }

    /// The radius of a vertical cylinder that contains the object (for placement).
    pub fn footprint(&self) -> f64 {
        match self.class {
            ShapeClass::Cube => self.half * std::f64::consts::SQRT_2,
            _ => self.half,
        }
    }

    /// An object; `half` is the half-extent, `base` the footprint centre, `yaw` the rotation.
    pub fn new(class: ShapeClass, colour: usize, size: usize, half: f64, base: Vec3, yaw: f64) -> Self {
        Self { class, colour, size, half, base, yaw, rot: yaw.sin_cos() }
    }

    /// Radius of a sphere about [`Self::centre`] that contains the object.
    pub fn bounding_radius(&self) -> f64 {
        self.half
            * match self.class {
                ShapeClass::Sphere => 1.0,
                ShapeClass::Cube => 3f64.sqrt(),
                ShapeClass::Cylinder | ShapeClass::Cone => std::f64::consts::SQRT_2,
            }
    }

    /// The ray's nearest hit with this object.
    pub fn hit(&self, ray: &Ray) -> Option<Hit> {
        let h = self.half;
        // Most rays miss most objects: reject them with the bounding sphere first.
        if !may_hit_sphere(ray, self.centre(), self.bounding_radius() * (1.0 + 1e-9)) {
            return None;
        }
        match self.class {
            ShapeClass::Sphere => hit_sphere(ray, self.base + Vec3::new(0.0, h, 0.0), h),
            ShapeClass::Cube => hit_box(ray, self.base + Vec3::new(0.0, h, 0.0), Vec3::new(h, h, h), self.rot),
            ShapeClass::Cylinder => hit_cylinder(ray, self.base, h, 2.0 * h),
            ShapeClass::Cone => hit_cone(ray, self.base, h, 2.0 * h),
        }
    }

    /// The centre of the object's volume (for spatial relations).
    pub fn centre(&self) -> Vec3 {
        self.base + Vec3::new(0.0, self.half, 0.0)
    }
}

/// The pinhole camera shared by all scenes: above the ground, looking slightly down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Camera {
    /// Eye position.
    pub eye: Vec3,
    /// Unit forward axis (depth is measured along it).
    pub forward: Vec3,
    /// Unit right axis.
    pub right: Vec3,
    /// Unit up axis.
    pub up: Vec3,
    /// `tan(fov / 2)`.
    pub tan_half_fov: f64,
}

impl Camera {
    /// The world's camera: eye at (0, 2.2, -6), looking at (0, 0.4, 1), 50° field of view.
    pub fn standard() -> Self {
        let eye = Vec3::new(0.0, 2.2, -6.0);
        let forward = (Vec3::new(0.0, 0.4, 1.0) - eye).normalized();
        let right = Vec3::new(0.0, 1.0, 0.0).cross(forward).normalized();
        let up = forward.cross(right);
        Self { eye, forward, right, up, tan_half_fov: (25f64).to_radians().tan() }
    }

    /// The ray through the centre of pixel (`x`, `y`) of a `side` × `side` image.
    pub fn ray(&self, x: usize, y: usize, side: usize) -> Ray {
        let s = side as f64;
        let sx = ((x as f64 + 0.5) / s * 2.0 - 1.0) * self.tan_half_fov;
        let sy = (1.0 - (y as f64 + 0.5) / s * 2.0) * self.tan_half_fov;
        Ray { origin: self.eye, dir: (self.forward + self.right * sx + self.up * sy).normalized() }
    }

    /// A world direction expressed in camera axes (x right, y up, z towards the camera).
    pub fn to_camera(&self, v: Vec3) -> Vec3 {
        Vec3::new(v.dot(self.right), v.dot(self.up), -v.dot(self.forward))
    }

    /// A pixel rectangle `[x0, y0, x1, y1)` of a `side` × `side` image outside which no ray
    /// meets the sphere of `centre` and `radius` (the sphere's exact projected extent, plus a
    /// pixel of margin; the whole image when the eye is too close).
    pub fn pixel_bounds(&self, centre: Vec3, radius: f64, side: usize) -> [usize; 4] {
        let c = centre - self.eye;
        let (cx, cy, cz) = (c.dot(self.right), c.dot(self.up), c.dot(self.forward));
        let d = cz * cz - radius * radius;
        if cz <= radius || d <= 1e-9 {
            return [0, 0, side, side];
        }
        // Tangent planes through the eye: s = X / Z with (cx - s cz)² = r² (1 + s²).
        let extent = |a: f64| {
            let root = (a * a + d).sqrt() * radius;
            ((a * cz - root) / d, (a * cz + root) / d)
        };
        let (sx0, sx1) = extent(cx);
        let (sy0, sy1) = extent(cy);
        let s = side as f64;
        let to_px = |t: f64| (t / self.tan_half_fov + 1.0) * 0.5 * s - 0.5;
        let clamp = |v: f64| v.clamp(0.0, s) as usize;
        [
            clamp(to_px(sx0).floor() - 1.0),
            clamp(s - 1.0 - to_px(sy1).ceil() - 1.0),
            clamp(to_px(sx1).ceil() + 2.0),
            clamp(s - 1.0 - to_px(sy0).floor() + 2.0),
        ]
    }

    /// Depth (distance along the forward axis) of a world point.
    pub fn depth_of(&self, p: Vec3) -> f64 {
        (p - self.eye).dot(self.forward)
    }
}

/// Lighting and background of a scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Environment {
    /// Unit direction towards the light.
    pub light_dir: Vec3,
    /// Direct light intensity.
    pub light: f64,
    /// Ambient light intensity.
    pub ambient: f64,
    /// Ground albedo.
    pub ground: [f64; 3],
    /// Sky colour at the horizon.
    pub sky_low: [f64; 3],
    /// Sky colour at the top of the image.
    pub sky_high: [f64; 3],
}

/// A sampled scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The objects; object `i` has instance id `i + 1`.
    pub objects: Vec<Object>,
    /// Light and background.
    pub env: Environment,
    /// The camera.
    pub camera: Camera,
}

impl Scene {
    /// Draws a scene: objects are placed by rejection so that no two intersect in 3-D (their
    /// images may still overlap, which is where occlusion comes from).
    pub fn sample(rng: &mut impl Rng) -> Self {
        let n = rng.random_range(OBJECTS_PER_SCENE);
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        for _ in 0..n {
            let class = ShapeClass::ALL[rng.random_range(0..ShapeClass::ALL.len())];
            let colour = rng.random_range(0..COLOURS.len());
            let size = rng.random_range(0..SIZES.len());
            let half = rng.random_range(SIZES[size].1..SIZES[size].2);
            let yaw = if class == ShapeClass::Cube { rng.random_range(0.0..std::f64::consts::FRAC_PI_2) } else { 0.0 };
            // Bounded retries keep generation time bounded; an object that does not fit is dropped.
            for _ in 0..40 {
                let base = Vec3::new(rng.random_range(-2.4..2.4), 0.0, rng.random_range(-1.8..3.2));
                let o = Object::new(class, colour, size, half, base, yaw);
                if objects.iter().all(|p| (p.base - base).length() > p.footprint() + o.footprint() + 0.05) {
                    objects.push(o);
                    break;
                }
            }
        }
        let elevation = rng.random_range(30f64..70.0).to_radians();
        let azimuth = rng.random_range(0.0..std::f64::consts::TAU);
        let light_dir = Vec3::new(elevation.cos() * azimuth.cos(), elevation.sin(), elevation.cos() * azimuth.sin());
        let g = rng.random_range(0.35..0.75);
        let tint: [f64; 3] = [rng.random_range(0.85..1.0), rng.random_range(0.85..1.0), rng.random_range(0.85..1.0)];
        let env = Environment {
            light_dir,
            light: rng.random_range(0.65..0.95),
            ambient: rng.random_range(0.15..0.35),
            ground: tint.map(|t| g * t),
            sky_low: [rng.random_range(0.7..0.9), rng.random_range(0.75..0.92), rng.random_range(0.85..1.0)],
            sky_high: [rng.random_range(0.2..0.45), rng.random_range(0.35..0.6), rng.random_range(0.7..0.95)],
        };
        Self { objects, env, camera: Camera::standard() }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn pixel_bounds_hold_every_ray_that_meets_the_bounding_sphere() {
        let side = 64;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (mut inside, mut boxed) = (0usize, 0usize);
        for _ in 0..20 {
            let scene = Scene::sample(&mut rng);
            for o in &scene.objects {
                let b = scene.camera.pixel_bounds(o.centre(), o.bounding_radius(), side);
                boxed += (b[2] - b[0]) * (b[3] - b[1]);
                for p in 0..side * side {
                    let (x, y) = (p % side, p / side);
                    if may_hit_sphere(&scene.camera.ray(x, y, side), o.centre(), o.bounding_radius()) {
                        inside += 1;
                        assert!(b[0] <= x && x < b[2] && b[1] <= y && y < b[3], "pixel ({x}, {y}) outside {b:?}");
                    }
                }
            }
        }
        // Tight enough to be worth it: the rectangles are not much larger than the discs.
        assert!(boxed < 2 * inside, "{boxed} boxed pixels for {inside} covered");
    }
}
