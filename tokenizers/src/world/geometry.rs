//! Vectors and exact ray intersections with the world's analytic shapes (sphere, box rotated
//! about the vertical axis, capped cylinder, cone), each returning the hit distance along the
//! ray and the outward unit normal, so depth and normals are computed, not estimated.

use std::ops::{Add, Mul, Sub};

/// A 3-vector (world units; y is up).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Vec3 {
    /// x (right).
    pub x: f64,
    /// y (up).
    pub y: f64,
    /// z (away from the default camera).
    pub z: f64,
}

impl Vec3 {
    /// The vector (x, y, z).
    pub const fn new(x: f64, y: f64, z: f64) -> Self {
        Self { x, y, z }
    }

    /// Dot product.
    pub fn dot(self, o: Self) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }

    /// Cross product.
    pub fn cross(self, o: Self) -> Self {
        Self::new(self.y * o.z - self.z * o.y, self.z * o.x - self.x * o.z, self.x * o.y - self.y * o.x)
    }

    /// Euclidean length.
    pub fn length(self) -> f64 {
        self.dot(self).sqrt()
    }

    /// The unit vector in this direction (the zero vector stays zero).
    pub fn normalized(self) -> Self {
        let l = self.length();
        if l > 0.0 { self * (1.0 / l) } else { self }
    }
}

impl Add for Vec3 {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self::new(self.x + o.x, self.y + o.y, self.z + o.z)
    }
}

impl Sub for Vec3 {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self::new(self.x - o.x, self.y - o.y, self.z - o.z)
    }
}

impl Mul<f64> for Vec3 {
    type Output = Self;
    fn mul(self, s: f64) -> Self {
        Self::new(self.x * s, self.y * s, self.z * s)
    }
}

/// A ray `origin + t * dir` with a unit `dir`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ray {
    /// Start point.
    pub origin: Vec3,
    /// Unit direction.
    pub dir: Vec3,
}

/// The nearest intersection of a ray with a surface.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Distance along the ray.
    pub t: f64,
    /// Outward unit normal at the hit point.
    pub normal: Vec3,
}

/// Hits closer than this are ignored, so shadow rays do not hit their own surface.
pub const EPS: f64 = 1e-7;

fn nearer(a: Option<Hit>, b: Option<Hit>) -> Option<Hit> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.t < x.t { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The ray's nearest hit with the sphere of `centre` and `radius`.
pub fn hit_sphere(ray: &Ray, centre: Vec3, radius: f64) -> Option<Hit> {
    let oc = ray.origin - centre;
    let b = oc.dot(ray.dir);
    let c = oc.dot(oc) - radius * radius;
    let disc = b * b - c;
    if disc < 0.0 {
        return None;
    }
    let s = disc.sqrt();
    let t = if -b - s > EPS { -b - s } else { -b + s };
    (t > EPS).then(|| Hit { t, normal: ((ray.origin + ray.dir * t - centre) * (1.0 / radius)).normalized() })
}

/// The ray's nearest hit with the box of half-extents `half` centred at `centre`, rotated about
/// the vertical axis by the angle whose `(sin, cos)` is `rot` (slab method in the box's frame).
pub fn hit_box(ray: &Ray, centre: Vec3, half: Vec3, rot: (f64, f64)) -> Option<Hit> {
    let (s, c) = rot;
    // World → box frame is a rotation by -yaw about y; box → world rotates by +yaw.
    let to_local = |v: Vec3| Vec3::new(c * v.x + s * v.z, v.y, -s * v.x + c * v.z);
    let to_world = |v: Vec3| Vec3::new(c * v.x - s * v.z, v.y, s * v.x + c * v.z);
    let o = to_local(ray.origin - centre);
    let d = to_local(ray.dir);
    let (mut t_near, mut t_far) = (f64::NEG_INFINITY, f64::INFINITY);
    let (mut n_near, mut n_far) = (Vec3::default(), Vec3::default());
    for axis in 0..3 {
        let (oa, da, ha) = match axis {
            0 => (o.x, d.x, half.x),
            1 => (o.y, d.y, half.y),
            _ => (o.z, d.z, half.z),
        };
        let unit = |sign: f64| match axis {
            0 => Vec3::new(sign, 0.0, 0.0),
            1 => Vec3::new(0.0, sign, 0.0),
            _ => Vec3::new(0.0, 0.0, sign),
        };
        if da.abs() < 1e-12 {
            if oa.abs() > ha {
                return None;
            }
            continue;
        }
        let (t0, t1) = ((-ha - oa) / da, (ha - oa) / da);
        // The slab face hit first is the one facing the ray.
        let (ta, tb, na, nb) = if t0 < t1 { (t0, t1, unit(-1.0), unit(1.0)) } else { (t1, t0, unit(1.0), unit(-1.0)) };
        if ta > t_near {
            t_near = ta;
            n_near = na;
        }
        if tb < t_far {
            t_far = tb;
            n_far = nb;
        }
        if t_near > t_far {
            return None;
        }
    }
    if t_near > EPS {
        Some(Hit { t: t_near, normal: to_world(n_near) })
    } else if t_far > EPS {
        Some(Hit { t: t_far, normal: to_world(n_far) })
    } else {
        None
    }
}

/// The ray's nearest hit with the vertical cylinder standing on `base` (its bottom centre)
/// with `radius` and `height`: side wall and top cap (the bottom rests on the ground).
pub fn hit_cylinder(ray: &Ray, base: Vec3, radius: f64, height: f64) -> Option<Hit> {
    let o = ray.origin - base;
    let d = ray.dir;
    let a = d.x * d.x + d.z * d.z;
    let mut best = None;
    if a > 1e-12 {
        let b = o.x * d.x + o.z * d.z;
        let c = o.x * o.x + o.z * o.z - radius * radius;
        let disc = b * b - a * c;
        if disc >= 0.0 {
            let s = disc.sqrt();
            for t in [(-b - s) / a, (-b + s) / a] {
                let y = o.y + t * d.y;
                if t > EPS && (0.0..=height).contains(&y) {
                    let p = o + d * t;
                    best = nearer(best, Some(Hit { t, normal: Vec3::new(p.x, 0.0, p.z).normalized() }));
                    break;
                }
            }
        }
    }
    nearer(best, hit_disc(ray, base + Vec3::new(0.0, height, 0.0), radius))
}

/// The ray's hit with the upward-facing horizontal disc at `centre` of `radius`.
fn hit_disc(ray: &Ray, centre: Vec3, radius: f64) -> Option<Hit> {
    if ray.dir.y.abs() < 1e-12 {
        return None;
    }
    let t = (centre.y - ray.origin.y) / ray.dir.y;
    let p = ray.origin + ray.dir * t - centre;
    (t > EPS && p.x * p.x + p.z * p.z <= radius * radius).then_some(Hit { t, normal: Vec3::new(0.0, 1.0, 0.0) })
}

/// The ray's nearest hit with the upright cone standing on `base` (centre of its base disc)
/// with base `radius` and `height` (apex above the base).
pub fn hit_cone(ray: &Ray, base: Vec3, radius: f64, height: f64) -> Option<Hit> {
    // Surface: sqrt(x² + z²) = k (h - y), 0 <= y <= h, with k = radius / height.
    let k = radius / height;
    let k2 = k * k;
    let o = ray.origin - base;
    let d = ray.dir;
    let oy = height - o.y;
    let a = d.x * d.x + d.z * d.z - k2 * d.y * d.y;
    let b = o.x * d.x + o.z * d.z + k2 * oy * d.y;
    let c = o.x * o.x + o.z * o.z - k2 * oy * oy;
    // Up to two roots, nearest first; NaN marks a missing root (never passes `t > EPS`).
    let roots = if a.abs() < 1e-12 {
        [if b.abs() > 1e-12 { -c / (2.0 * b) } else { f64::NAN }, f64::NAN]
    } else {
        let disc = b * b - a * c;
        if disc < 0.0 {
            return None;
        }
        let s = disc.sqrt();
        let (r0, r1) = ((-b - s) / a, (-b + s) / a);
        if r0 < r1 { [r0, r1] } else { [r1, r0] }
    };
    roots.into_iter().find_map(|t| {
        let p = o + d * t;
        if !(t > EPS && (0.0..=height).contains(&p.y)) {
            return None;
        }
        let r = (p.x * p.x + p.z * p.z).sqrt();
        // The gradient of sqrt(x² + z²) - k (h - y); at the apex (r = 0) point straight up.
        let normal = if r > 1e-12 { Vec3::new(p.x / r, k, p.z / r).normalized() } else { Vec3::new(0.0, 1.0, 0.0) };
        Some(Hit { t, normal })
    })
}

/// Whether the ray can reach the sphere of `centre` and `radius` (a cheap bound test).
pub fn may_hit_sphere(ray: &Ray, centre: Vec3, radius: f64) -> bool {
    let oc = ray.origin - centre;
    let b = oc.dot(ray.dir);
    let c = oc.dot(oc) - radius * radius;
    // Inside the sphere, or in front of it with a real intersection.
    c <= 0.0 || (b < 0.0 && b * b >= c)
}

/// The ray's hit with the ground plane `y = 0` from above.
pub fn hit_ground(ray: &Ray) -> Option<Hit> {
    (ray.dir.y < -1e-12 && ray.origin.y > 0.0).then(|| Hit { t: -ray.origin.y / ray.dir.y, normal: Vec3::new(0.0, 1.0, 0.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ray(o: Vec3, d: Vec3) -> Ray {
        Ray { origin: o, dir: d.normalized() }
    }

    #[test]
    fn sphere_front_hit() {
        let h = hit_sphere(&ray(Vec3::new(0.0, 0.0, -5.0), Vec3::new(0.0, 0.0, 1.0)), Vec3::default(), 1.0).unwrap();
        assert!((h.t - 4.0).abs() < 1e-12);
        assert_eq!(h.normal, Vec3::new(0.0, 0.0, -1.0));
    }

    #[test]
    fn rotated_box_hits_its_face() {
        let h = hit_box(
            &ray(Vec3::new(0.0, 0.5, -5.0), Vec3::new(0.0, 0.0, 1.0)),
            Vec3::new(0.0, 0.5, 0.0),
            Vec3::new(1.0, 0.5, 1.0),
            (0.0, 1.0),
        )
        .unwrap();
        assert!((h.t - 4.0).abs() < 1e-12);
        assert_eq!(h.normal, Vec3::new(0.0, 0.0, -1.0));
        // Rotated 45°: the corner faces the ray at distance sqrt(2).
        let yaw = std::f64::consts::FRAC_PI_4;
        let h = hit_box(
            &ray(Vec3::new(0.0, 0.5, -5.0), Vec3::new(0.0, 0.0, 1.0)),
            Vec3::new(0.0, 0.5, 0.0),
            Vec3::new(1.0, 0.5, 1.0),
            yaw.sin_cos(),
        )
        .unwrap();
        assert!((h.t - (5.0 - 2f64.sqrt())).abs() < 1e-9, "{}", h.t);
        assert!((h.normal.length() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cylinder_side_and_cap() {
        let side = hit_cylinder(&ray(Vec3::new(0.0, 0.5, -5.0), Vec3::new(0.0, 0.0, 1.0)), Vec3::default(), 1.0, 1.0).unwrap();
        assert!((side.t - 4.0).abs() < 1e-12);
        let cap = hit_cylinder(&ray(Vec3::new(0.2, 5.0, 0.0), Vec3::new(0.0, -1.0, 0.0)), Vec3::default(), 1.0, 1.0).unwrap();
        assert!((cap.t - 4.0).abs() < 1e-12);
        assert_eq!(cap.normal, Vec3::new(0.0, 1.0, 0.0));
        assert!(hit_cylinder(&ray(Vec3::new(0.0, 1.5, -5.0), Vec3::new(0.0, 0.0, 1.0)), Vec3::default(), 1.0, 1.0).is_none());
    }

    #[test]
    fn cone_narrows_with_height() {
        // At y = 0.5 of a cone with radius 1 and height 1 the radius is 0.5.
        let h = hit_cone(&ray(Vec3::new(0.0, 0.5, -5.0), Vec3::new(0.0, 0.0, 1.0)), Vec3::default(), 1.0, 1.0).unwrap();
        assert!((h.t - 4.5).abs() < 1e-9, "{}", h.t);
        let n = h.normal;
        assert!((n.length() - 1.0).abs() < 1e-12 && n.z < 0.0 && n.y > 0.0);
        assert!(hit_cone(&ray(Vec3::new(0.6, 0.5, -5.0), Vec3::new(0.0, 0.0, 1.0)), Vec3::default(), 1.0, 1.0).is_none());
        assert!(hit_cone(&ray(Vec3::new(0.0, 1.2, -5.0), Vec3::new(0.0, 0.0, 1.0)), Vec3::default(), 1.0, 1.0).is_none());
    }
}
