//! Bad GGUF files get a clear answer: every mutation of a valid tiny model file loads as a
//! model or as a typed [`LoadError`], never a panic, an abort, or an absurd allocation.
//!
//! This test binary runs under a global allocator that refuses any single allocation over
//! [`ALLOCATION_CAP`]: a loader that sizes a buffer from an unchecked count aborts here
//! (loudly) instead of taking the machine's memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::gguf_file;
use cocoon_inference::batched::BatchConfig;
use cocoon_inference::testing::{write_tiny_gguf, TinySpec};
use cocoon_inference::{
    Backend, DeviceChoice, Engine, EngineConfig, GenerateRequest, LoadError, ModelSource, Prompt,
    SamplingParams,
};
use proptest::prelude::*;

/// The largest single allocation this binary allows (1 GiB); a tiny model needs far less.
const ALLOCATION_CAP: usize = 1 << 30;

/// The largest allocation seen, for the report of a failing case.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Capped;

// SAFETY: forwards to `System`, refusing (null, as the contract allows) oversized requests.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_CAP {
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

fn config(backend: Backend) -> EngineConfig {
    EngineConfig {
        device: DeviceChoice::Cpu,
        max_concurrent: 1,
        backend,
        batch: BatchConfig {
            threads: 1,
            ..BatchConfig::default()
        },
        ..EngineConfig::default()
    }
}

const BACKENDS: [Backend; 2] = [Backend::Auto, Backend::Candle];

/// The bytes of a tiny model file written from `spec`.
fn tiny_bytes(spec: &TinySpec) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_gguf(&path, spec).unwrap();
    std::fs::read(path).unwrap()
}

/// Writes `bytes` as a model file and loads it with `backend`.
fn load_bytes(dir: &Path, bytes: &[u8], backend: Backend) -> Result<Engine, LoadError> {
    let path: PathBuf = dir.join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    Engine::load(&ModelSource::Gguf(path), config(backend))
}

/// Loads `spec`'s file with both backends; both must refuse it.
fn refused(spec: &TinySpec) -> Vec<LoadError> {
    let bytes = tiny_bytes(spec);
    let dir = tempfile::tempdir().unwrap();
    BACKENDS
        .iter()
        .map(|&b| match load_bytes(dir.path(), &bytes, b) {
            Ok(_) => panic!("{b:?} loaded a model it should refuse"),
            Err(e) => e,
        })
        .collect()
}

fn with_metadata(key: &str, value: gguf_file::Value) -> TinySpec {
    TinySpec {
        extra_metadata: vec![(key.to_string(), value)],
        ..TinySpec::default()
    }
}

/// A metadata error naming `key`.
fn names_key(e: &LoadError, key: &str) -> bool {
    matches!(e, LoadError::Metadata { key: k, .. } if k == key)
}

#[test]
fn a_huge_context_length_is_a_clear_error() {
    let spec = with_metadata("llama.context_length", gguf_file::Value::U32(u32::MAX));
    for e in refused(&spec) {
        assert!(names_key(&e, "llama.context_length"), "{e}");
    }
}

#[test]
fn a_huge_block_count_is_a_clear_error() {
    let spec = with_metadata("llama.block_count", gguf_file::Value::U32(u32::MAX));
    for e in refused(&spec) {
        assert!(names_key(&e, "llama.block_count"), "{e}");
    }
}

/// What a field of a GGUF header holds, for mutations that aim at one kind of field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The tensor or metadata count.
    Count,
    /// A metadata key's length.
    KeyLength,
    /// A metadata value's type.
    ValueType,
    /// A scalar metadata value outside arrays (a hyper-parameter, a token id).
    Parameter,
    /// A scalar array element (a token type).
    Scalar,
    /// A string value's length.
    StringLength,
    /// An array's element type.
    ArrayType,
    /// An array's length.
    ArrayLength,
    /// A tensor name's length.
    NameLength,
    /// A tensor's dimension count.
    Dims,
    /// One of a tensor's dimensions.
    Dim,
    /// A tensor's element type.
    DType,
    /// A tensor's data offset.
    Offset,
}

const KINDS: [Kind; 13] = [
    Kind::Count,
    Kind::KeyLength,
    Kind::ValueType,
    Kind::Parameter,
    Kind::Scalar,
    Kind::StringLength,
    Kind::ArrayType,
    Kind::ArrayLength,
    Kind::NameLength,
    Kind::Dims,
    Kind::Dim,
    Kind::DType,
    Kind::Offset,
];

/// A field of a header: its position, width in bytes and kind.
#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    width: usize,
    kind: Kind,
}

/// Every field of a valid GGUF (v2/v3) header, found by walking it.
fn fields(b: &[u8]) -> Vec<Field> {
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> usize {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
    }
    fn value(b: &[u8], at: &mut usize, ty: u32, top: bool, out: &mut Vec<Field>) {
        let scalar = if top { Kind::Parameter } else { Kind::Scalar };
        let mut field = |at: &mut usize, width, kind| {
            out.push(Field {
                at: *at,
                width,
                kind,
            });
            *at += width;
        };
        match ty {
            0 | 1 | 7 => field(at, 1, scalar),
            2 | 3 => field(at, 2, scalar),
            4..=6 => field(at, 4, scalar),
            10..=12 => field(at, 8, scalar),
            8 => {
                let len = u64_at(b, *at);
                field(at, 8, Kind::StringLength);
                *at += len;
            }
            9 => {
                let elem = u32_at(b, *at);
                field(at, 4, Kind::ArrayType);
                let len = u64_at(b, *at);
                field(at, 8, Kind::ArrayLength);
                for _ in 0..len {
                    value(b, at, elem, false, out);
                }
            }
            t => panic!("unknown value type {t}"),
        }
    }
    let mut out = vec![
        Field {
            at: 8,
            width: 8,
            kind: Kind::Count,
        },
        Field {
            at: 16,
            width: 8,
            kind: Kind::Count,
        },
    ];
    let (tensors, entries) = (u64_at(b, 8), u64_at(b, 16));
    let mut at = 24;
    for _ in 0..entries {
        let len = u64_at(b, at);
        out.push(Field {
            at,
            width: 8,
            kind: Kind::KeyLength,
        });
        at += 8 + len;
        let ty = u32_at(b, at);
        out.push(Field {
            at,
            width: 4,
            kind: Kind::ValueType,
        });
        at += 4;
        value(b, &mut at, ty, true, &mut out);
    }
    for _ in 0..tensors {
        let len = u64_at(b, at);
        out.push(Field {
            at,
            width: 8,
            kind: Kind::NameLength,
        });
        at += 8 + len;
        let dims = u32_at(b, at) as usize;
        out.push(Field {
            at,
            width: 4,
            kind: Kind::Dims,
        });
        at += 4;
        for _ in 0..dims {
            out.push(Field {
                at,
                width: 8,
                kind: Kind::Dim,
            });
            at += 8;
        }
        out.push(Field {
            at,
            width: 4,
            kind: Kind::DType,
        });
        out.push(Field {
            at: at + 4,
            width: 8,
            kind: Kind::Offset,
        });
        at += 12;
    }
    out
}

/// Values that break 8-byte counts, lengths, dimensions and offsets.
const HUGE_64: [u64; 10] = [
    u64::MAX,
    u64::MAX - 31,
    u64::MAX / 2,
    1 << 62,
    1 << 40,
    1 << 32,
    u32::MAX as u64,
    1 << 31,
    1 << 20,
    0,
];
/// Values that break 4-byte fields: types, dimension counts, hyper-parameters, token ids.
const HUGE_32: [u32; 10] = [
    u32::MAX,
    1 << 31,
    1 << 24,
    1 << 20,
    1 << 16,
    4096,
    31,
    9,
    1,
    0,
];

/// One change to a file's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite a field of one kind with a value that breaks it.
    Field {
        kind: prop::sample::Index,
        field: prop::sample::Index,
        value: prop::sample::Index,
    },
    /// Flip one bit, in the header (`header` true) or anywhere.
    Flip { header: bool, at: f64, bit: u8 },
    /// Cut the file there.
    Truncate { header: bool, at: f64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = (prop::bool::weighted(0.8), 0.0..1.0f64);
    prop_oneof![
        6 => any::<(prop::sample::Index, prop::sample::Index, prop::sample::Index)>()
            .prop_map(|(kind, field, value)| Mutation::Field { kind, field, value }),
        3 => (at.clone(), 0..8u8).prop_map(|((header, at), bit)| Mutation::Flip { header, at, bit }),
        1 => at.prop_map(|(header, at)| Mutation::Truncate { header, at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, fields: &[Field], header: usize, m: &Mutation) {
    let offset = |in_header: bool, at: f64, len: usize| {
        let span = if in_header { header.min(len) } else { len };
        (span as f64 * at) as usize
    };
    match m {
        Mutation::Field { kind, field, value } => {
            let kind = KINDS[kind.index(KINDS.len())];
            let of_kind: Vec<&Field> = fields.iter().filter(|f| f.kind == kind).collect();
            if of_kind.is_empty() {
                return;
            }
            let f = of_kind[field.index(of_kind.len())];
            let new = match f.width {
                8 => HUGE_64[value.index(HUGE_64.len())].to_le_bytes().to_vec(),
                4 => HUGE_32[value.index(HUGE_32.len())].to_le_bytes().to_vec(),
                w => vec![value.index(256) as u8; w],
            };
            if f.at + f.width <= bytes.len() {
                bytes[f.at..f.at + f.width].copy_from_slice(&new);
            }
        }
        Mutation::Flip { header: h, at, bit } => {
            let i = offset(*h, *at, bytes.len());
            if let Some(b) = bytes.get_mut(i) {
                *b ^= 1 << bit;
            }
        }
        Mutation::Truncate { header: h, at } => {
            let i = offset(*h, *at, bytes.len());
            bytes.truncate(i);
        }
    }
}

/// The fuzzed file: the tiny model with an explicit `general.alignment` (so that field can be
/// mutated too), its header's fields, and where its tensor data starts.
struct Original {
    bytes: Vec<u8>,
    fields: Vec<Field>,
    header: usize,
}

fn original() -> &'static Original {
    static ORIGINAL: std::sync::OnceLock<Original> = std::sync::OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let spec = with_metadata("general.alignment", gguf_file::Value::U32(32));
        let bytes = tiny_bytes(&spec);
        let content = gguf_file::Content::read(&mut Cursor::new(&bytes)).unwrap();
        let header = content.tensor_data_offset as usize;
        let fields = fields(&bytes);
        Original {
            bytes,
            fields,
            header,
        }
    })
}

proptest! {
    // 512 cases by default (about a second); `PROPTEST_CASES` runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Any mutation of a valid file loads or is refused; a model that loads also runs.
    #[test]
    fn mutated_files_load_or_fail_cleanly(
        mutations in prop::collection::vec(mutation(), 1..4),
        candle in any::<bool>(),
    ) {
        let o = original();
        let mut bytes = o.bytes.clone();
        for m in &mutations {
            apply(&mut bytes, &o.fields, o.header, m);
        }
        let dir = tempfile::tempdir().unwrap();
        let backend = if candle { Backend::Candle } else { Backend::Auto };
        if let Ok(engine) = load_bytes(dir.path(), &bytes, backend) {
            // Whatever it says, it must say it without panicking.
            let _ = engine.generate_text(GenerateRequest {
                prompt: Prompt::Text("the world".into()),
                sampling: SamplingParams::greedy(2),
            });
        }
    }
}

#[test]
fn the_walker_finds_every_field() {
    let o = original();
    let last = o.fields.last().unwrap();
    assert_eq!(last.kind, Kind::Offset);
    let end = last.at + last.width;
    assert_eq!(end.div_ceil(32) * 32, o.header);
    for kind in KINDS {
        assert!(o.fields.iter().any(|f| f.kind == kind), "{kind:?}");
    }
}

#[test]
fn the_unmutated_file_loads_and_runs_on_both_backends() {
    let bytes = &original().bytes;
    let dir = tempfile::tempdir().unwrap();
    for backend in BACKENDS {
        let engine = load_bytes(dir.path(), bytes, backend).unwrap();
        let (_, usage) = engine
            .generate_text(GenerateRequest {
                prompt: Prompt::Text("the world".into()),
                sampling: SamplingParams::greedy(2),
            })
            .unwrap();
        assert_eq!(usage.completion_tokens, 2);
    }
}

/// Where `needle` first (or, with `last`, last) occurs in `bytes`.
fn find(bytes: &[u8], needle: &[u8], last: bool) -> usize {
    let is = |w: &[u8]| w == needle;
    let mut windows = bytes.windows(needle.len());
    let hit = if last {
        windows.rposition(is)
    } else {
        windows.position(is)
    };
    hit.expect("needle present")
}

/// `bytes` with the little-endian `value` written at `at`.
fn patched(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at..at + value.len()].copy_from_slice(value);
    out
}

/// Both backends refuse `bytes` with a header error (and neither panics nor aborts).
fn refuse_bytes(bytes: &[u8]) -> Vec<LoadError> {
    let dir = tempfile::tempdir().unwrap();
    BACKENDS
        .iter()
        .map(|&b| match load_bytes(dir.path(), bytes, b) {
            Ok(_) => panic!("{b:?} loaded a file it should refuse"),
            Err(e @ LoadError::Header(_)) => e,
            Err(e) => panic!("{b:?}: not a header error: {e}"),
        })
        .collect()
}

// Header layout (v2/v3): magic u32, version u32, tensor count u64 (at 8), metadata count u64
// (at 16), then metadata entries: key (u64 length + bytes), u32 type, value.

#[test]
fn a_huge_tensor_count_is_refused() {
    let bytes = &original().bytes;
    for value in [u64::MAX, 1 << 40, u32::MAX as u64] {
        refuse_bytes(&patched(bytes, 8, &value.to_le_bytes()));
    }
}

#[test]
fn a_huge_metadata_count_is_refused() {
    let bytes = &original().bytes;
    for value in [u64::MAX, 1 << 40, u32::MAX as u64] {
        refuse_bytes(&patched(bytes, 16, &value.to_le_bytes()));
    }
}

#[test]
fn a_huge_string_length_is_refused() {
    let bytes = &original().bytes;
    // The first key's length, then the length of the `general.architecture` value.
    let arch = find(bytes, b"general.architecture", false);
    let value_len = arch + "general.architecture".len() + 4;
    for at in [24, value_len] {
        for value in [u64::MAX, 1 << 40, bytes.len() as u64] {
            refuse_bytes(&patched(bytes, at, &value.to_le_bytes()));
        }
    }
}

#[test]
fn a_huge_array_length_is_refused() {
    let bytes = &original().bytes;
    // key, u32 type (array), u32 element type, u64 length.
    let tokens = find(bytes, b"tokenizer.ggml.tokens", false);
    let len_at = tokens + "tokenizer.ggml.tokens".len() + 8;
    let original_len = u64::from_le_bytes(bytes[len_at..len_at + 8].try_into().unwrap());
    assert_eq!(original_len, 3 + 256 + 11, "found the token array's length");
    for value in [u64::MAX, 1 << 40, 1 << 30, bytes.len() as u64] {
        refuse_bytes(&patched(bytes, len_at, &value.to_le_bytes()));
    }
}

#[test]
fn a_tensor_past_the_end_of_the_file_is_refused() {
    let bytes = &original().bytes;
    // In the tensor infos: name, u32 dimension count (1), u64 dimension, u32 type, u64 offset.
    let name = find(bytes, b"output_norm.weight", true);
    let dims_at = name + "output_norm.weight".len();
    assert_eq!(bytes[dims_at..dims_at + 4], 1u32.to_le_bytes());
    let offset_at = dims_at + 4 + 8 + 4;
    for value in [u64::MAX, u64::MAX - 31, bytes.len() as u64, 1 << 40] {
        refuse_bytes(&patched(bytes, offset_at, &value.to_le_bytes()));
    }
    // A dimension so large that the element count overflows.
    for value in [u64::MAX, 1 << 62, 1 << 40] {
        refuse_bytes(&patched(bytes, dims_at + 4, &value.to_le_bytes()));
    }
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut value = gguf_file::Value::Array(vec![gguf_file::Value::U8(1)]);
    for _ in 0..100 {
        value = gguf_file::Value::Array(vec![value]);
    }
    for e in refused(&with_metadata("test.nested", value)) {
        assert!(matches!(e, LoadError::Header(_)), "{e}");
    }
}

#[test]
fn shallow_nested_arrays_are_fine() {
    let value = gguf_file::Value::Array(vec![gguf_file::Value::Array(vec![
        gguf_file::Value::U8(1),
        gguf_file::Value::U8(2),
    ])]);
    let bytes = tiny_bytes(&with_metadata("test.nested", value));
    let dir = tempfile::tempdir().unwrap();
    for backend in BACKENDS {
        load_bytes(dir.path(), &bytes, backend).unwrap();
    }
}

#[test]
fn a_zero_alignment_is_refused() {
    for e in refused(&with_metadata(
        "general.alignment",
        gguf_file::Value::U32(0),
    )) {
        assert!(matches!(e, LoadError::Header(_)), "{e}");
    }
}

#[test]
fn zero_heads_are_refused() {
    let spec = with_metadata("llama.attention.head_count", gguf_file::Value::U32(0));
    for e in refused(&spec) {
        assert!(names_key(&e, "llama.attention.head_count"), "{e}");
    }
}

#[test]
fn metadata_that_disagrees_with_the_tensors_is_refused() {
    for (key, value) in [
        ("llama.embedding_length", 128),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count_kv", 4),
        ("llama.block_count", 3),
    ] {
        let spec = with_metadata(key, gguf_file::Value::U32(value));
        for e in refused(&spec) {
            assert!(
                matches!(&e, LoadError::Tensor { .. } | LoadError::MissingTensor(_)),
                "{key}: {e}"
            );
        }
    }
}

#[test]
fn token_ids_outside_the_vocabulary_are_refused() {
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        for e in refused(&with_metadata(key, gguf_file::Value::U32(100_000))) {
            assert!(names_key(&e, key), "{e}");
        }
    }
}

#[test]
fn state_past_the_memory_limit_is_refused() {
    let bytes = &original().bytes;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let source = ModelSource::Gguf(path);
    for backend in BACKENDS {
        let small = EngineConfig {
            max_state_bytes: 1 << 10,
            ..config(backend)
        };
        let e = Engine::load(&source, small).unwrap_err();
        assert!(
            matches!(e, LoadError::StateTooLarge { needed: Some(n), limit } if n > limit),
            "{e}"
        );
        // So many generations that the bytes overflow: refused, not wrapped.
        let absurd = EngineConfig {
            max_concurrent: usize::MAX,
            max_state_bytes: u64::MAX,
            ..config(backend)
        };
        let e = Engine::load(&source, absurd).unwrap_err();
        assert!(
            matches!(e, LoadError::StateTooLarge { needed: None, .. }),
            "{e}"
        );
    }
}
