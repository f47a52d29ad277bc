//! The error type of the tokenizers crate.

/// Errors raised by the modality registry, the mixture/budget policy, the text tokenizer,
/// the serializers and the shard readers/writers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A modality key that the registry does not know.
    #[error("unknown modality '{key}'{hint} (known: {known})")]
    UnknownModality {
        /// The key as given.
        key: String,
        /// Extra advice (how to declare a tokenizer-defined key), or empty.
        hint: &'static str,
        /// The known keys, comma separated, to help the user.
        known: String,
    },
    /// A tokenizer-defined modality that cannot be registered (bad key or numbers, a key
    /// already registered with another spec, an id that collides with another modality's).
    #[error("token modality '{key}': {reason}")]
    CustomModality {
        /// The key as declared.
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A named or listed modality set that cannot be resolved.
    #[error("invalid modality set '{spec}': {reason}")]
    InvalidModalitySet {
        /// The set as given.
        spec: String,
        /// Why it was refused.
        reason: String,
    },
    /// A config file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file that cannot be written atomically ([`crate::atomic`]).
    #[error("{op} {path}: {source}")]
    Write {
        /// What was being done: creating, writing, syncing, renaming into place.
        op: &'static str,
        /// The file (the temp file, or the target for the rename).
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A YAML document that does not parse or does not have the expected layout.
    #[error("{origin}: {source}")]
    Yaml {
        /// The file (or other origin) of the document.
        origin: String,
        /// The parser's error (with line and column where known).
        source: serde_yaml::Error,
    },
    /// An alphas (Dirichlet mixture) config that parses but is invalid.
    #[error("{origin}: field `{field}`: {reason}")]
    Alphas {
        /// The file (or other origin) of the config.
        origin: String,
        /// The offending field, as a dotted path (`alphas_mixture.caption.keep`).
        field: String,
        /// Why it was refused.
        reason: String,
    },
    /// A JSON document that does not parse or does not have the expected layout.
    #[error("{origin}: {source}")]
    Json {
        /// The file (or other origin) of the document.
        origin: String,
        /// The parser's error (with line and column where known).
        source: serde_json::Error,
    },
    /// A HuggingFace `tokenizers` operation (load, encode, decode, train, save) that failed.
    #[error("{origin}: cannot {op}: {source}")]
    Tokenizer {
        /// The tokenizer file (or the training files) involved.
        origin: String,
        /// What was being done.
        op: &'static str,
        /// The `tokenizers` crate's error.
        source: tokenizers::Error,
    },
    /// A tokenizer-training spec that cannot produce ml-4m's token layout.
    #[error("invalid text tokenizer training spec: `{field}`: {reason}")]
    TrainSpec {
        /// The offending field of [`crate::text::TrainSpec`].
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A serializer input (JSON value) with a missing, mistyped or unknown field.
    #[error("{modality}: field `{key}`: {reason}")]
    Field {
        /// The modality being serialized (`det`, `metadata`, ...).
        modality: &'static str,
        /// The offending key, as a dotted path (`instances[2].score`).
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A serialized modality string that cannot be parsed back.
    #[error("{modality}: cannot parse token `{token}`: {reason}")]
    ParseText {
        /// The modality being parsed.
        modality: &'static str,
        /// The offending token (or the whole text when it is empty or too short).
        token: String,
        /// Why it was refused.
        reason: String,
    },
    /// A modality value handed to masking that does not fit the modality's spec.
    #[error("{modality}: cannot mask value: {reason}")]
    MaskValue {
        /// The modality's ml-4m key.
        modality: &'static str,
        /// What does not fit (kind, length, id range, missing sentinel).
        reason: String,
    },
    /// A per-modality token budget that the modality cannot be masked with.
    #[error("{modality}: invalid masking budget: {reason}")]
    MaskBudget {
        /// The modality's ml-4m key.
        modality: &'static str,
        /// Which budget is out of range, and the limit.
        reason: String,
    },
    /// A masker that cannot be set up or a sample budget that belongs to another modality list.
    #[error("masking set-up: {reason}")]
    MaskSetup {
        /// Why it was refused.
        reason: String,
    },
    /// Masked samples that cannot be stacked into one batch.
    #[error("{modality}: cannot collate: {reason}")]
    Collate {
        /// The modality's ml-4m key.
        modality: &'static str,
        /// Which sample differs, and how.
        reason: String,
    },
    /// Token-budget settings that cannot be sampled from.
    #[error("invalid token budget settings: {reason}")]
    Budget {
        /// Why they were refused.
        reason: String,
    },
    /// A shard or corpus path pattern (`root/[a,b]/shard-{0000..0009}.tar`) that cannot be expanded.
    #[error("bad path pattern '{pattern}': {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// A tar file that is truncated, corrupt or uses an unsupported feature.
    #[error("{file}: at byte {offset} (member '{member}'): {reason}")]
    Tar {
        /// The tar file.
        file: String,
        /// Byte offset of the offending header or data.
        offset: u64,
        /// The member name, as far as it is known (empty before the first header).
        member: String,
        /// What is wrong.
        reason: String,
    },
    /// Two modality folders whose shards do not hold the same keys in the same order (ml-4m's
    /// "Divergence detected"); boxed to keep `Result` small.
    #[error("{0}")]
    Divergence(Box<Divergence>),
    /// A dataset whose layout cannot be joined (for example two folders giving one member name).
    #[error("{origin}: {reason}")]
    Layout {
        /// The file or pattern concerned.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A member of a sample that cannot be decoded or has the wrong type or shape.
    #[error("{file}: sample '{key}', member '{member}': {reason}")]
    Member {
        /// The shard (or other) file.
        file: String,
        /// The sample key.
        key: String,
        /// The member (`tok_rgb@224.npy`), or field inside it.
        member: String,
        /// What is wrong.
        reason: String,
    },
    /// A text-corpus record (JSON line or text line) that cannot be used.
    #[error("{file}:{line}: {reason}")]
    TextRecord {
        /// The corpus file.
        file: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record index past the end of a dataset.
    #[error("record index {index} out of range for {origin} ({len} records)")]
    IndexOutOfRange {
        /// The requested index.
        index: usize,
        /// The number of records.
        len: usize,
        /// The dataset's pattern.
        origin: String,
    },
    /// Invalid arguments to an image operation (crop outside limits, zero output size, ...).
    #[error("image {op}: {reason}")]
    ImageOp {
        /// The operation.
        op: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A value that cannot be encoded (fixture and tool writers).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A built-in world generation spec that cannot be generated.
    #[error("invalid world spec: `{field}`: {reason}")]
    WorldSpec {
        /// The offending field of [`crate::world::WorldSpec`].
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A worker thread pool that cannot be built.
    #[error("cannot build a thread pool of {threads} threads: {reason}")]
    ThreadPool {
        /// The requested number of threads.
        threads: usize,
        /// Rayon's error.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The details of [`Error::Divergence`]: where two folders' shards stop agreeing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Divergence detected in shard {shard}, sample {position}: key '{key_a}' in folder '{folder_a}' ({file_a}) but '{key_b}' in folder '{folder_b}' ({file_b})"
)]
pub struct Divergence {
    /// Index of the shard in the pattern's expansion.
    pub shard: usize,
    /// Position of the sample in the shard.
    pub position: usize,
    /// The reference folder (the first of the pattern).
    pub folder_a: String,
    /// The reference folder's shard file.
    pub file_a: String,
    /// The reference key (`<end of shard>` when the shard has fewer samples).
    pub key_a: String,
    /// The diverging folder.
    pub folder_b: String,
    /// The diverging folder's shard file.
    pub file_b: String,
    /// The diverging key (`<end of shard>` when the shard has fewer samples).
    pub key_b: String,
}
