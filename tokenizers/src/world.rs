//! The built-in multimodal world: procedurally rendered scenes (a lit ground plane under a sky,
//! 2–6 spheres, cubes, cylinders and cones of named colours and sizes) from which every
//! modality is computed exactly by ray casting rather than estimated by a network: RGB, depth,
//! normals, semantic and instance maps, edges, captions, detections, metadata, colour palettes
//! and two deterministic feature descriptors. [`generate`] writes them in ml-4m's shard layout
//! with train/val splits; [`WorldSample::generate`] gives one sample in memory.
//!
//! - [`geometry`]: vectors and exact ray–shape intersections.
//! - [`scene`]: scene sampling ([`Scene`], [`ShapeClass`], [`COLOURS`], [`SIZES`]).
//! - [`render`]: per-pixel ray casting into aligned maps ([`Frame`]).
//! - [`annotate`]: boxes, detection / metadata / palette JSON from the maps.
//! - [`caption`]: the caption grammar, and its parser.
//! - [`features`]: the global vector and dense feature map.
//! - `sample`, `spec`, `write`: one sample's members, the spec, the shard writer.

pub mod annotate;
pub mod caption;
pub mod features;
pub mod geometry;
pub mod render;
mod sample;
pub mod scene;
mod spec;
mod write;

pub use render::{FAR_DEPTH, Frame};
pub use sample::{FOLDERS, Folder, WorldSample};
pub use scene::{COLOURS, Object, SIZES, Scene, ShapeClass};
pub use spec::{MAX_SIZE, Progress, SplitSummary, WorldSpec, WorldSummary};
pub use write::generate;
