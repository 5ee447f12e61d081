//! A bounded pre-parser for GGUF headers: every count, length and offset a file declares is
//! checked against the bytes the file actually has and against [`HeaderLimits`] before
//! candle's reader (`gguf_file::Content::read`) builds anything from it.
//!
//! candle 0.11.1 already bounds string and array lengths by the file's size, but it still
//! panics on `general.alignment = 0` (a division by zero), builds a 32-byte `Value` for every
//! one-byte array element (a 1 GiB file could ask for 32 GiB), and leaves tensor shapes
//! unchecked (an element count that overflows panics in [`Shape::elem_count`]; a tensor
//! past the end of the file fails only when read, and tensors may share bytes, so a small
//! file could name the same data a thousand times). [`inspect`] walks the header without
//! building values, so its memory is the list of tensors it returns; [`read_content`] runs
//! it, then candle's reader on the same bytes, and checks the two agree (so a file changed
//! between the two reads is refused too).
//!
//! It is a pure function of the bytes: no clock, no file system; [`read_content`] only adds
//! the seeks.
//!
//! [`Shape::elem_count`]: candle_core::Shape::elem_count

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::{gguf_file, GgmlDType};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the tensor data when `general.alignment` is absent (as candle and the spec
/// say): 32 bytes.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (GGML's `GGML_MAX_DIMS`): 4.
pub const MAX_TENSOR_DIMS: u32 = 4;
/// The metadata key that sets the alignment.
const ALIGNMENT_KEY: &[u8] = b"general.alignment";

/// Bounds on what a header may declare, beyond what the file's size already bounds.
///
/// The defaults hold every llama-family GGUF we know of with a wide margin (a 256k-token
/// vocabulary with its merges is under 10⁶ metadata values, a 405B model under 2000
/// tensors), and cap what candle's reader then allocates at about 300 MiB (32 bytes per
/// metadata value, plus the strings, which the file's size bounds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Most tensors. Default 65 536.
    pub max_tensors: u64,
    /// Most metadata entries (key-value pairs). Default 65 536.
    pub max_metadata_entries: u64,
    /// Longest metadata key, in bytes. Default 65 536.
    pub max_key_bytes: u64,
    /// Longest string value, in bytes (a chat template is a few KiB). Default 16 MiB.
    pub max_string_bytes: u64,
    /// Longest tensor name, in bytes (GGML's own limit is 64). Default 256.
    pub max_tensor_name_bytes: u64,
    /// Most elements of one array. Default 4 Mi (2²²).
    pub max_array_len: u64,
    /// Most metadata values in all, counting every array element (candle builds a 32-byte
    /// value for each). Default 8 Mi (2²³).
    pub max_values: u64,
    /// Deepest nesting of arrays: 1 allows arrays of scalars, 2 arrays of arrays. Default 8.
    pub max_array_depth: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_tensors: 1 << 16,
            max_metadata_entries: 1 << 16,
            max_key_bytes: 1 << 16,
            max_string_bytes: 1 << 24,
            max_tensor_name_bytes: 256,
            max_array_len: 1 << 22,
            max_values: 1 << 23,
            max_array_depth: 8,
        }
    }
}

/// Why a GGUF header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: it starts with {0:02x?}, not \"GGUF\"")]
    Magic([u8; 4]),
    /// A GGUF version this reader does not know (a big-endian file reads as a huge one).
    #[error("GGUF version {0} is not supported (1, 2 and 3 are, little-endian only)")]
    Version(u32),
    /// The file ends inside the header.
    #[error("the file ends at byte {at}, inside {what}")]
    Truncated {
        /// The field being read.
        what: String,
        /// Where the file ended.
        at: u64,
    },
    /// A count or length is over its [`HeaderLimits`] bound.
    #[error("{what} is {value}, over the limit of {limit}")]
    Limit {
        /// The count or length.
        what: String,
        /// Its value in the file.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A length or offset points past the end of the file.
    #[error("{what} needs {needed} bytes from byte {at}; the file has {file_len}")]
    PastEnd {
        /// What needs the bytes.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Where they would start.
        at: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A field holds a value the format does not allow.
    #[error("{what}: {problem}")]
    Invalid {
        /// The field.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The file could not be read.
    #[error("reading the GGUF header: {0}")]
    Io(#[source] std::io::Error),
    /// candle's reader refused a header this pre-parser accepted.
    #[error("reading the GGUF header: {0}")]
    Candle(#[source] candle_core::Error),
    /// candle's reader saw a different header than the pre-parser (the file changed).
    #[error("the GGUF file changed while it was read: {0}")]
    Changed(String),
}

/// Where one tensor's data lies, as the header declares it (dimensions in candle's order,
/// outermost first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorExtent {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: GgmlDType,
    /// Its shape, as candle's `TensorInfo::shape` has it (rows first).
    pub dims: Vec<usize>,
    /// Offset of its data from the start of the tensor data.
    pub offset: u64,
    /// Bytes of its data.
    pub bytes: u64,
}

/// What [`inspect`] learned from a header that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The GGUF version (1, 2 or 3).
    pub version: u32,
    /// Metadata entries.
    pub metadata_entries: u64,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorExtent>,
    /// Where the tensor data starts (the header's end, aligned).
    pub tensor_data_offset: u64,
}

impl Header {
    /// Checks that candle's reading of the file agrees with this one: the same tensors with
    /// the same types, shapes and offsets, and the same start of the tensor data. Every
    /// tensor of `content` then lies inside the file this header was read from.
    pub fn check_matches(&self, content: &gguf_file::Content) -> Result<(), HeaderError> {
        let changed = |what: String| Err(HeaderError::Changed(what));
        if content.tensor_data_offset != self.tensor_data_offset {
            return changed(format!(
                "tensor data at byte {}, not {}",
                content.tensor_data_offset, self.tensor_data_offset
            ));
        }
        if content.tensor_infos.len() != self.tensors.len() {
            return changed(format!(
                "{} tensors, not {}",
                content.tensor_infos.len(),
                self.tensors.len()
            ));
        }
        for t in &self.tensors {
            let same = content.tensor_infos.get(&t.name).is_some_and(|i| {
                i.ggml_dtype == t.dtype && i.shape.dims() == t.dims && i.offset == t.offset
            });
            if !same {
                return changed(format!("tensor {} differs", t.name));
            }
        }
        Ok(())
    }
}

/// Reads a GGUF header from the start of `reader` with [`inspect`], then with candle, and
/// checks they agree ([`Header::check_matches`]). The reader is left anywhere.
pub fn read_content<R: Read + Seek>(
    reader: &mut R,
    limits: &HeaderLimits,
) -> Result<(Header, gguf_file::Content), HeaderError> {
    let file_len = reader.seek(SeekFrom::End(0)).map_err(HeaderError::Io)?;
    reader.seek(SeekFrom::Start(0)).map_err(HeaderError::Io)?;
    let header = inspect(&mut *reader, file_len, limits)?;
    reader.seek(SeekFrom::Start(0)).map_err(HeaderError::Io)?;
    let content = gguf_file::Content::read(reader).map_err(HeaderError::Candle)?;
    header.check_matches(&content)?;
    Ok((header, content))
}

/// Walks the GGUF header at the start of `reader`, a file of `file_len` bytes, checking
/// every count, length, type, shape and offset; builds no metadata values.
///
/// Accepts exactly the headers candle's reader reads without panicking or allocating past
/// `limits`, and whose every tensor lies inside the file.
pub fn inspect<R: Read>(
    reader: R,
    file_len: u64,
    limits: &HeaderLimits,
) -> Result<Header, HeaderError> {
    let mut w = Walker {
        reader,
        pos: 0,
        file_len,
        wide: true,
        values: 0,
        limits,
    };
    let magic: [u8; 4] = w.array(|| "the magic".into())?;
    if magic != MAGIC {
        return Err(HeaderError::Magic(magic));
    }
    let version = w.u32(|| "the version".into())?;
    if !(1..=3).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    w.wide = version >= 2;
    let tensor_count = w.length(|| "the tensor count".into())?;
    let entries = w.length(|| "the metadata count".into())?;
    w.limit("the tensor count", tensor_count, limits.max_tensors)?;
    w.limit("the metadata count", entries, limits.max_metadata_entries)?;
    // A metadata entry is at least a key length, a type and a one-byte value; a tensor at
    // least a name length, a dimension count, a type and an offset.
    let prefix = w.prefix();
    let needed = entries
        .saturating_mul(prefix + 4 + 1)
        .saturating_add(tensor_count.saturating_mul(prefix + 4 + 4 + 8));
    w.fits(|| "the declared metadata and tensors".into(), needed)?;

    let mut alignment = DEFAULT_ALIGNMENT;
    let mut key = Vec::new();
    for i in 0..entries {
        w.string_into(&mut key, limits.max_key_bytes, || {
            format!("the key of metadata entry {i}")
        })?;
        // candle drops trailing NULs (keys included).
        while key.last() == Some(&0) {
            key.pop();
        }
        let name = || String::from_utf8_lossy(&key).into_owned();
        let ty = w.u32(|| format!("the type of metadata key {}", name()))?;
        if key == ALIGNMENT_KEY {
            // candle's rule: a non-negative 8, 16 or 32-bit integer, else the default.
            alignment = match ty {
                0 => w.array::<1>(name)?[0] as u64,
                1 => (w.array::<1>(name)?[0] as i8).max(-1) as i64 as u64,
                2 => u16::from_le_bytes(w.array(name)?) as u64,
                3 => i16::from_le_bytes(w.array(name)?) as i64 as u64,
                4 => u32::from_le_bytes(w.array(name)?) as u64,
                5 => i32::from_le_bytes(w.array(name)?) as i64 as u64,
                _ => {
                    w.value(ty, 0, &name)?;
                    DEFAULT_ALIGNMENT
                }
            };
            if ty <= 5 {
                w.count_values(1, &name)?;
                if alignment > u32::MAX as u64 {
                    // A negative signed value: candle falls back to the default.
                    alignment = DEFAULT_ALIGNMENT;
                }
            }
        } else {
            w.value(ty, 0, &name)?;
        }
    }

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::with_capacity(tensor_count as usize);
    let mut raw = Vec::new();
    for i in 0..tensor_count {
        w.string_into(&mut raw, limits.max_tensor_name_bytes, || {
            format!("the name of tensor {i}")
        })?;
        // candle drops trailing NULs and replaces invalid UTF-8.
        while raw.last() == Some(&0) {
            raw.pop();
        }
        let name = String::from_utf8_lossy(&raw).into_owned();
        let tensor = w.tensor(&name)?;
        if !names.insert(name.clone()) {
            return Err(invalid(format!("tensor {name}"), "appears twice"));
        }
        tensors.push(tensor);
    }

    if !alignment.is_power_of_two() {
        return Err(invalid(
            "general.alignment",
            format!("{alignment} is not a power of two"),
        ));
    }
    let tensor_data_offset = w
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| invalid("general.alignment", format!("{alignment} is too large")))?;
    // Every tensor inside the file, and no two sharing bytes: the weights candle builds then
    // take at most the file's size.
    let mut by_offset: Vec<&TensorExtent> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset.saturating_add(pair[0].bytes) > pair[1].offset {
            return Err(invalid(
                format!("tensor {}", pair[1].name),
                format!("its data overlaps tensor {}", pair[0].name),
            ));
        }
    }
    for t in &tensors {
        let at = tensor_data_offset.checked_add(t.offset);
        let end = at.and_then(|a| a.checked_add(t.bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(HeaderError::PastEnd {
                what: format!("tensor {}", t.name),
                needed: t.bytes,
                at: at.unwrap_or(u64::MAX),
                file_len,
            });
        }
    }
    Ok(Header {
        version,
        metadata_entries: entries,
        tensors,
        tensor_data_offset,
    })
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> HeaderError {
    HeaderError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

/// The GGML type with this GGUF code, as candle reads it.
fn ggml_dtype(code: u32) -> Option<GgmlDType> {
    Some(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// GGUF metadata value types.
const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Bytes of a scalar GGUF value of type `ty`, `None` for strings, arrays and unknown types.
fn scalar_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// A reader that knows its position, the file's length and the limits.
struct Walker<'a, R> {
    reader: R,
    pos: u64,
    file_len: u64,
    /// Lengths are 64-bit (GGUF v2 and v3), else 32-bit (v1).
    wide: bool,
    /// Metadata values seen so far (array elements included).
    values: u64,
    limits: &'a HeaderLimits,
}

impl<R: Read> Walker<'_, R> {
    fn remaining(&self) -> u64 {
        self.file_len.saturating_sub(self.pos)
    }

    /// Bytes of a length prefix.
    fn prefix(&self) -> u64 {
        if self.wide {
            8
        } else {
            4
        }
    }

    fn io(&self, e: std::io::Error, what: impl FnOnce() -> String) -> HeaderError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HeaderError::Truncated {
                what: what(),
                at: self.pos,
            }
        } else {
            HeaderError::Io(e)
        }
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], HeaderError> {
        let mut b = [0u8; N];
        if let Err(e) = self.reader.read_exact(&mut b) {
            return Err(self.io(e, what));
        }
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, HeaderError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A length or count: u64 in v2 and v3, u32 in v1.
    fn length(&mut self, what: impl FnOnce() -> String) -> Result<u64, HeaderError> {
        if self.wide {
            self.array(what).map(u64::from_le_bytes)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn limit(&self, what: &str, value: u64, limit: u64) -> Result<(), HeaderError> {
        if value > limit {
            return Err(HeaderError::Limit {
                what: what.to_string(),
                value,
                limit,
            });
        }
        Ok(())
    }

    /// Whether `needed` more bytes exist.
    fn fits(&self, what: impl FnOnce() -> String, needed: u64) -> Result<(), HeaderError> {
        if needed > self.remaining() {
            return Err(HeaderError::PastEnd {
                what: what(),
                needed,
                at: self.pos,
                file_len: self.file_len,
            });
        }
        Ok(())
    }

    /// Skips `n` bytes that [`Walker::fits`] has checked, without buffering them.
    fn skip(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<(), HeaderError> {
        let mut buf = [0u8; 4096];
        let mut left = n;
        while left > 0 {
            let chunk = left.min(buf.len() as u64) as usize;
            if let Err(e) = self.reader.read_exact(&mut buf[..chunk]) {
                return Err(self.io(e, what));
            }
            self.pos += chunk as u64;
            left -= chunk as u64;
        }
        Ok(())
    }

    /// A string's length, checked against `limit` and the bytes left.
    fn string_len(&mut self, limit: u64, what: &dyn Fn() -> String) -> Result<u64, HeaderError> {
        let len = self.length(what)?;
        if len > limit {
            return Err(HeaderError::Limit {
                what: format!("the length of {}", what()),
                value: len,
                limit,
            });
        }
        self.fits(what, len)?;
        Ok(len)
    }

    /// Reads a string (at most `limit` bytes) into `out`.
    fn string_into(
        &mut self,
        out: &mut Vec<u8>,
        limit: u64,
        what: impl Fn() -> String,
    ) -> Result<(), HeaderError> {
        let len = self.string_len(limit, &what)?;
        out.clear();
        out.resize(len as usize, 0);
        if let Err(e) = self.reader.read_exact(out) {
            return Err(self.io(e, what));
        }
        self.pos += len;
        Ok(())
    }

    fn count_values(&mut self, n: u64, key: &dyn Fn() -> String) -> Result<(), HeaderError> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return Err(HeaderError::Limit {
                what: format!("the metadata values up to key {}", key()),
                value: self.values,
                limit: self.limits.max_values,
            });
        }
        Ok(())
    }

    /// Skips a value of type `ty` at array nesting `depth`, checking it.
    fn value(
        &mut self,
        ty: u32,
        depth: usize,
        key: &dyn Fn() -> String,
    ) -> Result<(), HeaderError> {
        let what = || format!("the value of metadata key {}", key());
        self.count_values(1, key)?;
        if let Some(size) = scalar_size(ty) {
            self.fits(what, size)?;
            if ty == 7 {
                let [b] = self.array(what)?;
                if b > 1 {
                    return Err(invalid(what(), format!("boolean byte {b}")));
                }
                return Ok(());
            }
            return self.skip(size, what);
        }
        match ty {
            STRING => {
                let len = self.string_len(self.limits.max_string_bytes, &what)?;
                self.skip(len, what)
            }
            ARRAY => {
                if depth >= self.limits.max_array_depth {
                    return Err(HeaderError::Limit {
                        what: format!("the array nesting of metadata key {}", key()),
                        value: depth as u64 + 1,
                        limit: self.limits.max_array_depth as u64,
                    });
                }
                let elem = self.u32(what)?;
                let len = self.length(what)?;
                if len > self.limits.max_array_len {
                    return Err(HeaderError::Limit {
                        what: format!("the array length of metadata key {}", key()),
                        value: len,
                        limit: self.limits.max_array_len,
                    });
                }
                let min_size = match (scalar_size(elem), elem) {
                    (Some(size), _) => size,
                    (None, STRING) => self.prefix(),
                    (None, ARRAY) => 4 + self.prefix(),
                    (None, t) => {
                        return Err(invalid(what(), format!("unknown element type {t}")));
                    }
                };
                self.fits(what, len.saturating_mul(min_size))?;
                if let Some(size) = scalar_size(elem).filter(|_| elem != 7) {
                    // Fixed-size elements: count and skip them at once.
                    self.count_values(len, key)?;
                    return self.skip(len * size, what);
                }
                for _ in 0..len {
                    self.value(elem, depth + 1, key)?;
                }
                Ok(())
            }
            t => Err(invalid(what(), format!("unknown value type {t}"))),
        }
    }

    /// A tensor's dimensions, type and offset (after its name).
    fn tensor(&mut self, name: &str) -> Result<TensorExtent, HeaderError> {
        let what = || format!("tensor {name}");
        let n_dims = self.u32(what)?;
        if n_dims > MAX_TENSOR_DIMS {
            return Err(invalid(
                what(),
                format!("{n_dims} dimensions, more than {MAX_TENSOR_DIMS}"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.length(what)?;
            let d = usize::try_from(d)
                .map_err(|_| invalid(what(), format!("dimension {d} does not fit in memory")))?;
            dims.push(d);
        }
        dims.reverse();
        let code = self.u32(what)?;
        let dtype =
            ggml_dtype(code).ok_or_else(|| invalid(what(), format!("unknown type {code}")))?;
        let offset = self.array(what).map(u64::from_le_bytes)?;
        let elems = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| invalid(what(), format!("shape {dims:?} has too many elements")))?;
        let block = dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(invalid(
                what(),
                format!("{elems} elements are not whole {dtype:?} blocks of {block}"),
            ));
        }
        let bytes = (elems / block)
            .checked_mul(dtype.type_size() as u64)
            .filter(|&b| usize::try_from(b).is_ok())
            .ok_or_else(|| invalid(what(), format!("shape {dims:?} has too many bytes")))?;
        Ok(TensorExtent {
            name: name.to_string(),
            dtype,
            dims,
            offset,
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A v3 header with `entries` (key, type, value bytes) and `tensors`
    /// (name, dims innermost first, type, offset).
    fn header(entries: &[(&str, u32, Vec<u8>)], tensors: &[(&str, &[u64], u32, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (k, ty, v) in entries {
            b.extend_from_slice(&(k.len() as u64).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        for (name, dims, ty, offset) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
        }
        b
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    fn check(bytes: &[u8]) -> Result<Header, HeaderError> {
        inspect(
            Cursor::new(bytes),
            bytes.len() as u64,
            &HeaderLimits::default(),
        )
    }

    /// `bytes` padded to the data offset, then `data` bytes of tensor data.
    fn with_data(mut bytes: Vec<u8>, data: usize) -> Vec<u8> {
        bytes.resize(bytes.len().div_ceil(32) * 32 + data, 0);
        bytes
    }

    #[test]
    fn a_valid_header_agrees_with_candle() {
        let bytes = with_data(
            header(
                &[
                    ("general.architecture", STRING, string("llama")),
                    ("x.count", 4, 7u32.to_le_bytes().to_vec()),
                ],
                &[("w", &[32, 2], 0, 0), ("v", &[32], 8, 256)],
            ),
            256 + 34,
        );
        let (h, content) =
            read_content(&mut Cursor::new(&bytes), &HeaderLimits::default()).expect("valid");
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].dims, vec![2, 32]);
        assert_eq!(h.tensors[0].bytes, 256);
        assert_eq!(h.tensors[1].bytes, 34);
        assert_eq!(h.tensor_data_offset, content.tensor_data_offset);
        // One byte short: the last tensor no longer fits.
        let short = &bytes[..bytes.len() - 1];
        assert!(matches!(check(short), Err(HeaderError::PastEnd { .. })));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let raw = header(
            &[
                ("a", STRING, string("llama")),
                ("b", ARRAY, {
                    let mut v = STRING.to_le_bytes().to_vec();
                    v.extend_from_slice(&2u64.to_le_bytes());
                    v.extend(string("x"));
                    v.extend(string("yz"));
                    v
                }),
                ("c", ARRAY, {
                    let mut v = 7u32.to_le_bytes().to_vec();
                    v.extend_from_slice(&2u64.to_le_bytes());
                    v.extend([0, 1]);
                    v
                }),
            ],
            &[("w", &[32], 0, 0)],
        );
        let bytes = with_data(raw.clone(), 128);
        assert!(check(&bytes).is_ok());
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            assert!(check(cut).is_err(), "cut at {len}");
            if len < raw.len() {
                // A file that claims to be longer than the bytes it gives.
                let claims_more = inspect(
                    Cursor::new(cut),
                    bytes.len() as u64,
                    &HeaderLimits::default(),
                );
                assert!(
                    matches!(claims_more, Err(HeaderError::Truncated { .. })),
                    "cut at {len}"
                );
            }
        }
    }

    #[test]
    fn huge_counts_and_lengths_are_refused() {
        let mut huge_count = header(&[], &[]);
        huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&huge_count), Err(HeaderError::Limit { .. })));
        let mut many = header(&[], &[]);
        many[16..24].copy_from_slice(&1000u64.to_le_bytes());
        assert!(matches!(check(&many), Err(HeaderError::PastEnd { .. })));

        let long_string = header(&[("k", STRING, u64::MAX.to_le_bytes().to_vec())], &[]);
        assert!(matches!(
            check(&long_string),
            Err(HeaderError::Limit { .. })
        ));
        let past_end = header(&[("k", STRING, 100u64.to_le_bytes().to_vec())], &[]);
        assert!(matches!(check(&past_end), Err(HeaderError::PastEnd { .. })));

        let mut array = 0u32.to_le_bytes().to_vec();
        array.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let long_array = header(&[("k", ARRAY, array)], &[]);
        assert!(matches!(check(&long_array), Err(HeaderError::Limit { .. })));
        let mut array = STRING.to_le_bytes().to_vec();
        array.extend_from_slice(&1000u64.to_le_bytes());
        let strings_past_end = header(&[("k", ARRAY, array)], &[]);
        assert!(matches!(
            check(&strings_past_end),
            Err(HeaderError::PastEnd { .. })
        ));
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |depth: usize| {
            let mut v = 0u32.to_le_bytes().to_vec(); // innermost: [u8; 1]
            v.extend_from_slice(&1u64.to_le_bytes());
            v.push(1);
            for _ in 1..depth {
                let mut outer = ARRAY.to_le_bytes().to_vec();
                outer.extend_from_slice(&1u64.to_le_bytes());
                outer.extend(v);
                v = outer;
            }
            header(&[("k", ARRAY, v)], &[])
        };
        let limit = HeaderLimits::default().max_array_depth;
        assert!(check(&nested(limit)).is_ok());
        assert!(matches!(
            check(&nested(limit + 1)),
            Err(HeaderError::Limit { .. })
        ));
        assert!(check(&nested(1000)).is_err());
    }

    #[test]
    fn alignment_must_be_a_power_of_two() {
        for (value, ok) in [(0u32, false), (3, false), (1, true), (64, true)] {
            let bytes = header(
                &[("general.alignment", 4, value.to_le_bytes().to_vec())],
                &[],
            );
            assert_eq!(check(&bytes).is_ok(), ok, "{value}");
        }
        // Types candle ignores (u64 here) leave the default.
        let ignored = header(
            &[("general.alignment", 10, 0u64.to_le_bytes().to_vec())],
            &[],
        );
        assert_eq!(check(&ignored).unwrap().tensor_data_offset % 32, 0);
    }

    #[test]
    fn bad_tensor_infos_are_refused() {
        let cases: [(&[u64], u32, u64); 6] = [
            (&[1, 2, 3, 4, 5], 0, 0),    // too many dimensions
            (&[u64::MAX, 2], 0, 0),      // element count overflows
            (&[1 << 31, 1 << 31], 0, 0), // 2⁶² f32s: the bytes overflow
            (&[33], 8, 0),               // not whole Q8_0 blocks
            (&[32], 99, 0),              // unknown type
            (&[32], 0, u64::MAX - 8),    // offset past the end
        ];
        for (dims, ty, offset) in cases {
            let bytes = with_data(header(&[], &[("t", dims, ty, offset)]), 1024);
            assert!(check(&bytes).is_err(), "{dims:?} {ty} {offset}");
        }
        let twice = with_data(header(&[], &[("t", &[1], 0, 0), ("t", &[1], 0, 32)]), 64);
        assert!(matches!(check(&twice), Err(HeaderError::Invalid { .. })));
        let overlapping = with_data(header(&[], &[("a", &[8], 0, 0), ("b", &[1], 0, 28)]), 64);
        assert!(matches!(
            check(&overlapping),
            Err(HeaderError::Invalid { .. })
        ));
        let adjacent = with_data(header(&[], &[("a", &[8], 0, 0), ("b", &[1], 0, 32)]), 64);
        assert!(check(&adjacent).is_ok());
    }

    #[test]
    fn bad_magic_version_and_types_are_refused() {
        let mut bytes = header(&[], &[]);
        bytes[0] = b'X';
        assert!(matches!(check(&bytes), Err(HeaderError::Magic(_))));
        let mut bytes = header(&[], &[]);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(check(&bytes), Err(HeaderError::Version(_))));
        let bytes = header(&[("k", 13, vec![0; 8])], &[]);
        assert!(matches!(check(&bytes), Err(HeaderError::Invalid { .. })));
        let bytes = header(&[("k", 7, vec![2])], &[]);
        assert!(matches!(check(&bytes), Err(HeaderError::Invalid { .. })));
    }

    #[test]
    fn a_file_that_changed_after_the_check_is_refused() {
        let a = with_data(header(&[], &[("t", &[32], 0, 0)]), 128);
        let b = with_data(header(&[], &[("t", &[16], 0, 0)]), 128);
        let h = check(&a).unwrap();
        let content = gguf_file::Content::read(&mut Cursor::new(&b)).unwrap();
        assert!(matches!(
            h.check_matches(&content),
            Err(HeaderError::Changed(_))
        ));
    }
}
