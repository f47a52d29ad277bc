//! Job specs: the TOML config as written, its validation into a resolved job, and the import
//! of ml-4m's YAML configs.

pub mod config;
pub mod ml4m;
pub mod model_kind;
pub mod resolve;

pub use config::{DatasetKind, DeviceKind, JobConfig, LossKind, StragglersSection, TokensSpec};
pub use ml4m::{Ml4mImport, import_ml4m};
pub use model_kind::{Flavor, Preset};
pub use resolve::{ModelSpec, ResolvedCheckpoint, ResolvedDataset, ResolvedJob, ResolvedTrain, StragglerPolicy};
